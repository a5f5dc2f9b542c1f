package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/need"
	"github.com/guardian-mtls/guardian/internal/pemfile"
)

// syncBuffer is a bytes.Buffer safe for the demo goroutine to write while the test reads.
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

type runningDemo struct {
	dir, addr, admin string
	out, log         *syncBuffer
}

func startDemo(t *testing.T) *runningDemo {
	t.Helper()
	d := &runningDemo{dir: t.TempDir(), out: &syncBuffer{}, log: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	n, err := newDemo(ctx, d.dir, "127.0.0.1:0", "127.0.0.1:0", slog.New(slog.NewTextHandler(d.log, nil)))
	if err != nil {
		cancel()
		t.Fatalf("demo did not start: %v", err)
	}
	d.addr, d.admin = n.Addr().String(), n.AdminAddr().String()
	printDemo(d.out, d.dir, d.addr, d.admin)
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("demo returned %v", err)
		}
	})
	return d
}

func (d *runningDemo) client(t *testing.T, name string) *http.Client {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(d.dir, name+".pem"), filepath.Join(d.dir, name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pemfile.LoadPool(filepath.Join(d.dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: "localhost"},
		// Requests name the server localhost, its SNI, as curl does (the SNI/Host guard
		// answers 421 otherwise); the listeners are on 127.0.0.1 only.
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if host, port, err := net.SplitHostPort(addr); err == nil && host == "localhost" {
				addr = net.JoinHostPort("127.0.0.1", port)
			}
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func (d *runningDemo) adminArgs(name string) []string {
	return []string{"--admin", "https://" + d.admin, "--admin-cert", filepath.Join(d.dir, name+".pem"),
		"--admin-key", filepath.Join(d.dir, name+".key"), "--admin-ca", filepath.Join(d.dir, "ca.pem")}
}

func (d *runningDemo) cli(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return out.String() + errb.String(), code
}

// local names a listener's address as clients do: localhost and the port.
func local(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return "localhost:" + port
}

// openStream starts GET /stream and returns a channel that yields each line, closed when
// the stream ends.
func openStream(t *testing.T, c *http.Client, addr string) <-chan string {
	t.Helper()
	resp, err := c.Get("https://" + local(addr) + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	if l, ok := <-lines; !ok || !strings.Contains(l, "still connected") {
		t.Fatalf("stream's first line %q", l)
	}
	return lines
}

func streamEnds(lines <-chan string, within time.Duration) bool {
	deadline := time.After(within)
	for {
		select {
		case _, ok := <-lines:
			if !ok {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

// The demo's promise: `guardian revoke --cert client.pem` through the admin API ends
// client.pem's live request at once, and client2.pem's goes on.
func TestDemoRevokeEndsLiveStream(t *testing.T) {
	d := startDemo(t)
	for _, f := range []string{"ca.pem", "server.pem", "server.key", "client.pem", "client.key", "client2.pem", "client2.key", "admin.pem", "admin.key"} {
		if _, err := os.Stat(filepath.Join(d.dir, f)); err != nil {
			t.Fatalf("demo PKI lacks %s", f)
		}
	}
	if !strings.Contains(d.out.String(), "revoke --admin https://"+d.admin) || !strings.Contains(d.out.String(), "curl --cacert") {
		t.Fatalf("demo did not print the lines to try:\n%s", d.out)
	}
	victim := openStream(t, d.client(t, "client"), d.addr)
	bystander := openStream(t, d.client(t, "client2"), d.addr)

	out, code := d.cli(t, append([]string{"revoke"}, append(d.adminArgs("admin"), "--cert", filepath.Join(d.dir, "client.pem"), "--reason", "keyCompromise")...)...)
	if code != 0 || !strings.Contains(out, "1 live conn(s) matched") {
		t.Fatalf("guardian revoke: exit %d:\n%s", code, out)
	}
	if !streamEnds(victim, 10*time.Second) {
		t.Fatal("client.pem's stream still flowing 10s after the revocation")
	}
	if streamEnds(bystander, 1500*time.Millisecond) {
		t.Fatal("client2.pem's stream ended too")
	}
	if _, err := d.client(t, "client").Get("https://" + local(d.addr) + "/"); err == nil {
		t.Fatal("revoked client.pem served on a new conn")
	}
	out, code = d.cli(t, append([]string{"list"}, d.adminArgs("admin")...)...)
	if code != 0 || !strings.Contains(out, "keyCompromise") {
		t.Fatalf("guardian list: exit %d:\n%s", code, out)
	}
	out, code = d.cli(t, append([]string{"conns"}, d.adminArgs("admin")...)...)
	if code != 0 || !strings.Contains(out, clientURI+"2") || strings.Contains(out, clientURI+"\n") {
		t.Fatalf("guardian conns: exit %d:\n%s", code, out)
	}
	out, code = d.cli(t, append([]string{"unrevoke"}, append(d.adminArgs("admin"), "--uri", clientURI)...)...)
	if code == 0 {
		t.Fatalf("unrevoking a key that is not revoked succeeded:\n%s", out)
	}
	out, code = d.cli(t, append([]string{"unrevoke"}, append(d.adminArgs("admin"), "--cert", filepath.Join(d.dir, "client.pem"))...)...)
	if code != 0 {
		t.Fatalf("guardian unrevoke: exit %d:\n%s", code, out)
	}
	resp, err := d.client(t, "client").Get("https://" + local(d.addr) + "/")
	if err != nil {
		t.Fatalf("client.pem refused after unrevoke: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "hello "+clientURI) {
		t.Fatalf("echo: %q", b)
	}
	if !strings.Contains(d.log.String(), `msg="conn evicted"`) {
		t.Errorf("no eviction log line:\n%s", d.log)
	}
}

// The admin API answers the admin certificate only.
func TestDemoAdminRefusesOthers(t *testing.T) {
	d := startDemo(t)
	for _, name := range []string{"client", "client2", "server"} {
		out, code := d.cli(t, append([]string{"revoke"}, append(d.adminArgs(name), "--uri", client2URI)...)...)
		if code == 0 || !strings.Contains(out, "not an admin") {
			t.Fatalf("revoke with %s.pem: exit %d:\n%s", name, code, out)
		}
	}
	out, code := d.cli(t, append([]string{"list"}, d.adminArgs("admin")...)...)
	if code != 0 || strings.Contains(out, "uri:") {
		t.Fatalf("a refused revoke left an entry: exit %d:\n%s", code, out)
	}
	out, code = d.cli(t, append([]string{"revoke"}, append(d.adminArgs("admin"), "--key", "uri:spiffe://ok/x", "--reason", "keyCompromise")...)...)
	if code != 0 {
		t.Fatalf("admin revoke: %s", out)
	}
	// A malformed key sent straight to the API: 400 naming the problem, nothing stored.
	for _, body := range []string{`{"key":"sha256:nothex"}`, `{"key":"uri:spiffe://a/b","extra":1}`, `not json`} {
		resp, err := d.client(t, "admin").Post("https://"+d.admin+"/v1/revocations", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(b), "error") {
			t.Fatalf("POST %s: %s %s; want 400 with an error", body, resp.Status, b)
		}
	}
	out, _ = d.cli(t, append([]string{"list"}, d.adminArgs("admin")...)...)
	if strings.Count(out, "\n") != 2 { // header + the one good entry
		t.Fatalf("bad requests changed the set:\n%s", out)
	}
	// The admin's /metrics counts the refusals (in the handshake: the admin listener shares
	// the node's metrics) and the success.
	resp, err := d.client(t, "admin").Get("https://" + d.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"go_goroutines", "process_open_fds", `guardian_handshake_failures_total{listener="admin",reason="bad_certificate"} 3`, `guardian_handshakes_total{audience="admin",kind="full",listener="admin"}`, `guardian_admin_requests_total{op="revoke",result="ok"} 1`, `guardian_admin_requests_total{op="revoke",result="bad_request"} 3`, "guardian_connections_active"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// No certificate at all: the handshake itself is refused.
	pool, _ := pemfile.LoadPool(filepath.Join(d.dir, "ca.pem"))
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
	if resp, err := c.Get("https://" + d.admin + "/v1/revocations"); err == nil {
		resp.Body.Close()
		t.Fatalf("admin API answered a client without a certificate: %s", resp.Status)
	}
}

// The CLI's errors, from the real binary: each names the flag or field, what is wrong, and
// the forms accepted.
func TestCLIErrors(t *testing.T) {
	bin := guardianBinary(t)
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	typo := filepath.Join(dir, "typo.yaml")
	os.WriteFile(typo, []byte("listen: ':0'\naudiences:\n  - name: api\n    sni: [localhost]\n    client_auht: require\n"), 0o644)
	admin := []string{"--admin-cert", filepath.Join(dir, "admin.pem"), "--admin-key", filepath.Join(dir, "admin.key"), "--admin-ca", filepath.Join(dir, "ca.pem")}
	tests := []struct {
		name    string
		args    []string
		code    int
		mention string
	}{
		{"no selector", []string{"revoke", "--admin", "https://x"}, 1, "exactly one of"},
		{"two selectors", []string{"revoke", "--uri", "spiffe://a/b", "--dns", "a"}, 1, "exactly one of"},
		{"bad key", []string{"revoke", "--key", "sha256:zz"}, 1, "64 hex"},
		{"serial without issuer", []string{"revoke", "--serial", "0a"}, 1, "--issuer-cert"},
		{"bad reason", []string{"revoke", "--uri", "spiffe://a/b", "--reason", "because"}, 1, "unknown reason"},
		{"cert without the field", []string{"revoke", "--cert", filepath.Join(dir, "client.pem"), "--by", "email"}, 1, "no email SAN"},
		{"misspelt --by", []string{"revoke", "--cert", filepath.Join(dir, "client.pem"), "--by", "serail"}, 1, `--by "serail": unknown kind; with --cert use serial, sha256 or spki`},
		{"no target", []string{"revoke", "--uri", "spiffe://a/b"}, 1, "--admin URL"},
		{"missing admin flags", []string{"revoke", "--uri", "spiffe://a/b", "--admin", "https://x"}, 1, "--admin-cert"},
		{"admin without scheme", append([]string{"revoke", "--uri", "spiffe://a/b", "--admin", "127.0.0.1:9443"}, admin...), 1, `--admin "127.0.0.1:9443": not a URL; want the admin API's URL, e.g. https://`},
		{"admin over http", append([]string{"revoke", "--uri", "spiffe://a/b", "--admin", "http://127.0.0.1:9443"}, admin...), 1, `--admin "http://127.0.0.1:9443": scheme http; want`},
		{"redis without scheme", []string{"revoke", "--uri", "spiffe://a/b", "--redis", "127.0.0.1:6379"}, 1, `--redis "127.0.0.1:6379": not a URL; want redis://host:port`},
		{"two targets", []string{"revoke", "--uri", "spiffe://a/b", "--admin", "https://x", "--redis", "redis://x"}, 1, "give one of"},
		{"close without admin", []string{"conns", "--redis", "redis://127.0.0.1:1", "--close", "3"}, 1, "--close closes a conn on one node"},
		{"unknown config field", []string{"serve", "--config", typo}, 1, typo + `:5: audiences[0]: unknown field "client_auht" (did you mean "client_auth"?)`},
		{"unknown flag", []string{"revoke", "--bogus"}, 2, "bogus"},
		{"unknown command", []string{"frobnicate"}, 2, "unknown command"},
		{"missing file", []string{"revoke", "--cert", filepath.Join(dir, "nope.pem")}, 1, "no such file"},
		{"pki init help", []string{"pki", "init", "-h"}, 0, "writes a throw-away development PKI"},
		{"conns help", []string{"conns", "-h"}, 0, "closes one without revoking"},
		{"revoke help", []string{"revoke", "-h"}, 0, "revokes one key"},
		{"usage lists conns --redis", []string{"help"}, 0, "guardian conns    --redis URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := exec.Command(bin, tt.args...).CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.code || !strings.Contains(string(out), tt.mention) {
				t.Fatalf("exit %d, output %q; want exit %d mentioning %q", code, out, tt.code, tt.mention)
			}
		})
	}
}

// `guardian pki init` writes a PKI that openssl itself verifies.
func TestPKIInitVerifiesWithOpenSSL(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if code := run([]string{"pki", "init", dir}, &out, &out); code != 0 {
		t.Fatalf("pki init: exit %d: %s", code, out.String())
	}
	need.Tool(t, "openssl")
	for _, name := range []string{"server", "client", "client2", "admin"} {
		cmd := exec.Command("openssl", "verify", "-CAfile", filepath.Join(dir, "ca.pem"), filepath.Join(dir, name+".pem"))
		if b, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(b), ": OK") {
			t.Fatalf("openssl verify %s.pem: %v: %s", name, err, b)
		}
		cmd = exec.Command("openssl", "pkey", "-in", filepath.Join(dir, name+".key"), "-noout")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl pkey %s.key: %v: %s", name, err, b)
		}
	}
	if st, err := os.Stat(filepath.Join(dir, "client.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("client.key mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
}

// guardian conns lists each live conn with its ID; --close ID ends that conn alone, and
// revokes nothing: the client connects again at once.
func TestDemoConnsCloseByID(t *testing.T) {
	d := startDemo(t)
	first := openStream(t, d.client(t, "client"), d.addr)
	second := openStream(t, d.client(t, "client2"), d.addr)
	out, code := d.cli(t, append([]string{"conns"}, d.adminArgs("admin")...)...)
	if code != 0 {
		t.Fatalf("conns: exit %d:\n%s", code, out)
	}
	id := ""
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 5 && f[4] == clientURI {
			id = f[0]
		}
	}
	if id == "" {
		t.Fatalf("conns lists no conn of %s:\n%s", clientURI, out)
	}
	out, code = d.cli(t, append([]string{"conns", "--close", id}, d.adminArgs("admin")...)...)
	if code != 0 || !strings.Contains(out, "closed conn "+id) {
		t.Fatalf("conns --close %s: exit %d:\n%s", id, code, out)
	}
	if !streamEnds(first, 10*time.Second) {
		t.Fatal("the closed conn's stream still running 10s later")
	}
	if streamEnds(second, 300*time.Millisecond) {
		t.Fatal("another client's stream ended too")
	}
	if out, code := d.cli(t, append([]string{"conns", "--close", id}, d.adminArgs("admin")...)...); code == 0 || !strings.Contains(out, "no live conn") {
		t.Fatalf("closing a closed conn again: exit %d:\n%s", code, out)
	}
	resp, err := d.client(t, "client").Get("https://" + local(d.addr) + "/")
	if err != nil {
		t.Fatalf("the client of a closed (not revoked) conn could not connect again: %v", err)
	}
	resp.Body.Close()
	if !strings.Contains(d.log.String(), "reason=manual") {
		t.Errorf("no eviction log line with reason manual:\n%s", d.log)
	}
}
