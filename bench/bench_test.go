package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	// The harness re-executes its own binary as the client process; in tests that binary
	// is the test binary.
	if os.Getenv(clientEnv) == "1" {
		if err := clientMain(os.Stdin, os.Stdout); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func tinyOptions() options {
	o := defaultOptions()
	o.rounds, o.conns, o.certs, o.others = 5, 40, 4, 20
	o.caConns, o.memConns, o.denylist = 60, 50, 100
	o.loadRounds, o.loadDuration, o.loadWorkers = 1, 200*time.Millisecond, 2
	o.fleetNodes, o.peerConns, o.peerWindow = 2, 3, 300*time.Millisecond
	o.tcpRounds, o.tcpMiB, o.tcpDuration, o.tcpWorkers, o.tcpRevokes = 1, 4, 200*time.Millisecond, 2, 3
	return o
}

// A tiny run of every scenario with the real pieces: redis-server, the client process,
// guardian nodes, nginx where installed and HAProxy (the tcp scenario needs it: make test's
// setup installs it). It checks that the harness
// measures, not how fast.
func TestHarnessSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	o := tinyOptions()
	res, err := run(context.Background(), o)
	if err != nil {
		t.Fatal(err) // redis-server missing included: make test installs it
	}
	if s := res.EvictionSingle; s == nil || s.Rounds != 5 || s.P50 <= 0 || s.Max < s.P50 || len(s.Samples) != 5 {
		t.Errorf("eviction-single = %+v", s)
	}
	if b := res.EvictionBulk; b == nil || b.Closed != 40 || b.Collateral != 0 || b.Others != 20 || b.AllClosed < b.First || b.Applied <= 0 || b.Floor <= 0 {
		t.Errorf("eviction-bulk = %+v", b)
	}
	if b := res.EvictionCA; b == nil || b.Closed != 60 || b.Collateral != 0 || b.Others != 4 || b.AllClosed < b.First {
		t.Errorf("eviction-ca = %+v", b)
	}
	if f := res.Fleet; f == nil || f.Nodes != 2 || len(f.PerNode) != 2 || len(f.PerNode[1].Samples) != 5 || f.P99 < f.PerNode[0].P50 {
		t.Errorf("fleet = %+v", f)
	}
	if ov := res.Overhead; ov == nil || ov.Bare.RequestsPerSec <= 0 || ov.Guardian.HandshakesPerSec <= 0 ||
		ov.Requests <= 0 || ov.Handshake <= 0 || ov.Guardian.CPUPerHandshakeUs <= 0 || ov.Denylist < 100 {
		t.Errorf("overhead = %+v", ov)
	}
	if m := res.Memory; m == nil || m.BarePerConn < 1000 || m.GuardianPerConn < 1000 || m.Conns != 50 {
		t.Errorf("memory = %+v", m)
	}
	p := res.Peers
	if p == nil || len(p.Peers) != 3 {
		t.Fatalf("peers = %+v", p)
	}
	if g := p.Peers[0]; g.Peer != "guardian" || !g.RevokedClosed || g.Dropped != 0 || !g.NewRefused || g.Unrelated != 3 {
		t.Errorf("peers: guardian = %+v", g)
	}
	for _, x := range p.Peers[1:] {
		if x.Skipped != "" {
			if !strings.Contains(x.Skipped, "make bench-peers") {
				t.Errorf("peers: %s skipped without saying how to install it: %q", x.Peer, x.Skipped)
			}
			continue
		}
		// The CRL reached the peer: a new handshake with the revoked certificate fails.
		if !x.NewRefused {
			t.Errorf("peers: %s still accepts the revoked certificate: %+v", x.Peer, x)
		}
	}
	if tc := res.TCP; tc == nil || len(tc.Proxies) != 3 {
		t.Errorf("tcp = %+v", tc)
	} else {
		for i, x := range tc.Proxies {
			if x.Proxy != []string{"guardian", "bare", "haproxy"}[i] || x.UploadMiBps <= 0 || x.DownloadMiBps <= 0 || x.ConnsPerSec <= 0 ||
				x.Conns <= 0 || x.UploadRatio <= 0 || x.DownloadRatio <= 0 || x.ConnsRatio <= 0 ||
				x.UploadMin > x.UploadMiBps || x.UploadMax < x.UploadMiBps || x.ConnsMin > x.ConnsPerSec || x.ConnsMax < x.ConnsPerSec ||
				x.CPUUploadMsPerGiB <= 0 || x.CPUDownloadMsPerGiB <= 0 || x.CPUPerConnUs <= 0 || !strings.HasPrefix(x.TLS, "TLS 1.3 ") {
				t.Errorf("tcp: %s = %+v", []string{"guardian", "bare", "haproxy"}[i], x)
			}
		}
		if b := tc.Proxies[1]; b.UploadRatio != 1 || b.DownloadRatio != 1 || b.ConnsRatio != 1 {
			t.Errorf("tcp: the bare proxy's ratios to itself = %+v", b)
		}
		// Each revoked live conn ended for the client and at the upstream; no other did.
		if v := tc.Revocation; v == nil || v.Rounds != 3 || len(v.Samples) != 3 || v.P50 <= 0 || v.P99 < v.P50 || v.Max < v.P99 ||
			v.UpstreamClosed != 3 || v.UpstreamP50 <= 0 || v.UpstreamMax < v.UpstreamP50 || v.Dropped != 0 || v.OthersOpen != v.Others || v.Others == 0 {
			t.Errorf("tcp: guardian revocation = %+v", v)
		}
	}
	if res.Env.Go == "" || res.Env.Redis == "" || res.Env.FDLimit == 0 || len(res.StealPercent) != len(allScenarios) {
		t.Errorf("environment not recorded: %+v, steal %v", res.Env, res.StealPercent)
	}
	png := filepath.Join(t.TempDir(), "latency.png")
	if err := plotLatencies(png, res); err != nil {
		t.Error(err)
	} else if b, err := os.ReadFile(png); err != nil || len(b) < 1000 || string(b[1:4]) != "PNG" {
		t.Errorf("plot: %d bytes, %v", len(b), err)
	}
}

func TestBadOptions(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port
	good := tinyOptions()
	good.scenarios = "eviction-single"
	tests := []struct {
		name    string
		mod     func(*options)
		mention string
	}{
		{"zero rounds", func(o *options) { o.rounds = 0 }, "-rounds"},
		{"fewer conns than certs", func(o *options) { o.conns = 1 }, "at least -certs"},
		{"too many fds", func(o *options) { o.conns, o.others = 15000, 5000 }, "20,000 fds"},
		{"too many ca conns", func(o *options) { o.caConns = 19000 }, "-ca-conns"},
		{"unknown scenario", func(o *options) { o.scenarios = "peer" }, "unknown scenario"},
		{"empty scenario", func(o *options) { o.scenarios = "eviction-single,,memory" }, "unknown scenario"},
		{"short load phase", func(o *options) { o.loadDuration = time.Millisecond }, "-load-duration"},
		{"plot not png", func(o *options) { o.plotFile = "latency.svg" }, ".png"},
		{"bad port", func(o *options) { o.redisPort = 70000 }, "-redis-port"},
		{"occupied port", func(o *options) { o.redisPort = busyPort }, "port " + strconv.Itoa(busyPort) + " is in use"},
		{"missing redis", func(o *options) { o.redisBin = "no-such-redis-server" }, "apt-get install redis-server"},
		{"missing haproxy", func(o *options) { o.scenarios, o.haproxyBin = "tcp", "no-such-haproxy" }, "apt-get install haproxy"},
		{"soak past the fd limit", func(o *options) { o.scenarios, o.soakConns = "soak", 19950 }, "-soak-conns"},
		{"zero soak conns", func(o *options) { o.scenarios, o.soakConns = "soak", 0 }, "-soak-conns"},
		{"instant soak", func(o *options) { o.scenarios, o.soakDuration = "soak", time.Millisecond }, "-soak-duration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good
			tt.mod(&o)
			_, err := run(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("error %v; want one mentioning %q", err, tt.mention)
			}
		})
	}
}
