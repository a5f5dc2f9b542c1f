package daemon

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/prometheus/client_golang/prometheus"
)

// testPKI writes a CA, a localhost server certificate and a client certificate to a new
// directory.
func testPKI(t *testing.T) (dir string, ca *pkitest.CA, client *pkitest.Leaf) {
	t.Helper()
	dir = t.TempDir()
	ca = pkitest.NewCA(t)
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	server := ca.MustIssue(t, pkitest.Opts{CommonName: "localhost", DNS: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err := server.WriteFiles(dir, "server"); err != nil {
		t.Fatal(err)
	}
	return dir, ca, ca.MustIssue(t, pkitest.Opts{CommonName: "client", URIs: []string{"spiffe://test/client"}})
}

func testConfig(dir, admin string) *Config {
	f := func(name string) string { return filepath.Join(dir, name) }
	return &Config{
		Listen:     "127.0.0.1:0",
		Admin:      AdminConfig{Listen: admin, Cert: f("server.pem"), Key: f("server.key"), ClientCA: []string{f("ca.pem")}, Allow: []string{"uri:spiffe://test/admin"}},
		Revocation: RevocationConfig{Store: "memory"},
		Audiences: []AudienceConfig{{Name: "api", SNI: []string{"localhost"}, Cert: f("server.pem"), Key: f("server.key"),
			ClientCA: []string{f("ca.pem")}}},
	}
}

// runNode starts a Node on cfg and runs it until the test ends.
func runNode(t *testing.T, cfg *Config, opts Options) *Node {
	t.Helper()
	n, err := New(context.Background(), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	return n
}

// goroutines waits until the process runs at most n goroutines, and returns how many it runs.
func goroutines(n int) int {
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return runtime.NumGoroutine()
}

// A Node built in code serves, is reachable at Addr, and Shutdown leaves nothing running.
func TestNodeRunsAndShutsDown(t *testing.T) {
	dir, ca, client := testPKI(t)
	before := runtime.NumGoroutine()
	logs := &syncBuffer{}
	n, err := New(context.Background(), testConfig(dir, "127.0.0.1:0"), Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{client.TLS()}},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, n.Addr().String())
		}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("https://localhost/") // the SNI/Host guard wants them equal
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("got %s; want 200 from the identity echo", resp.Status)
	}
	if n.AdminAddr() == nil {
		t.Fatal("no admin address")
	}
	// A client without a certificate is refused, and that leaves a trace at the default
	// level, with the reason and the client's address.
	if c, err := tls.Dial("tcp", n.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}); err == nil {
		c.Read(make([]byte, 1)) // TLS 1.3: the refusal arrives after the client's handshake
		c.Close()
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), `msg="handshake refused: bad_certificate"`); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no refusal logged at Info:\n%s", logs)
		}
	}
	if !strings.Contains(logs.String(), "remote=127.0.0.1:") || !strings.Contains(logs.String(), "level=INFO") {
		t.Fatalf("the refusal's line lacks the level or the client address:\n%s", logs)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v; want nil", err)
	}
	tr.CloseIdleConnections()
	if got := goroutines(before); got > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after Shutdown; %d before New:\n%s", got, before, buf[:runtime.Stack(buf, true)])
	}
	// A second Shutdown returns at once.
	if err := n.Shutdown(context.Background()); err != nil {
		t.Fatalf("second Shutdown = %v", err)
	}
}

// A New that fails half-way — the admin port is taken — closes what it opened: the data
// port is free again and no goroutine is left.
func TestNewFailingLeavesNothingRunning(t *testing.T) {
	dir, _, _ := testPKI(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dataAddr := free.Addr().String()
	free.Close()
	before := runtime.NumGoroutine()
	cfg := testConfig(dir, taken.Addr().String())
	cfg.Listen = dataAddr
	if _, err := New(context.Background(), cfg, Options{}); err == nil || !strings.Contains(err.Error(), "admin.listen") {
		t.Fatalf("New = %v; want an error naming admin.listen", err)
	}
	ln, err := net.Listen("tcp", dataAddr)
	if err != nil {
		t.Fatalf("the data port is still held after New failed: %v", err)
	}
	ln.Close()
	if got := goroutines(before); got > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after a failed New; %d before:\n%s", got, before, buf[:runtime.Stack(buf, true)])
	}
}

// syncBuffer is a bytes.Buffer safe for a node's goroutines to write while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// With Redis down, the go-redis client's own complaints go through the node's logger:
// JSON stays JSON, and they are rate-limited rather than several a second.
func TestRedisClientLogsAreTheNodes(t *testing.T) {
	dir, _, _ := testPKI(t)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := dead.Addr().String()
	dead.Close()
	cfg := testConfig(dir, "")
	cfg.Revocation = RevocationConfig{Store: "redis", Redis: RedisConfig{URL: "redis://" + addr}}
	out := &syncBuffer{}
	n, err := New(context.Background(), cfg, Options{Logger: slog.New(slog.NewJSONHandler(out, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown(context.Background())
	time.Sleep(2 * time.Second) // New waited 5s for Redis; the feed keeps retrying meanwhile
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	client := 0
	for _, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("a line that is not JSON: %q", l)
		}
		if rec["msg"] == "redis client" {
			client++
		}
	}
	if client == 0 || client > 4 {
		t.Fatalf("%d redis client lines in 7s; want a few (a burst of 3, then one per 10s):\n%s", client, out)
	}
}

// An embedder's registry takes a Node again after a failed New, and after Shutdown: what a
// Node registers, it takes out.
func TestNodeMetricsLeaveTheRegistry(t *testing.T) {
	dir, _, _ := testPKI(t)
	reg := prometheus.NewRegistry()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	if _, err := New(context.Background(), testConfig(dir, taken.Addr().String()), Options{Metrics: reg}); err == nil {
		t.Fatal("New on a taken admin port succeeded")
	}
	n, err := New(context.Background(), testConfig(dir, "127.0.0.1:0"), Options{Metrics: reg})
	if err != nil {
		t.Fatalf("New after a failed one, same registry: %v", err)
	}
	if mfs, _ := reg.Gather(); len(mfs) == 0 {
		t.Fatal("the node registered nothing")
	}
	if err := n.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Fatalf("%d metric families left after Shutdown, the first %s", len(mfs), mfs[0].GetName())
	}
	n, err = New(context.Background(), testConfig(dir, "127.0.0.1:0"), Options{Metrics: reg})
	if err != nil {
		t.Fatalf("New after Shutdown, same registry: %v", err)
	}
	n.Shutdown(context.Background())
}
