package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/guardian-mtls/guardian/daemon"
	"github.com/guardian-mtls/guardian/revoke"
)

// The tcp scenario: three TCP-over-mTLS proxies with the same server certificate, client CA
// and client certificates, in front of one plain TCP upstream that the harness runs:
// guardian's TCP audience (a daemon.Node built in code, upstream tcp://…, store memory), a
// bare Go proxy (a crypto/tls listener and io.Copy both ways, nothing else) and HAProxy
// (mode tcp, ssl … verify required, a plain backend). In interleaved rounds each carries one
// bulk stream each way and new conns from the client process; then guardian's revoked live
// TCP conns are timed to their end, on the client's side and on the upstream's.

// TCPStats is tcp.
type TCPStats struct {
	Rounds    int    `json:"rounds"`
	BulkMiB   int    `json:"bulk_mib"` // one stream, each way, per proxy per round
	ConnPhase string `json:"conn_phase"`
	Workers   int    `json:"conn_workers"`
	// Proxies are guardian, bare and haproxy, in that order.
	Proxies    []*TCPProxyStats `json:"proxies"`
	Revocation *TCPRevocation   `json:"guardian_revocation"`
}

// TCPProxyStats is one proxy's figures. Rates are medians of the rounds, with the rounds'
// spread; ratios are to the bare Go proxy, medians of the per-round ratios (each round runs
// the three back to back, so a noise burst spoils one round's ratio, not the median).
type TCPProxyStats struct {
	Proxy   string `json:"proxy"`
	Version string `json:"version"`
	// TLS is what the client negotiated: version, cipher suite, key exchange.
	TLS string `json:"tls"`
	// Upload: client → proxy → upstream, which reads and discards it, then acknowledges
	// with one byte; timed by the client from its first byte written to the ack. Download:
	// upstream → proxy → client, timed from the client's request to its last byte read.
	UploadMiBps   float64 `json:"upload_mib_per_sec"`
	UploadMin     float64 `json:"upload_mib_per_sec_min"`
	UploadMax     float64 `json:"upload_mib_per_sec_max"`
	DownloadMiBps float64 `json:"download_mib_per_sec"`
	DownloadMin   float64 `json:"download_mib_per_sec_min"`
	DownloadMax   float64 `json:"download_mib_per_sec_max"`
	// ConnsPerSec: new conns, each a full mTLS handshake (no resumption), a 16-byte message
	// echoed by the upstream, and a close.
	ConnsPerSec   float64 `json:"conns_per_sec"`
	ConnsMin      float64 `json:"conns_per_sec_min"`
	ConnsMax      float64 `json:"conns_per_sec_max"`
	UploadRatio   float64 `json:"upload_ratio_to_bare"`
	DownloadRatio float64 `json:"download_ratio_to_bare"`
	ConnsRatio    float64 `json:"conns_ratio_to_bare"`
	// Server-side CPU: the harness process (the Go proxies and the upstream) plus HAProxy's
	// process, user+system, over each phase: per GiB moved and per conn.
	CPUUploadMsPerGiB   float64 `json:"cpu_upload_ms_per_gib"`
	CPUDownloadMsPerGiB float64 `json:"cpu_download_ms_per_gib"`
	CPUPerConnUs        float64 `json:"cpu_per_conn_us"`
	Conns               int     `json:"conns"`
	FailedConns         int     `json:"failed_conns"`
}

// TCPRevocation is guardian's revoked live TCP conns: one per round, among other live conns
// through the same audience; the clock starts just before node.Store().Revoke.
type TCPRevocation struct {
	Rounds int `json:"rounds"`
	// P50, P99, Max: until the client's kernel reported the conn ended.
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
	// UpstreamClosed: rounds in which the splice's upstream conn ended too (the upstream's
	// Read returned), within 5 s; the Upstream figures are until then.
	UpstreamClosed int     `json:"upstream_closed"`
	UpstreamP50    float64 `json:"upstream_p50_ms"`
	UpstreamP99    float64 `json:"upstream_p99_ms"`
	UpstreamMax    float64 `json:"upstream_max_ms"`
	// Others are live conns of another certificate through the audience the whole time:
	// Dropped of them ended (as the client saw), OthersOpen still had their upstream conn.
	Others     int       `json:"other_conns"`
	Dropped    int       `json:"other_dropped"`
	OthersOpen int       `json:"other_upstream_open"`
	Samples    []float64 `json:"-"`
}

// tcpOthers is how many unrelated live conns the revocation rounds hold beside the victim.
const tcpOthers = 20

// haproxyMissing is the tcp scenario's error without HAProxy: it is a third of the figures,
// so the scenario fails rather than reporting two proxies.
func haproxyMissing(bin string) error {
	return fmt.Errorf("the tcp scenario compares guardian with HAProxy, and %s is not on PATH: install it (apt-get install haproxy, or make bench-peers), pass -haproxy PATH, or leave tcp out of -scenarios", bin)
}

func tcpScenario(ctx context.Context, h *harness, cl *client) (*TCPStats, error) {
	o := h.o
	if _, err := exec.LookPath(o.haproxyBin); err != nil {
		return nil, haproxyMissing(o.haproxyBin)
	}
	dir := filepath.Join(h.dir, "tcp")
	// The same server certificate for the three: the harness node's, with the run's CA.
	if err := writePeerFiles(dir, h.ca, h.node.server, nil); err != nil {
		return nil, err
	}
	_, names, err := issue(h.ca, h.dir, "tcp-load", 1, nil)
	if err != nil {
		return nil, err
	}
	cert := []certSpec{{Cert: names[0] + ".pem", Key: names[0] + ".key"}}

	up, err := startUpstream()
	if err != nil {
		return nil, err
	}
	defer up.stop()
	node, stopNode, err := startGuardianTCP(ctx, dir, up.addr())
	if err != nil {
		return nil, fmt.Errorf("guardian: %w", err)
	}
	defer stopNode()
	var bare *bareProxy
	pprof.Do(ctx, pprof.Labels("server", "bare"), func(context.Context) {
		bare, err = startBareProxy(&tls.Config{Certificates: []tls.Certificate{h.node.server.TLS()},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: h.ca.Pool()}, up.addr())
	})
	if err != nil {
		return nil, err
	}
	defer bare.stop()
	haddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	hcmd, err := startHAProxy(o.haproxyBin, dir, haddr, up.addr())
	if err != nil {
		return nil, fmt.Errorf("haproxy: %w (its files: %s)", err, dir)
	}
	defer stopPeer(hcmd)

	targets := []*tcpTarget{
		{name: "guardian", version: "this build (daemon.Node, TCP audience)", addr: node.Addr().String()},
		{name: "bare", version: "crypto/tls + io.Copy, " + runtime.Version(), addr: bare.addr()},
		{name: "haproxy", version: firstLine(o.haproxyBin, "-v"), addr: haddr},
	}
	hpid := hcmd.Process.Pid
	cpu := func() time.Duration { return processCPU() + procCPU(hpid) }
	size := int64(o.tcpMiB) << 20
	kinds := []string{"upload", "download", "conns"}
	var ratios [3][3][]float64 // [target][kind]
	p := newProgress(o.progressTo, "tcp: interleaved rounds", o.tcpRounds*len(kinds)*len(targets))
	step := 0
	for r := 0; r < o.tcpRounds; r++ {
		for ki, kind := range kinds {
			var rate [3]float64
			for j := range targets {
				ti := (j + r + ki) % len(targets) // who goes first rotates
				t := targets[ti]
				runtime.GC() // no one inherits another's garbage
				c0 := cpu()
				var ev clientEvent
				var err error
				if kind == "conns" {
					if err = cl.send(clientCmd{Cmd: "tcp-conns", Addr: t.addr, CA: h.caFile(), Certs: cert,
						Workers: o.tcpWorkers, Duration: o.tcpDuration}); err == nil {
						ev, err = cl.await("loaded", o.tcpDuration+time.Minute, nil, nil)
					}
				} else {
					dir := map[string]string{"upload": "up", "download": "down"}[kind]
					if err = cl.send(clientCmd{Cmd: "tcp-bulk", Addr: t.addr, CA: h.caFile(), Certs: cert, Bytes: size, Dir: dir}); err == nil {
						ev, err = cl.await("bulked", 5*time.Minute, nil, nil)
					}
				}
				if err != nil {
					return nil, fmt.Errorf("%s through %s: %w", kind, t.name, err)
				}
				used := cpu() - c0
				secs := time.Duration(ev.Dur).Seconds()
				if secs <= 0 {
					return nil, fmt.Errorf("%s through %s: the client measured no time", kind, t.name)
				}
				switch kind {
				case "upload":
					rate[ti] = float64(size) / (1 << 20) / secs
					t.up = append(t.up, rate[ti])
					t.cpuUp += used
					t.bytesUp += size
					t.tls = ev.Info
				case "download":
					rate[ti] = float64(size) / (1 << 20) / secs
					t.down = append(t.down, rate[ti])
					t.cpuDown += used
					t.bytesDown += size
				case "conns":
					rate[ti] = float64(ev.N) / secs
					t.conns = append(t.conns, rate[ti])
					t.cpuConns += used
					t.nConns += ev.N
					t.failed += ev.Failed
				}
				step++
				p.set(step)
			}
			for ti := range targets {
				ratios[ti][ki] = append(ratios[ti][ki], rate[ti]/rate[1])
			}
		}
	}
	p.done()

	s := &TCPStats{Rounds: o.tcpRounds, BulkMiB: o.tcpMiB, ConnPhase: o.tcpDuration.String(), Workers: o.tcpWorkers}
	for ti, t := range targets {
		x := &TCPProxyStats{Proxy: t.name, Version: t.version, TLS: t.tls,
			UploadMiBps: median(t.up), DownloadMiBps: median(t.down), ConnsPerSec: median(t.conns),
			UploadRatio: median(ratios[ti][0]), DownloadRatio: median(ratios[ti][1]), ConnsRatio: median(ratios[ti][2]),
			CPUUploadMsPerGiB:   float64(t.cpuUp.Microseconds()) / 1000 / (float64(t.bytesUp) / (1 << 30)),
			CPUDownloadMsPerGiB: float64(t.cpuDown.Microseconds()) / 1000 / (float64(t.bytesDown) / (1 << 30)),
			Conns:               t.nConns, FailedConns: t.failed}
		x.UploadMin, x.UploadMax = minMax(t.up)
		x.DownloadMin, x.DownloadMax = minMax(t.down)
		x.ConnsMin, x.ConnsMax = minMax(t.conns)
		if t.nConns > 0 {
			x.CPUPerConnUs = float64(t.cpuConns.Microseconds()) / float64(t.nConns)
		}
		s.Proxies = append(s.Proxies, x)
	}
	if s.Revocation, err = tcpRevocations(ctx, h, cl, node, up); err != nil {
		return nil, fmt.Errorf("guardian revocation: %w", err)
	}
	return s, nil
}

// tcpTarget is one proxy's measurements over the rounds.
type tcpTarget struct {
	name, version, addr string
	tls                 string
	up, down, conns     []float64
	cpuUp, cpuDown      time.Duration
	cpuConns            time.Duration
	bytesUp, bytesDown  int64
	nConns, failed      int
}

// tcpRevocations holds tcpOthers live conns through guardian's TCP audience, then, for each
// of o.tcpRevokes rounds, opens a conn with a certificate, revokes it in the node's store
// and times the conn's end as the client's kernel reports it and as the upstream sees it.
func tcpRevocations(ctx context.Context, h *harness, cl *client, node *daemon.Node, up *tcpUpstream) (*TCPRevocation, error) {
	const certs = 16
	leaves, names, err := issue(h.ca, h.dir, "tcp-victim", certs, nil)
	if err != nil {
		return nil, err
	}
	_, onames, err := issue(h.ca, h.dir, "tcp-other", 1, nil)
	if err != nil {
		return nil, err
	}
	addr := node.Addr().String()
	s := &TCPRevocation{Rounds: h.o.tcpRevokes, Others: tcpOthers}
	if err := cl.dial(addr, h.caFile(), []certSpec{{Cert: onames[0] + ".pem", Key: onames[0] + ".key", Tag: -1, N: tcpOthers}}, false, "", nil); err != nil {
		return nil, fmt.Errorf("other conns: %w", err)
	}
	for range tcpOthers {
		if _, err := up.next(10 * time.Second); err != nil {
			return nil, fmt.Errorf("other conns: %w", err)
		}
	}
	var atClient, atUpstream []float64
	p := newProgress(h.o.progressTo, "tcp: revoked live conns through guardian", h.o.tcpRevokes)
	for r := 0; r < h.o.tcpRevokes; r++ {
		i := r % certs
		k, _ := revoke.KeyFor(leaves[i].Cert, revoke.KindSerial)
		if node.Set().Has(k) {
			if _, _, err := node.Store().Unrevoke(ctx, k); err != nil {
				return nil, err
			}
		}
		tag := r + 1
		if err := cl.dial(addr, h.caFile(), []certSpec{{Cert: names[i] + ".pem", Key: names[i] + ".key", Tag: tag, N: 1}}, false, "", nil); err != nil {
			return nil, fmt.Errorf("round %d: %w", r, err)
		}
		victim, err := up.next(10 * time.Second)
		if err != nil {
			return nil, fmt.Errorf("round %d: %w", r, err)
		}
		time.Sleep(2 * time.Millisecond) // the conn is idle on both sides
		start := time.Now()
		if _, err := node.Store().Revoke(ctx, revoke.Entry{Key: k, Reason: "keyCompromise"}); err != nil {
			return nil, err
		}
		deadline := time.After(10 * time.Second)
	wait:
		for {
			select {
			case e, ok := <-cl.events:
				if !ok {
					return nil, errors.New("the client process exited")
				}
				switch {
				case e.Ev == "error":
					return nil, fmt.Errorf("client: %s", e.Err)
				case e.Ev != "close":
				case e.Tag == -1:
					s.Dropped++
				case e.Tag == tag:
					atClient = append(atClient, ms(time.Unix(0, e.At).Sub(start)))
					break wait
				}
			case <-deadline:
				return nil, fmt.Errorf("round %d: the revoked conn still open 10s after Store.Revoke", r)
			}
		}
		select {
		case <-victim.closed:
			atUpstream = append(atUpstream, ms(victim.at.Sub(start)))
		case <-time.After(5 * time.Second):
		}
		p.set(r + 1)
	}
	p.done()
	time.Sleep(20 * time.Millisecond) // a wrongly closed other conn has reached the upstream
	s.OthersOpen = int(up.open.Load())
	if err := cl.send(clientCmd{Cmd: "close"}); err != nil {
		return nil, err
	}
	if _, err := cl.await("done", 30*time.Second, func(e clientEvent) {
		if e.Tag == -1 {
			s.Dropped++
		}
	}, nil); err != nil {
		return nil, err
	}
	slices.Sort(atClient)
	s.P50, s.P99, s.Max = percentile(atClient, 0.5), percentile(atClient, 0.99), atClient[len(atClient)-1]
	s.Samples = atClient
	s.UpstreamClosed = len(atUpstream)
	if len(atUpstream) > 0 {
		slices.Sort(atUpstream)
		s.UpstreamP50, s.UpstreamP99, s.UpstreamMax = percentile(atUpstream, 0.5), percentile(atUpstream, 0.99), atUpstream[len(atUpstream)-1]
	}
	return s, nil
}

// startGuardianTCP runs a guardian Node whose one audience splices to upstream, with the
// server certificate and CA in dir and the revocations in memory.
func startGuardianTCP(ctx context.Context, dir, upstream string) (*daemon.Node, func(), error) {
	f := func(name string) string { return filepath.Join(dir, name) }
	cfg := &daemon.Config{Listen: "127.0.0.1:0", ShutdownTimeout: daemon.Duration(time.Second),
		Revocation: daemon.RevocationConfig{Store: "memory"},
		Audiences: []daemon.AudienceConfig{{Name: "tcp", SNI: []string{"localhost"}, Cert: f("server.pem"), Key: f("server.key"),
			ClientCA: []string{f("ca.pem")}, Upstream: "tcp://" + upstream}}}
	var node *daemon.Node
	var err error
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	// The node's goroutines carry server=guardian, for -cpuprofile (-tagfocus).
	pprof.Do(ctx, pprof.Labels("server", "guardian"), func(ctx context.Context) {
		if node, err = daemon.New(ctx, cfg, daemon.Options{}); err == nil {
			go func() { node.Run(rctx); close(done) }()
		}
	})
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return node, func() {
		now, stop := context.WithCancel(context.Background())
		stop()
		node.Shutdown(now) // closes what is left at once
		cancel()
		<-done
	}, nil
}

// tcpUpstream is the plain TCP server behind the three proxies. A conn's first byte says
// what it wants: 'E' echo (the byte included), 'U' + 8-byte length: read that many bytes
// and answer 'K', 'D' + 8-byte length: send that many bytes, 'x' hold (the revocation
// rounds' conns, reported on held, timed to their end).
type tcpUpstream struct {
	l     net.Listener
	held  chan *upstreamConn
	open  atomic.Int64 // hold conns open
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// upstreamConn is a hold conn: closed is closed when its Read ended, at at.
type upstreamConn struct {
	closed chan struct{}
	at     time.Time
}

func startUpstream() (*tcpUpstream, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u := &tcpUpstream{l: l, held: make(chan *upstreamConn, 4096), conns: map[net.Conn]struct{}{}}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.conns[c] = struct{}{}
			u.mu.Unlock()
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				u.serve(c)
				c.Close()
				u.mu.Lock()
				delete(u.conns, c)
				u.mu.Unlock()
			}()
		}
	}()
	return u, nil
}

func (u *tcpUpstream) addr() string { return u.l.Addr().String() }

func (u *tcpUpstream) serve(c net.Conn) {
	var hdr [9]byte
	if _, err := io.ReadFull(c, hdr[:1]); err != nil {
		return
	}
	switch hdr[0] {
	case 'E':
		buf := make([]byte, 512)
		buf[0] = 'E'
		if _, err := c.Write(buf[:1]); err != nil {
			return
		}
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, err := c.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	case 'U', 'D':
		if _, err := io.ReadFull(c, hdr[1:]); err != nil {
			return
		}
		left := int64(binary.BigEndian.Uint64(hdr[1:]))
		buf := make([]byte, 256<<10)
		for left > 0 {
			var n int
			var err error
			if hdr[0] == 'U' {
				n, err = c.Read(buf[:min(int64(len(buf)), left)])
			} else {
				n, err = c.Write(buf[:min(int64(len(buf)), left)])
			}
			left -= int64(n)
			if err != nil {
				return
			}
		}
		if hdr[0] == 'U' {
			if _, err := c.Write([]byte{'K'}); err != nil {
				return
			}
		}
		for {
			if _, err := c.Read(buf); err != nil { // until the client is gone
				return
			}
		}
	case 'x':
		h := &upstreamConn{closed: make(chan struct{})}
		u.open.Add(1)
		select {
		case u.held <- h:
		default: // nobody is counting this many
		}
		buf := make([]byte, 64)
		for {
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		h.at = time.Now()
		u.open.Add(-1)
		close(h.closed)
	}
}

// next returns the next hold conn the upstream accepted.
func (u *tcpUpstream) next(timeout time.Duration) (*upstreamConn, error) {
	select {
	case h := <-u.held:
		return h, nil
	case <-time.After(timeout):
		return nil, fmt.Errorf("the upstream got no conn within %s", timeout)
	}
}

func (u *tcpUpstream) stop() {
	u.l.Close()
	u.mu.Lock()
	for c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

// bareProxy is the floor: a crypto/tls listener, a dial to the upstream once the handshake
// is done, and io.Copy both ways; when either direction ends, both conns are closed.
type bareProxy struct {
	l        net.Listener
	upstream string
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

func startBareProxy(cfg *tls.Config, upstream string) (*bareProxy, error) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &bareProxy{l: tls.NewListener(inner, cfg), upstream: upstream, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := p.l.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.serve(c.(*tls.Conn)) }()
		}
	}()
	return p, nil
}

func (p *bareProxy) addr() string { return p.l.Addr().String() }

func (p *bareProxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
	p.mu.Unlock()
}

func (p *bareProxy) serve(c *tls.Conn) {
	p.track(c, true)
	defer p.track(c, false)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := c.HandshakeContext(ctx)
	cancel()
	if err != nil {
		return
	}
	up, err := net.Dial("tcp", p.upstream)
	if err != nil {
		return
	}
	p.track(up, true)
	defer p.track(up, false)
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, c); done <- struct{}{} }()
	go func() { io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	<-done
}

func (p *bareProxy) stop() {
	p.l.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// startHAProxy runs HAProxy in mode tcp on addr: TLS with client certificates required, the
// plain upstream behind. It prefers AES-128-GCM, as Go does with AES hardware, so that the
// three proxies run the same cipher; the client offers X25519 alone, so the same key
// exchange too (see tcpClientTLS).
func startHAProxy(bin, dir, addr, upstream string) (*exec.Cmd, error) {
	conf := fmt.Sprintf(`global
  maxconn 4096
defaults
  mode tcp
  timeout client 300s
  timeout server 300s
  timeout connect 5s
frontend tcp
  bind %[2]s ssl crt %[1]s/server-combined.pem ca-file %[1]s/ca.pem verify required ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
  default_backend upstream
backend upstream
  server upstream %[3]s
`, dir, addr, upstream)
	if err := os.WriteFile(filepath.Join(dir, "haproxy-tcp.cfg"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return startProc(exec.Command(bin, "-db", "-f", filepath.Join(dir, "haproxy-tcp.cfg")), dir, "haproxy-tcp", addr)
}

// procCPU is a process's user+system time from /proc (all its threads), 0 where unreadable.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 > len(b) {
		return 0
	}
	f := strings.Fields(string(b[i+2:])) // from field 3, state
	if len(f) < 13 {
		return 0
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(ut+st) * (time.Second / 100) // USER_HZ is 100 on Linux
}

// The client process's side of the tcp scenario.

// tcpClientTLS is the client's config for a TCP proxy: no ALPN (none of the three offers
// one), and X25519 alone, so that the Go servers do not choose a post-quantum hybrid that
// HAProxy's OpenSSL 3.0 does not have: the three do the same key exchange.
func tcpClientTLS(c clientCmd) (*tls.Config, error) {
	if len(c.Certs) == 0 {
		return nil, errors.New("no client certificate")
	}
	cert, err := tls.LoadX509KeyPair(c.Certs[0].Cert, c.Certs[0].Key)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", c.Certs[0].Cert, err)
	}
	cfg, err := clientTLS(c.CA, cert)
	if err != nil {
		return nil, err
	}
	cfg.NextProtos = nil
	cfg.CurvePreferences = []tls.CurveID{tls.X25519}
	return cfg, nil
}

// tcpBulk moves c.Bytes through one conn: "up" to the upstream (which acknowledges the last
// byte), "down" from it. The handshake is not timed.
func tcpBulk(c clientCmd) (clientEvent, error) {
	cfg, err := tcpClientTLS(c)
	if err != nil {
		return clientEvent{}, err
	}
	if c.Bytes <= 0 || (c.Dir != "up" && c.Dir != "down") {
		return clientEvent{}, fmt.Errorf("tcp-bulk needs bytes and a direction (up or down), got %d, %q", c.Bytes, c.Dir)
	}
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", c.Addr, cfg)
	if err != nil {
		return clientEvent{}, err
	}
	defer tc.Close()
	tc.SetDeadline(time.Now().Add(5 * time.Minute))
	cs := tc.ConnectionState()
	info := fmt.Sprintf("%s %s %s", tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite), cs.CurveID)
	var hdr [9]byte
	hdr[0] = 'U'
	if c.Dir == "down" {
		hdr[0] = 'D'
	}
	binary.BigEndian.PutUint64(hdr[1:], uint64(c.Bytes))
	buf := make([]byte, 256<<10)
	start := time.Now()
	if _, err := tc.Write(hdr[:]); err != nil {
		return clientEvent{}, err
	}
	if c.Dir == "up" {
		for left := c.Bytes; left > 0; {
			n, err := tc.Write(buf[:min(int64(len(buf)), left)])
			left -= int64(n)
			if err != nil {
				return clientEvent{}, fmt.Errorf("upload: %w", err)
			}
		}
		if _, err := io.ReadFull(tc, buf[:1]); err != nil || buf[0] != 'K' {
			return clientEvent{}, fmt.Errorf("upload: no acknowledgement from the upstream: %v", err)
		}
	} else {
		for left := c.Bytes; left > 0; {
			n, err := tc.Read(buf[:min(int64(len(buf)), left)])
			left -= int64(n)
			if err != nil {
				return clientEvent{}, fmt.Errorf("download, %d bytes short: %w", left, err)
			}
		}
	}
	return clientEvent{Ev: "bulked", N: int(c.Bytes), Dur: int64(time.Since(start)), Info: info}, nil
}

// tcpConns has c.Workers goroutines open conns for c.Duration: each a full handshake, a
// 16-byte message the upstream echoes, and a close.
func tcpConns(c clientCmd) (clientEvent, error) {
	cfg, err := tcpClientTLS(c)
	if err != nil {
		return clientEvent{}, err
	}
	if c.Workers <= 0 || c.Duration <= 0 {
		return clientEvent{}, errors.New("tcp-conns needs workers and a duration")
	}
	msg := []byte("E-guardian-bench")
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	stop := start.Add(c.Duration)
	var wg sync.WaitGroup
	for range c.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, len(msg))
			for time.Now().Before(stop) {
				err := func() error {
					tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", c.Addr, cfg)
					if err != nil {
						return err
					}
					defer tc.Close()
					tc.SetDeadline(time.Now().Add(10 * time.Second))
					if _, err := tc.Write(msg); err != nil {
						return err
					}
					if _, err := io.ReadFull(tc, buf); err != nil {
						return err
					}
					if !bytes.Equal(buf, msg) {
						return fmt.Errorf("echo %q, want %q", buf, msg)
					}
					return nil
				}()
				if err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					failed.Add(1)
					time.Sleep(time.Millisecond)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	dur := time.Since(start)
	if ok.Load() == 0 {
		return clientEvent{}, fmt.Errorf("no conn succeeded, e.g. %v", firstErr.Load())
	}
	return clientEvent{Ev: "loaded", N: int(ok.Load()), Failed: int(failed.Load()), Dur: int64(dur)}, nil
}
