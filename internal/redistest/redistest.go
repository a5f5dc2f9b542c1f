package redistest

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Server is a redis-server process owned by a test.
type Server struct {
	tb      testing.TB
	dir     string
	port    int
	persist bool
	cmd     *exec.Cmd
}

// Options configures a Server.
type Options struct {
	// Persist turns on the append-only file with fsync on every write, so a SIGKILL loses
	// nothing and a restart comes back with everything. Without it a restart comes back
	// empty, as a Redis without persistence does.
	Persist bool
}

// Start runs a redis-server on a free port; it is killed when the test ends. The test is
// skipped if redis-server is not installed.
func Start(tb testing.TB, o Options) *Server {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Skip("redis-server not installed (apt-get install redis-server)")
	}
	s := &Server{tb: tb, dir: tb.TempDir(), persist: o.Persist}
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
	args := []string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--save", "", "--daemonize", "no", "--logfile", filepath.Join(s.dir, "redis.log")}
	if s.persist {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	s.cmd = exec.Command("redis-server", args...)
	if err := s.cmd.Start(); err != nil {
		s.tb.Fatalf("start redis-server: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
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
	s.cmd.Wait()
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

// Proxy is a TCP proxy in front of a Server that a test can partition: while partitioned
// it cuts every proxied conn and holds new ones open without forwarding a byte, as a
// network that drops packets does. It is a fault injector, not a Redis fake.
type Proxy struct {
	tb      testing.TB
	ln      net.Listener
	target  string
	mu      sync.Mutex
	cut     bool
	conns   map[net.Conn]struct{}
	closing bool
}

// NewProxy listens on a free loopback port and forwards to target.
func NewProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &Proxy{tb: tb, ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go p.serve()
	tb.Cleanup(p.Close)
	return p
}

// Addr is the proxy's address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

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
	go func() { io.Copy(b, c); p.drop(b) }()
	io.Copy(c, b)
	p.drop(c)
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
	p.mu.Unlock()
	p.ln.Close()
	p.Heal()
}
