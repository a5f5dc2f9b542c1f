// Command bench is guardian's load harness: in one run on loopback it measures how fast a
// revocation published to Redis ends live mTLS conns (one conn, a batch, a CA, a fleet), what
// guardian costs beside a bare crypto/tls listener (requests, handshakes, memory), and what
// nginx and HAProxy do with a revoked live conn, and how guardian's TCP audiences compare with
// a bare Go proxy and HAProxy. Clients run in a separate process; the
// harness starts its own redis-server. See BENCHMARKS.md for the figures and the command.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

const clientEnv = "GUARDIAN_BENCH_CLIENT"

// evictionWorkers is the nodes' eviction pool size; 0 is the listener's default.
var evictionWorkers = 0

// traceFile, when set, receives a runtime/trace of eviction-bulk's eviction window.
var traceFile string

// memProfile, when set, receives a heap profile after the last scenario.
var memProfile string

var allScenarios = []string{"eviction-single", "eviction-bulk", "eviction-ca", "overhead", "memory", "fleet", "peers", "tcp"}

// extraScenarios run only when named: the soak is a reliability check of several minutes,
// not a speed figure (make soak, make soak-short).
var extraScenarios = []string{"soak"}

type options struct {
	quick        bool
	rounds       int
	conns        int
	certs        int
	others       int
	caConns      int
	memConns     int
	denylist     int
	loadRounds   int
	loadDuration time.Duration
	loadWorkers  int
	fleetNodes   int
	peerConns    int
	peerWindow   time.Duration
	scenarios    string
	jsonFile     string
	plotFile     string
	redisBin     string
	redisPort    int
	soakConns    int
	soakDuration time.Duration
	soakEvery    time.Duration
	soakFaults   bool
	tcpRounds    int
	tcpMiB       int
	tcpDuration  time.Duration
	tcpWorkers   int
	tcpRevokes   int
	haproxyBin   string
	progressTo   io.Writer // status lines and progress bars; never nil
}

func defaultOptions() options {
	return options{rounds: 200, conns: 10000, certs: 1000, others: 5000, caConns: 15000, memConns: 15000,
		denylist: 100000, loadRounds: 10, loadDuration: 2 * time.Second, loadWorkers: 16, fleetNodes: 3,
		peerConns: 100, peerWindow: 3 * time.Second, soakConns: 15000, soakDuration: 5 * time.Minute, soakEvery: 250 * time.Millisecond, soakFaults: true, scenarios: strings.Join(allScenarios, ","), redisBin: "redis-server",
		tcpRounds: 5, tcpMiB: 256, tcpDuration: time.Second, tcpWorkers: 16, tcpRevokes: 100, haproxyBin: "haproxy",
		progressTo: io.Discard}
}

// quickOptions shrink every size: a run of well under a minute.
func quickOptions(o options) options {
	o.rounds, o.conns, o.certs, o.others = 50, 1000, 100, 500
	o.caConns, o.memConns, o.denylist = 1500, 1500, 10000
	o.loadRounds, o.loadDuration = 3, 500*time.Millisecond
	o.peerConns, o.peerWindow = 20, time.Second
	o.tcpRounds, o.tcpMiB, o.tcpDuration, o.tcpRevokes = 3, 64, 500*time.Millisecond, 30
	return o
}

func main() {
	if os.Getenv(clientEnv) == "1" {
		if err := clientMain(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "bench client:", err)
			os.Exit(1)
		}
		return
	}
	o := defaultOptions()
	flag.BoolVar(&o.quick, "quick", false, "small sizes: finishes in well under a minute (overrides the size flags)")
	flag.IntVar(&o.rounds, "rounds", o.rounds, "eviction-single and fleet: revocations measured")
	flag.IntVar(&o.conns, "conns", o.conns, "eviction-bulk: conns of the revoked certificates")
	flag.IntVar(&o.certs, "certs", o.certs, "eviction-bulk: certificates revoked in one batch")
	flag.IntVar(&o.others, "others", o.others, "eviction-bulk: conns of other certificates, which must all survive")
	flag.IntVar(&o.caConns, "ca-conns", o.caConns, "eviction-ca: conns chained through the revoked intermediate CA")
	flag.IntVar(&o.memConns, "mem-conns", o.memConns, "memory: idle conns held by each server")
	flag.IntVar(&o.denylist, "denylist", o.denylist, "entries revoked through Redis before the scenarios run (the overhead scenario's denylist)")
	flag.IntVar(&o.loadRounds, "load-rounds", o.loadRounds, "overhead: interleaved rounds (each: bare and guardian, requests and handshakes)")
	flag.DurationVar(&o.loadDuration, "load-duration", o.loadDuration, "overhead: length of each load phase")
	flag.IntVar(&o.loadWorkers, "load-workers", o.loadWorkers, "overhead: concurrent client workers")
	flag.IntVar(&o.fleetNodes, "fleet-nodes", o.fleetNodes, "fleet: guardian nodes on the one Redis")
	flag.IntVar(&o.peerConns, "peer-conns", o.peerConns, "peers: unrelated live conns held beside the revoked one")
	flag.DurationVar(&o.peerWindow, "peer-window", o.peerWindow, "peers: how long the revoked live conn is watched")
	flag.StringVar(&o.scenarios, "scenarios", o.scenarios, "comma-separated scenarios to run, of "+strings.Join(allScenarios, ", ")+", and "+strings.Join(extraScenarios, ", ")+" (only when named)")
	flag.IntVar(&o.soakConns, "soak-conns", o.soakConns, "soak: mTLS conns held through the soak")
	flag.DurationVar(&o.soakDuration, "soak-duration", o.soakDuration, "soak: how long revocations arrive under churn")
	flag.DurationVar(&o.soakEvery, "soak-every", o.soakEvery, "soak: one revocation through Redis this often")
	flag.BoolVar(&o.soakFaults, "soak-faults", o.soakFaults, "soak: partition, slow and kill Redis, and break the CRL URL and the OCSP responder, during the soak")
	flag.IntVar(&o.tcpRounds, "tcp-rounds", o.tcpRounds, "tcp: interleaved rounds (each: guardian, the bare Go proxy and HAProxy, a bulk stream each way and new conns)")
	flag.IntVar(&o.tcpMiB, "tcp-mib", o.tcpMiB, "tcp: MiB of each bulk stream")
	flag.DurationVar(&o.tcpDuration, "tcp-duration", o.tcpDuration, "tcp: length of each new-conns phase")
	flag.IntVar(&o.tcpWorkers, "tcp-workers", o.tcpWorkers, "tcp: concurrent client workers opening new conns")
	flag.IntVar(&o.tcpRevokes, "tcp-revokes", o.tcpRevokes, "tcp: guardian's revoked live TCP conns timed")
	flag.StringVar(&o.haproxyBin, "haproxy", o.haproxyBin, "the haproxy `BINARY` (tcp scenario)")
	flag.StringVar(&o.jsonFile, "json", "", "write every figure to `FILE` as JSON")
	flag.StringVar(&o.plotFile, "plot", "", "draw the eviction scenarios' latency distributions to `FILE.png`")
	flag.StringVar(&o.redisBin, "redis-server", o.redisBin, "the redis-server `BINARY`")
	flag.IntVar(&o.redisPort, "redis-port", 0, "the port for the harness's own redis-server (0: a free one)")
	flag.IntVar(&evictionWorkers, "eviction-workers", 0, "the nodes' eviction worker pool (0: the listener's default, 4×GOMAXPROCS)")
	flag.StringVar(&traceFile, "trace", "", "write a runtime/trace of the node's process during eviction-bulk's eviction window to `FILE`")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the harness process (the guardian nodes under test) to `FILE`")
	flag.StringVar(&memProfile, "memprofile", "", "write a heap profile of the harness process to `FILE` after the last scenario, before the nodes stop")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected argument %q\n", flag.Arg(0))
		os.Exit(2)
	}
	if o.quick {
		o = quickOptions(o)
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
	if o.plotFile != "" {
		if err := plotLatencies(o.plotFile, res); err != nil {
			fmt.Fprintln(os.Stderr, "bench: plot:", err)
			os.Exit(1)
		}
		fmt.Fprintf(os.Stdout, "latency distributions drawn to %s\n", o.plotFile)
	}
}

// maxConns is what one process may hold here (20,000 fds) less room for Redis, pipes and
// the nodes' own sockets.
const maxConns = 18000

func (o options) validate() error {
	for name, v := range map[string]int{"-rounds": o.rounds, "-conns": o.conns, "-certs": o.certs, "-others": o.others,
		"-ca-conns": o.caConns, "-mem-conns": o.memConns, "-load-rounds": o.loadRounds, "-load-workers": o.loadWorkers,
		"-fleet-nodes": o.fleetNodes, "-peer-conns": o.peerConns, "-soak-conns": o.soakConns,
		"-tcp-rounds": o.tcpRounds, "-tcp-mib": o.tcpMiB, "-tcp-workers": o.tcpWorkers, "-tcp-revokes": o.tcpRevokes} {
		if v <= 0 {
			return fmt.Errorf("%s must be positive, got %d", name, v)
		}
	}
	if o.denylist < 0 {
		return fmt.Errorf("-denylist must not be negative, got %d", o.denylist)
	}
	if o.peerWindow < 100*time.Millisecond {
		return fmt.Errorf("-peer-window must be at least 100ms, got %s", o.peerWindow)
	}
	if o.tcpDuration < 100*time.Millisecond {
		return fmt.Errorf("-tcp-duration must be at least 100ms, got %s", o.tcpDuration)
	}
	if o.tcpMiB > 1<<14 {
		return fmt.Errorf("-tcp-mib must be at most %d, got %d", 1<<14, o.tcpMiB)
	}
	if o.loadDuration < 100*time.Millisecond {
		return fmt.Errorf("-load-duration must be at least 100ms, got %s", o.loadDuration)
	}
	if o.redisPort < 0 || o.redisPort > 65535 {
		return fmt.Errorf("-redis-port must be 0 (a free port) or a TCP port, got %d", o.redisPort)
	}
	if o.conns < o.certs {
		return fmt.Errorf("-conns (%d) must be at least -certs (%d): each revoked certificate holds conns", o.conns, o.certs)
	}
	if total := o.conns + o.others; total > maxConns {
		return fmt.Errorf("-conns + -others = %d: a process here may hold 20,000 fds; keep it at or under %d", total, maxConns)
	}
	for name, v := range map[string]int{"-ca-conns": o.caConns + o.caConns/15, "-mem-conns": o.memConns} {
		if v > maxConns {
			return fmt.Errorf("%s = %d: a process here may hold 20,000 fds; keep the conns at or under %d", name, v, maxConns)
		}
	}
	if o.soakConns > maxConns-100 {
		return fmt.Errorf("-soak-conns = %d: a process here may hold 20,000 fds, and the churn needs some; keep it at or under %d", o.soakConns, maxConns-100)
	}
	if o.soakDuration < time.Second || o.soakEvery < time.Millisecond {
		return fmt.Errorf("-soak-duration must be at least 1s and -soak-every at least 1ms, got %s and %s", o.soakDuration, o.soakEvery)
	}
	if o.fleetNodes > 16 {
		return fmt.Errorf("-fleet-nodes must be at most 16, got %d", o.fleetNodes)
	}
	if o.plotFile != "" && !strings.HasSuffix(o.plotFile, ".png") {
		return fmt.Errorf("-plot %q: the file name must end in .png", o.plotFile)
	}
	if len(o.scenarios) == 0 {
		return errors.New("-scenarios is empty")
	}
	for _, s := range strings.Split(o.scenarios, ",") {
		if !slices.Contains(allScenarios, s) && !slices.Contains(extraScenarios, s) {
			return fmt.Errorf("unknown scenario %q (this build has %s)", s, strings.Join(append(allScenarios, extraScenarios...), ", "))
		}
	}
	return nil
}

// Results is everything a run measured, as written by -json.
type Results struct {
	Env            Env            `json:"env"`
	Options        map[string]any `json:"options"`
	EvictionSingle *SingleStats   `json:"eviction_single,omitempty"`
	EvictionBulk   *BulkStats     `json:"eviction_bulk,omitempty"`
	EvictionCA     *BulkStats     `json:"eviction_ca,omitempty"`
	Overhead       *OverheadStats `json:"overhead,omitempty"`
	Memory         *MemoryStats   `json:"memory,omitempty"`
	Fleet          *FleetStats    `json:"fleet,omitempty"`
	Peers          *PeersStats    `json:"peers,omitempty"`
	Soak           *SoakStats     `json:"soak,omitempty"`
	TCP            *TCPStats      `json:"tcp,omitempty"`
	// StealPercent is, per scenario, the share of the machine's CPU time the hypervisor gave
	// to other guests while it ran (from /proc/stat; -1 where unreadable).
	StealPercent map[string]float64 `json:"cpu_steal_percent"`
}

// Env records where the figures were measured.
type Env struct {
	Go, Redis, Kernel string
	GOMAXPROCS        int
	NumCPU            int
	FDLimit           uint64
	When              time.Time
}

func environment(redisBin string) Env {
	e := Env{Go: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0), NumCPU: runtime.NumCPU(), When: time.Now().UTC()}
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

// harness is what every scenario shares: the run's directory, Redis, the PKI and the
// first guardian node.
type harness struct {
	o     options
	dir   string
	rsrv  *redisProc
	store *redisfeed.Store
	ca    *pkitest.CA
	node  *guardianNode
	nodes []*guardianNode // every node started, stopped at the end
}

func (h *harness) caFile() string { return filepath.Join(h.dir, "ca.pem") }

// newNode starts one more guardian node on the run's Redis.
func (h *harness) newNode(ctx context.Context) (*guardianNode, error) {
	n, err := startNode(ctx, h.ca, redis.NewClient(&redis.Options{Addr: h.rsrv.addr()}))
	if err != nil {
		return nil, err
	}
	h.nodes = append(h.nodes, n)
	return n, nil
}

// run starts Redis, a guardian node and a client process per scenario, runs the scenarios,
// and stops everything it started, also on error.
func run(ctx context.Context, o options) (*Results, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if _, err := exec.LookPath(o.redisBin); err != nil {
		return nil, fmt.Errorf("%s not found: install it (apt-get install redis-server) or pass -redis-server PATH", o.redisBin)
	}
	if slices.Contains(strings.Split(o.scenarios, ","), "tcp") {
		if _, err := exec.LookPath(o.haproxyBin); err != nil {
			return nil, haproxyMissing(o.haproxyBin) // before the other scenarios, not after them
		}
	}
	res := &Results{Env: environment(o.redisBin), Options: map[string]any{
		"quick": o.quick, "rounds": o.rounds, "conns": o.conns, "certs": o.certs, "others": o.others,
		"ca_conns": o.caConns, "mem_conns": o.memConns, "denylist": o.denylist, "load_rounds": o.loadRounds,
		"load_duration": o.loadDuration.String(), "load_workers": o.loadWorkers, "fleet_nodes": o.fleetNodes,
		"peer_conns": o.peerConns, "peer_window": o.peerWindow.String(), "scenarios": o.scenarios,
		"soak_conns": o.soakConns, "soak_duration": o.soakDuration.String(), "soak_every": o.soakEvery.String(), "soak_faults": o.soakFaults,
		"tcp_rounds": o.tcpRounds, "tcp_mib": o.tcpMiB, "tcp_duration": o.tcpDuration.String(), "tcp_workers": o.tcpWorkers, "tcp_revokes": o.tcpRevokes,
	}}
	dir, err := os.MkdirTemp("", "guardian-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	h := &harness{o: o, dir: dir}

	if h.rsrv, err = startRedis(o.redisBin, dir, o.redisPort, false); err != nil {
		return nil, err
	}
	defer h.rsrv.stop()
	rdb := redis.NewClient(&redis.Options{Addr: h.rsrv.addr(), PoolSize: 4})
	defer rdb.Close()
	h.store = redisfeed.NewStore(rdb, "bench", 0)

	if h.ca, err = pkitest.New("bench CA"); err != nil {
		return nil, err
	}
	if err := os.WriteFile(h.caFile(), h.ca.CertPEM(), 0o644); err != nil {
		return nil, err
	}
	defer func() {
		for _, n := range h.nodes {
			n.stop()
		}
	}()
	if h.node, err = h.newNode(ctx); err != nil {
		return nil, err
	}
	if err := h.loadDenylist(ctx); err != nil {
		return nil, fmt.Errorf("denylist: %w", err)
	}

	res.StealPercent = map[string]float64{}
	if memProfile != "" {
		defer func() {
			if f, err := os.Create(memProfile); err == nil {
				runtime.GC()
				pprof.WriteHeapProfile(f)
				f.Close()
			}
		}()
	}
	for _, s := range strings.Split(o.scenarios, ",") {
		cl, err := startClient()
		if err != nil {
			return nil, err
		}
		steal := startSteal()
		switch s {
		case "eviction-single":
			res.EvictionSingle, err = evictionSingle(ctx, h, cl)
		case "eviction-bulk":
			res.EvictionBulk, err = evictionBulk(ctx, h, cl)
		case "eviction-ca":
			res.EvictionCA, err = evictionCA(ctx, h, cl)
		case "overhead":
			res.Overhead, err = overhead(ctx, h, cl)
		case "memory":
			res.Memory, err = memory(ctx, h, cl)
		case "fleet":
			res.Fleet, err = fleet(ctx, h, cl)
		case "peers":
			res.Peers, err = peers(ctx, h, cl)
		case "tcp":
			res.TCP, err = tcpScenario(ctx, h, cl)
		case "soak":
			res.Soak, err = soak(ctx, h, cl)
			if err != nil && res.Soak != nil {
				printTable(os.Stdout, res) // the figures of a failed soak say what went wrong
			}
		}
		res.StealPercent[s] = steal.percent()
		cl.stop()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", s, err)
		}
	}
	return res, nil
}

// loadDenylist revokes o.denylist random serials through Redis, in batches, and waits until
// the node's Set holds them: the overhead scenario measures guardian with a loaded denylist.
func (h *harness) loadDenylist(ctx context.Context) error {
	if h.o.denylist == 0 {
		return nil
	}
	p := newProgress(h.o.progressTo, "loading the denylist through Redis", h.o.denylist)
	const batch = 5000
	var buf [16]byte
	for done := 0; done < h.o.denylist; {
		n := min(batch, h.o.denylist-done)
		entries := make([]revoke.Entry, n)
		for i := range entries {
			randRead(buf[:])
			// Serials of the bench CA that no client holds.
			entries[i] = revoke.Entry{Key: revoke.SerialKey(h.ca.Cert.RawSubject, new(big.Int).SetBytes(buf[:])), Reason: "superseded"}
		}
		if _, err := h.store.RevokeMany(ctx, entries); err != nil {
			return err
		}
		done += n
		p.set(done)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for h.node.set.Len() < h.o.denylist {
		if time.Now().After(deadline) {
			return fmt.Errorf("the node's Set holds %d of %d entries after 2 minutes", h.node.set.Len(), h.o.denylist)
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.done()
	return nil
}

type redisProc struct {
	bin     string
	dir     string
	port    int
	persist bool
	cmd     *exec.Cmd
	exited  chan struct{}
}

// startRedis runs a redis-server on port (0: a free one) with its files in dir. With
// persist, every write is fsynced to an append-only file before it is acknowledged, so a
// SIGKILL and restart (the soak's fault) loses nothing.
func startRedis(bin, dir string, port int, persist bool) (*redisProc, error) {
	if port == 0 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	} else if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err != nil {
		return nil, fmt.Errorf("port %d is in use: pass another -redis-port, or 0 for a free one", port)
	} else {
		l.Close()
	}
	r := &redisProc{bin: bin, dir: dir, port: port, persist: persist}
	return r, r.start()
}

func (r *redisProc) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

func (r *redisProc) start() error {
	logFile := filepath.Join(r.dir, "redis.log")
	aof := []string{"--appendonly", "no"}
	if r.persist {
		aof = []string{"--appendonly", "yes", "--appendfsync", "always"}
	}
	r.cmd = exec.Command(r.bin, append([]string{"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "",
		"--dir", r.dir, "--logfile", logFile}, aof...)...)
	if err := r.cmd.Start(); err != nil {
		r.cmd = nil
		return fmt.Errorf("start %s: %w", r.bin, err)
	}
	exited := make(chan struct{})
	go func(cmd *exec.Cmd) { cmd.Wait(); close(exited) }(r.cmd)
	r.exited = exited
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-exited:
			log, _ := os.ReadFile(logFile)
			return fmt.Errorf("redis-server exited at start on port %d: %s", r.port, strings.TrimSpace(string(log)))
		default:
		}
		c, err := net.DialTimeout("tcp", r.addr(), 100*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			r.stop()
			log, _ := os.ReadFile(logFile)
			return fmt.Errorf("redis-server did not start on %s: %s", r.addr(), log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop kills the server (SIGKILL: no shutdown save) and waits for it to exit.
func (r *redisProc) stop() {
	if r.cmd == nil {
		return // never started, or stopped already
	}
	r.cmd.Process.Kill()
	<-r.exited
	r.cmd = nil
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

// await returns the next event of kind ev, handing close events to onClose and progress
// events to p meanwhile.
func (c *client) await(ev string, timeout time.Duration, onClose func(clientEvent), p *progress) (clientEvent, error) {
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
			case e.Ev == "progress":
				p.set(e.N)
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

// dial has the client open the conns of specs and waits until all are open.
func (c *client) dial(addr, ca string, specs []certSpec, http bool, label string, progressTo io.Writer) error {
	return c.dialCmd(clientCmd{Cmd: "dial", Addr: addr, CA: ca, Certs: specs, HTTP: http}, label, progressTo)
}

// report collects the close events the client held (dial with Hold).
func (c *client) report() ([]clientEvent, error) {
	if err := c.send(clientCmd{Cmd: "report"}); err != nil {
		return nil, err
	}
	var out []clientEvent
	_, err := c.await("reported", time.Minute, func(e clientEvent) { out = append(out, e) }, nil)
	return out, err
}

func (c *client) dialCmd(cmd clientCmd, label string, progressTo io.Writer) error {
	specs := cmd.Certs
	total := 0
	for _, s := range specs {
		total += s.N
	}
	var p *progress
	if total >= 1000 {
		p = newProgress(progressTo, label, total)
	}
	if err := c.send(cmd); err != nil {
		return err
	}
	ready, err := c.await("ready", 10*time.Minute, nil, p)
	if err != nil {
		return err
	}
	p.done()
	if ready.Failed > 0 || ready.N != total {
		return fmt.Errorf("the client opened %d of %d conns (%d failed)", ready.N, total, ready.Failed)
	}
	return nil
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
