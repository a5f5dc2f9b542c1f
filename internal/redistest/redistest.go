package redistest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/need"
)

// Server is a redis-server process owned by a test.
type Server struct {
	tb   testing.TB
	dir  string
	port int
	opts Options
	cmd  *exec.Cmd
	done chan struct{} // closed once cmd has exited and been waited for
}

// Options configures a Server.
type Options struct {
	// Persist turns on the append-only file with fsync on every write, so a SIGKILL loses
	// nothing and a restart comes back with everything. Without it a restart comes back
	// empty, as a Redis without persistence does.
	Persist bool
	// ReplicaOf makes the server a replica of another (host:port).
	ReplicaOf string
	// Cluster starts the server in cluster mode (see StartCluster).
	Cluster bool
	// TLS, if set, serves TLS only (no plain port) with these PEM files; clients are not
	// asked for certificates.
	TLS *TLSFiles
	// Users are ACL rules, one per user, e.g. "guardian on >secret ~* +@all".
	Users []string
}

// TLSFiles are the server's certificate, key and the CA that clients trust.
type TLSFiles struct{ Cert, Key, CA string }

// Start runs a redis-server on a free port; it is killed when the test ends. The test
// fails, saying how to install it, if redis-server is not installed.
func Start(tb testing.TB, o Options) *Server {
	tb.Helper()
	need.Tool(tb, "redis-server")
	s := &Server{tb: tb, dir: tb.TempDir(), opts: o}
	s.port = freePort(tb)
	s.start()
	tb.Cleanup(s.Kill)
	return s
}

// Addr returns host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL returns a redis:// URL for the server.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

func (s *Server) start() {
	s.tb.Helper()
	port := []string{"--port", strconv.Itoa(s.port)}
	if t := s.opts.TLS; t != nil {
		port = []string{"--port", "0", "--tls-port", strconv.Itoa(s.port), "--tls-cert-file", t.Cert,
			"--tls-key-file", t.Key, "--tls-ca-cert-file", t.CA, "--tls-auth-clients", "no"}
	}
	args := append(port, "--bind", "127.0.0.1", "--dir", s.dir,
		"--save", "", "--daemonize", "no", "--logfile", filepath.Join(s.dir, "redis.log"))
	if s.opts.Persist {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	if s.opts.ReplicaOf != "" {
		h, p, _ := net.SplitHostPort(s.opts.ReplicaOf)
		args = append(args, "--replicaof", h, p)
	}
	if len(s.opts.Users) > 0 {
		// On the command line redis-server takes a whole --user argument as the name.
		var conf strings.Builder
		for _, u := range s.opts.Users {
			conf.WriteString("user " + u + "\n")
		}
		file := filepath.Join(s.dir, "users.conf")
		if err := os.WriteFile(file, []byte(conf.String()), 0o600); err != nil {
			s.tb.Fatal(err)
		}
		args = append([]string{file}, args...)
	}
	if s.opts.Cluster {
		args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", filepath.Join(s.dir, "nodes.conf"),
			"--cluster-node-timeout", "2000")
	}
	deadline := time.Now().Add(10 * time.Second)
again:
	s.cmd = exec.Command("redis-server", args...)
	if err := s.cmd.Start(); err != nil {
		s.tb.Fatalf("start redis-server: %v", err)
	}
	done := make(chan struct{})
	s.done = done
	go func(cmd *exec.Cmd) { cmd.Wait(); close(done) }(s.cmd)
	if s.opts.TLS != nil || len(s.opts.Users) > 0 {
		waitPort(s.tb, s.Addr())
		return
	}
	for {
		select {
		case <-done:
			// It could not bind its port. On a restart the port was free a moment ago, but a
			// client redialling it can have been given it as its own source port (a TCP
			// self-connect, which Linux allows on loopback): that socket is gone once the
			// client reads its own bytes back, so start again until the deadline.
			if time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
				goto again
			}
		default:
		}
		c, err := net.DialTimeout("tcp", s.Addr(), 100*time.Millisecond)
		if err == nil {
			fmt.Fprintf(c, "PING\r\n")
			buf := make([]byte, 16)
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, _ := c.Read(buf)
			c.Close()
			if n > 0 && string(buf[:n]) == "+PONG\r\n" {
				return
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			s.tb.Fatalf("redis-server on %s did not answer within 10s; log:\n%s", s.Addr(), log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill sends SIGKILL and waits for the process to end.
func (s *Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
	s.cmd = nil
}

// Restart kills the server and starts it again on the same port and directory.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Kill()
	s.start()
}

// Start starts a killed server again.
func (s *Server) Start() {
	s.tb.Helper()
	if s.cmd == nil {
		s.start()
	}
}

func freePort(tb testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Proxy is a TCP proxy in front of a Server that a test can partition or slow down: while
// partitioned it cuts every proxied conn and holds new ones open without forwarding a byte,
// as a network that drops packets does; with a delay it holds every chunk it forwards, either
// way, for that long first, as a slow Redis or a slow network does. It is a fault injector,
// not a Redis fake.
type Proxy struct {
	ln      net.Listener
	target  string
	delay   atomic.Int64 // nanoseconds each chunk waits before it is forwarded
	mu      sync.Mutex
	changed chan struct{} // closed and replaced when the delay changes
	cut     bool
	conns   map[net.Conn]struct{}
	closing bool
}

// NewProxy listens on a free loopback port and forwards to target; it is closed when the
// test ends.
func NewProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	p, err := ListenProxy(target)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Close)
	return p
}

// ListenProxy is NewProxy outside a test (the bench harness's soak): the caller closes it.
func ListenProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}, changed: make(chan struct{})}
	go p.serve()
	return p, nil
}

// Addr is the proxy's address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetDelay makes every chunk, in either direction, wait d from when the proxy read it
// before it is forwarded; chunks already waiting are held to the new delay too, so 0
// forwards everything at once again. Each direction of a conn forwards its chunks in order,
// so a burst queues behind the delay as it would behind a slow server.
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay.Store(int64(d))
	close(p.changed)
	p.changed = make(chan struct{})
}

// hold waits until the chunk read at t is due, or the proxy closes.
func (p *Proxy) hold(t time.Time) {
	for {
		p.mu.Lock()
		changed, closing := p.changed, p.closing
		p.mu.Unlock()
		wait := time.Until(t.Add(time.Duration(p.delay.Load())))
		if wait <= 0 || closing {
			return
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
			return
		case <-changed:
			timer.Stop()
		}
	}
}

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.closing {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.conns[c] = struct{}{}
		cut := p.cut
		p.mu.Unlock()
		if cut {
			continue // held: never forwarded, closed on Heal
		}
		go p.forward(c)
	}
}

func (p *Proxy) forward(c net.Conn) {
	b, err := net.Dial("tcp", p.target)
	if err != nil {
		p.drop(c)
		return
	}
	p.mu.Lock()
	p.conns[b] = struct{}{}
	p.mu.Unlock()
	go func() { p.copy(b, c); p.drop(b) }()
	p.copy(c, b)
	p.drop(c)
}

// copy forwards src to dst, each chunk after the proxy's delay, until either side ends.
func (p *Proxy) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.hold(time.Now())
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *Proxy) drop(c net.Conn) {
	c.Close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// Partition cuts every conn and blackholes new ones.
func (p *Proxy) Partition() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
	clear(p.conns)
}

// Heal forwards again; conns held during the partition are closed.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// Close stops the proxy.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closing = true
	close(p.changed) // release every held chunk
	p.changed = make(chan struct{})
	p.mu.Unlock()
	p.ln.Close()
	p.Heal()
}

// Sentinel is a redis-server in sentinel mode watching one master as "mymaster", with a
// down-after of 500 ms so that tests fail over quickly.
type Sentinel struct {
	tb   testing.TB
	port int
	cmd  *exec.Cmd
}

// StartSentinel runs a sentinel (quorum 1) for master; it is killed when the test ends.
func StartSentinel(tb testing.TB, master *Server) *Sentinel {
	tb.Helper()
	dir := tb.TempDir()
	port := freePort(tb)
	conf := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile %s\n"+
		"sentinel monitor mymaster 127.0.0.1 %d 1\n"+
		"sentinel down-after-milliseconds mymaster 500\n"+
		"sentinel failover-timeout mymaster 3000\n"+
		"sentinel parallel-syncs mymaster 1\n",
		port, dir, filepath.Join(dir, "sentinel.log"), master.port)
	file := filepath.Join(dir, "sentinel.conf")
	if err := os.WriteFile(file, []byte(conf), 0o644); err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command("redis-server", file, "--sentinel")
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start sentinel: %v", err)
	}
	s := &Sentinel{tb: tb, port: port, cmd: cmd}
	tb.Cleanup(func() { cmd.Process.Signal(syscall.SIGKILL); cmd.Wait() })
	waitPort(tb, s.Addr())
	return s
}

// Addr returns the sentinel's host:port.
func (s *Sentinel) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// StartCluster runs n cluster-mode servers and joins them into one cluster of n masters
// with redis-cli --cluster create.
func StartCluster(tb testing.TB, n int) []*Server {
	tb.Helper()
	need.Tool(tb, "redis-cli")
	var servers []*Server
	args := []string{"--cluster", "create"}
	for i := 0; i < n; i++ {
		s := Start(tb, Options{Cluster: true})
		servers = append(servers, s)
		args = append(args, s.Addr())
	}
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		tb.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, s := range servers {
		for {
			out, _ := exec.Command("redis-cli", "-p", strconv.Itoa(s.port), "cluster", "info").Output()
			if strings.Contains(string(out), "cluster_state:ok") {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("cluster not ok within 20s: %s", out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return servers
}

func waitPort(tb testing.TB, addr string) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s did not listen within 10s", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// StartMain runs a plain redis-server on a free loopback port outside a test, for a
// TestMain (an example has no testing.T to hand to Start). stop kills it and removes its
// directory. err wraps exec.ErrNotFound when redis-server is not installed.
func StartMain() (url string, stop func(), err error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		return "", nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			os.RemoveAll(dir)
			return "", nil, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		cmd := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
			"--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", filepath.Join(dir, "redis.log"))
		if err := cmd.Start(); err != nil {
			os.RemoveAll(dir)
			return "", nil, fmt.Errorf("start redis-server: %w", err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		stop := func() {
			cmd.Process.Signal(syscall.SIGKILL)
			<-done
			os.RemoveAll(dir)
		}
		if answers(addr, done, deadline) {
			return "redis://" + addr + "/0", stop, nil
		}
		select {
		case <-done:
			if time.Now().Before(deadline) {
				continue // it could not bind the port, taken meanwhile: try another
			}
		default:
		}
		log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
		stop()
		return "", nil, fmt.Errorf("redis-server on %s did not answer within 10s; log:\n%s", addr, log)
	}
}

// answers waits until the Redis at addr answers PING (true), or its process has exited
// (done is closed) or deadline has passed (false).
func answers(addr string, done <-chan struct{}, deadline time.Time) bool {
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return false
		default:
		}
		if pong(addr) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// pong reports whether a Redis at addr answers PING.
func pong(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	fmt.Fprintf(c, "PING\r\n")
	buf := make([]byte, 16)
	c.SetReadDeadline(time.Now().Add(time.Second))
	n, _ := c.Read(buf)
	return string(buf[:n]) == "+PONG\r\n"
}
