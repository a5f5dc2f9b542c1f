// Command bench is guardian's load harness: in one run on loopback it measures how fast a
// revocation published to Redis ends live mTLS conns, with clients in a separate process
// and its own redis-server. See BENCHMARKS.md for the figures and the command.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/guardian-mtls/guardian/internal/idleserver"
	"github.com/guardian-mtls/guardian/internal/testpki"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

const clientEnv = "GUARDIAN_BENCH_CLIENT"

// evictionWorkers is the node's eviction pool size; 0 is the listener's default.
var evictionWorkers = 0

type options struct {
	quick      bool
	rounds     int
	conns      int
	certs      int
	others     int
	scenarios  string
	jsonFile   string
	redisBin   string
	progressTo io.Writer
}

func main() {
	if os.Getenv(clientEnv) == "1" {
		if err := clientMain(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "bench client:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	flag.BoolVar(&o.quick, "quick", false, "small sizes: finishes in well under a minute")
	flag.IntVar(&o.rounds, "rounds", 200, "eviction-single: revocations measured")
	flag.IntVar(&o.conns, "conns", 10000, "eviction-bulk: conns of the revoked certificates")
	flag.IntVar(&o.certs, "certs", 1000, "eviction-bulk: certificates revoked in one batch")
	flag.IntVar(&o.others, "others", 5000, "eviction-bulk: conns of other certificates, which must all survive")
	flag.StringVar(&o.scenarios, "scenarios", "eviction-single,eviction-bulk", "comma-separated scenarios to run")
	flag.StringVar(&o.jsonFile, "json", "", "write every figure to `FILE` as JSON")
	flag.StringVar(&o.redisBin, "redis-server", "redis-server", "the redis-server `BINARY`")
	flag.IntVar(&evictionWorkers, "eviction-workers", 0, "the node's eviction worker pool (0: the listener's default, 4×GOMAXPROCS)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the harness process (the guardian node under test) to `FILE`")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected argument %q\n", flag.Arg(0))
		os.Exit(2)
	}
	if o.quick {
		o.rounds, o.conns, o.certs, o.others = 50, 1000, 100, 500
	}
	o.progressTo = os.Stderr
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	res, err := run(context.Background(), o)
	if err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	printTable(os.Stdout, res)
	if o.jsonFile != "" {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := os.WriteFile(o.jsonFile, b, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
	}
}

func (o options) validate() error {
	for name, v := range map[string]int{"-rounds": o.rounds, "-conns": o.conns, "-certs": o.certs, "-others": o.others} {
		if v <= 0 {
			return fmt.Errorf("%s must be positive, got %d", name, v)
		}
	}
	if o.conns < o.certs {
		return fmt.Errorf("-conns (%d) must be at least -certs (%d): each revoked certificate holds conns", o.conns, o.certs)
	}
	if total := o.conns + o.others; total > 18000 {
		return fmt.Errorf("-conns + -others = %d: a process here may hold 20,000 fds; keep it at or under 18,000", total)
	}
	for _, s := range strings.Split(o.scenarios, ",") {
		if s != "eviction-single" && s != "eviction-bulk" {
			return fmt.Errorf("unknown scenario %q (this build has eviction-single, eviction-bulk)", s)
		}
	}
	return nil
}

// Results is everything a run measured, as written by -json.
type Results struct {
	Env            Env          `json:"env"`
	EvictionSingle *SingleStats `json:"eviction_single,omitempty"`
	EvictionBulk   *BulkStats   `json:"eviction_bulk,omitempty"`
}

// Env records where the figures were measured.
type Env struct {
	Go, Redis, Kernel string
	GOMAXPROCS        int
	FDLimit           uint64
	When              time.Time
}

// SingleStats is eviction-single: publish to client-visible close, one conn at a time.
type SingleStats struct {
	Rounds int     `json:"rounds"`
	P50    float64 `json:"p50_ms"`
	P99    float64 `json:"p99_ms"`
	Max    float64 `json:"max_ms"`
}

// BulkStats is eviction-bulk: one batch of certificates revoked among many live conns.
type BulkStats struct {
	Certs      int     `json:"certs"`
	Revoked    int     `json:"revoked_conns"`
	Others     int     `json:"other_conns"`
	Closed     int     `json:"closed"`
	First      float64 `json:"first_ms"`
	Median     float64 `json:"median_ms"`
	P99        float64 `json:"p99_ms"`
	AllClosed  float64 `json:"all_closed_ms"`
	Collateral int     `json:"collateral"`
	// ServerDone is when the node's registry had dropped every revoked conn (polled each
	// millisecond): the server's side of the work, before clients notice.
	ServerDone float64 `json:"server_all_closed_ms"`
}

func environment(redisBin string) Env {
	e := Env{Go: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0), When: time.Now().UTC()}
	if out, err := exec.Command(redisBin, "--version").Output(); err == nil {
		e.Redis = strings.TrimSpace(string(out))
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		var b []byte
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			b = append(b, byte(c))
		}
		e.Kernel = string(b)
	}
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil {
		e.FDLimit = rl.Cur
	}
	return e
}

// run starts Redis, a guardian node and the client process, runs the scenarios, and stops
// everything it started, also on error.
func run(ctx context.Context, o options) (*Results, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath(o.redisBin); err != nil {
		return nil, fmt.Errorf("%s not found: install it (apt-get install redis-server) or pass -redis-server PATH", o.redisBin)
	}
	res := &Results{Env: environment(o.redisBin)}
	dir, err := os.MkdirTemp("", "guardian-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	rsrv, err := startRedis(o.redisBin, dir)
	if err != nil {
		return nil, err
	}
	defer rsrv.stop()
	rdb := redis.NewClient(&redis.Options{Addr: rsrv.addr, PoolSize: 4})
	defer rdb.Close()
	st := redisfeed.NewStore(rdb, "bench", 0)

	ca, err := testpki.New("bench CA")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca.CertPEM(), 0o644); err != nil {
		return nil, err
	}
	srv, err := startNode(ctx, ca, redis.NewClient(&redis.Options{Addr: rsrv.addr}))
	if err != nil {
		return nil, err
	}
	defer srv.stop()

	for _, s := range strings.Split(o.scenarios, ",") {
		cl, err := startClient()
		if err != nil {
			return nil, err
		}
		switch s {
		case "eviction-single":
			res.EvictionSingle, err = evictionSingle(ctx, o, dir, ca, st, srv, cl)
		case "eviction-bulk":
			res.EvictionBulk, err = evictionBulk(ctx, o, dir, ca, st, srv, cl)
		}
		cl.stop()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s, err)
		}
	}
	return res, nil
}

type redisProc struct {
	addr string
	cmd  *exec.Cmd
}

func startRedis(bin, dir string) (*redisProc, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	r := &redisProc{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), cmd: cmd}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", r.addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return r, nil
		}
		if time.Now().After(deadline) {
			r.stop()
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			return nil, fmt.Errorf("redis-server did not start on %s: %s", r.addr, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *redisProc) stop() {
	r.cmd.Process.Kill()
	r.cmd.Wait()
}

// guardianNode is the server under test: a Set fed by Redis and a listener whose accepted
// conns are held idle, as keep-alive conns are.
type guardianNode struct {
	set    *revoke.Set
	feed   *redisfeed.Feed
	l      *listener.Listener
	addr   string
	cancel context.CancelFunc
	done   chan struct{}
}

func startNode(ctx context.Context, ca *testpki.CA, rdb *redis.Client) (*guardianNode, error) {
	server, err := ca.Issue(testpki.Opts{DNS: []string{"localhost"}})
	if err != nil {
		return nil, err
	}
	set, err := revoke.NewSet(revoke.SetOptions{})
	if err != nil {
		return nil, err
	}
	feed, err := redisfeed.NewFeed(redisfeed.NewStore(rdb, "bench", 0), set, redisfeed.FeedOptions{})
	if err != nil {
		return nil, err
	}
	fctx, cancel := context.WithCancel(ctx)
	n := &guardianNode{set: set, feed: feed, cancel: cancel, done: make(chan struct{})}
	go func() { feed.Run(fctx); rdb.Close(); close(n.done) }()
	select {
	case <-feed.Synced():
	case <-time.After(10 * time.Second):
		n.stop()
		return nil, errors.New("the node's feed did not sync with Redis in 10s")
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		n.stop()
		return nil, err
	}
	n.l, err = listener.New(inner, listener.Config{Set: set, EvictionWorkers: evictionWorkers, Audiences: []listener.Audience{{
		Name: "bench", SNI: []string{"localhost"}, Certificates: []tls.Certificate{server.TLS()},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
	}}})
	if err != nil {
		inner.Close()
		n.stop()
		return nil, err
	}
	n.addr = inner.Addr().String()
	go idleserver.Serve(n.l)
	return n, nil
}

func (n *guardianNode) stop() {
	if n.l != nil {
		n.l.Registry().EvictAll(conntrackShutdown)
		n.l.Stop()
	}
	n.cancel()
	<-n.done
}

// client is the client process.
type client struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	events chan clientEvent
}

func startClient() (*client, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), clientEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the client process: %w", err)
	}
	c := &client{cmd: cmd, in: in, events: make(chan clientEvent, 1<<16)}
	go func() {
		defer close(c.events)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var e clientEvent
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				c.events <- e
			}
		}
	}()
	return c, nil
}

func (c *client) send(cmd clientCmd) error {
	b, _ := json.Marshal(cmd)
	_, err := c.in.Write(append(b, '\n'))
	return err
}

// await returns the next event of kind ev, handing close events to onClose meanwhile.
func (c *client) await(ev string, timeout time.Duration, onClose func(clientEvent)) (clientEvent, error) {
	t := time.After(timeout)
	for {
		select {
		case e, ok := <-c.events:
			if !ok {
				return e, errors.New("the client process exited")
			}
			switch {
			case e.Ev == ev:
				return e, nil
			case e.Ev == "close" && onClose != nil:
				onClose(e)
			case e.Ev == "error":
				return e, fmt.Errorf("client: %s", e.Err)
			}
		case <-t:
			return clientEvent{}, fmt.Errorf("no %q from the client within %s", ev, timeout)
		}
	}
}

func (c *client) stop() {
	c.in.Close()
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p)
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
