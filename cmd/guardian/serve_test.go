package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/guardian-mtls/guardian/daemon"
	"github.com/guardian-mtls/guardian/internal/redistest"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

type runningServe struct {
	dir, addr, admin, file string
	node                   *daemon.Node
	log                    *syncBuffer // what the node logged
	stop                   func()
}

// startServe writes cfg (with PKI in dir) and starts a daemon.Node on it, as guardian serve
// does, reading its addresses from the Node.
func startServe(t *testing.T, dir, cfg string) *runningServe {
	t.Helper()
	file := filepath.Join(dir, fmt.Sprintf("guardian-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := daemon.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	s := &runningServe{dir: dir, file: file, log: &syncBuffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	n, err := daemon.New(ctx, c, daemon.Options{Logger: slog.New(slog.NewTextHandler(s.log, nil))})
	if err != nil {
		cancel()
		t.Fatalf("daemon.New: %v", err)
	}
	s.node, s.addr = n, n.Addr().String()
	if a := n.AdminAddr(); a != nil {
		s.admin = a.String()
	}
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	var once bool
	s.stop = func() {
		if once {
			return
		}
		once = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v", err)
		}
	}
	t.Cleanup(s.stop)
	return s
}

// readyz asks the node's admin API whether it is ready: the status and the body, or 0 and
// the error.
func (s *runningServe) readyz(t *testing.T) (int, string) {
	resp, err := s.demoView().client(t, "admin").Get("https://" + s.admin + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (s *runningServe) demoView() *runningDemo {
	return &runningDemo{dir: s.dir, addr: s.addr, admin: s.admin}
}

const serveConfig = `
listen: "127.0.0.1:0"
handshake_timeout: 5s
admin: { listen: "127.0.0.1:0", cert: server.pem, key: server.key, client_ca: [ca.pem], allow: ["uri:spiffe://guardian.demo/admin"] }
revocation:
  %s
  max_staleness: 5s
audiences:
  - name: api
    sni: [localhost]
    cert: server.pem
    key: server.key
    client_auth: require
    client_ca: [ca.pem]
    on_stale: closed
%s`

// With the embedded store, a revocation closes the live conn and is still in force after
// the daemon restarts.
func TestServeEmbeddedSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(serveConfig, "store: embedded\n  embedded: { path: state.db }", "")
	s := startServe(t, dir, cfg)
	d := s.demoView()
	stream := openStream(t, d.client(t, "client"), s.addr)
	other := openStream(t, d.client(t, "client2"), s.addr)
	out, code := d.cli(t, append([]string{"revoke"}, append(d.adminArgs("admin"), "--cert", filepath.Join(dir, "client.pem"))...)...)
	if code != 0 {
		t.Fatalf("revoke: %s", out)
	}
	if !streamEnds(stream, 10*time.Second) {
		t.Fatal("revoked client's stream still flowing")
	}
	if streamEnds(other, time.Second) {
		t.Fatal("bystander's stream ended")
	}
	s.stop()

	s2 := startServe(t, dir, cfg)
	d2 := s2.demoView()
	if _, err := d2.client(t, "client").Get("https://" + local(s2.addr) + "/"); err == nil {
		t.Fatal("revoked client served after a restart: the embedded store forgot")
	}
	resp, err := d2.client(t, "client2").Get("https://" + local(s2.addr) + "/")
	if err != nil {
		t.Fatalf("client2 refused after restart: %v", err)
	}
	resp.Body.Close()
	if _, err := os.Stat(filepath.Join(dir, "state.db")); err != nil {
		t.Fatalf("embedded store path not relative to the config file: %v", err)
	}
}

// Two daemons on one Redis: a revocation through one node's admin API closes the client's
// conns on both, including a request streaming through an upstream proxy.
func TestServeRedisFleetAndUpstream(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	upstreamDone := make(chan error, 4)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if xfcc := r.Header.Values("X-Forwarded-Client-Cert"); len(xfcc) != 1 || strings.Contains(xfcc[0], "forged") || !strings.Contains(xfcc[0], "URI=spiffe://guardian.demo/") {
			http.Error(w, fmt.Sprintf("X-Forwarded-Client-Cert %q is not guardian's alone", xfcc), 500)
			return
		}
		for i := 0; ; i++ {
			if _, err := fmt.Fprintf(w, "still connected %d\n", i); err != nil {
				break
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-time.After(20 * time.Millisecond):
				continue
			}
			break
		}
		upstreamDone <- r.Context().Err()
	}))
	// A cleanup, not a defer: Close waits for the bystander's proxied request, which ends
	// only when the nodes (registered later, so stopped first) are stopped.
	t.Cleanup(up.Close)
	store := fmt.Sprintf("store: redis\n  redis: { url: %q, prefix: testfleet }", srv.URL())
	plain := startServe(t, dir, fmt.Sprintf(serveConfig, store, ""))
	proxied := startServe(t, dir, strings.Replace(fmt.Sprintf(serveConfig, store, ""), "on_stale: closed", "on_stale: closed\n    upstream: "+up.URL, 1))

	d1, d2 := plain.demoView(), proxied.demoView()
	s1 := openStream(t, d1.client(t, "client"), plain.addr)
	req, _ := http.NewRequest("GET", "https://"+local(proxied.addr)+"/stream", nil)
	req.Header.Set("X-Forwarded-Client-Cert", "Hash=forged")
	resp, err := d2.client(t, "client").Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("proxied stream: %s", resp.Status)
	}
	s2 := make(chan string, 100)
	go func() {
		defer close(s2)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			s2 <- sc.Text()
		}
	}()
	if l := <-s2; !strings.HasPrefix(l, "still connected") {
		t.Fatalf("proxied stream's first line %q", l)
	}
	bystander := openStream(t, d2.client(t, "client2"), proxied.addr)

	// Both nodes heartbeat before the revocation, so --wait knows of both.
	rs := redisfeed.NewStore(redis.NewClient(&redis.Options{Addr: srv.Addr()}), "testfleet", 0)
	eventuallyT(t, "two nodes heartbeating", func() bool { n, _ := rs.LiveNodes(context.Background()); return len(n) == 2 })
	out, code := d1.cli(t, append([]string{"revoke"}, append(d1.adminArgs("admin"), "--uri", clientURI, "--reason", "keyCompromise", "--wait", "10s")...)...)
	if code != 0 || !strings.Contains(out, "all 2 live node(s) applied") {
		t.Fatalf("revoke --wait: exit %d:\n%s", code, out)
	}
	// Each node reports what it matched: one conn of client.pem on each.
	rows := regexp.MustCompile(`(?m)^\S+:\d+\s+(\d+)\s+(\S+)\s+\d+$`).FindAllStringSubmatch(out, -1)
	if len(rows) != 2 {
		t.Fatalf("revoke --wait printed %d node rows; want 2:\n%s", len(rows), out)
	}
	for _, r := range rows {
		if r[2] != "1" {
			t.Errorf("a node reports %s matched conns; want 1:\n%s", r[2], out)
		}
	}
	t.Logf("revoke --wait:\n%s", out)
	if !streamEnds(s1, 10*time.Second) {
		t.Fatal("node 1: revoked stream still flowing")
	}
	if !streamEnds(s2, 10*time.Second) {
		t.Fatal("node 2: revoked proxied stream still flowing")
	}
	select {
	case err := <-upstreamDone:
		if err == nil {
			t.Fatal("upstream request ended without its context cancelled")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream request outlived the eviction")
	}
	if streamEnds(bystander, time.Second) {
		t.Fatal("bystander's proxied stream ended")
	}
	// readyz is ready with a live feed.
	resp2, err := d1.client(t, "admin").Get("https://" + plain.admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != 200 {
		t.Fatalf("/readyz = %s with Redis up", resp2.Status)
	}
	// Straight to Redis: revoke and list with --redis; a node that stopped applying is named.
	out, code = d1.cli(t, "revoke", "--redis", srv.URL(), "--prefix", "testfleet", "--dns", "other.example", "--wait", "10s")
	if code != 0 || !strings.Contains(out, "all 2 live node(s) applied") {
		t.Fatalf("revoke --redis --wait: exit %d:\n%s", code, out)
	}
	out, code = d1.cli(t, "list", "--redis", srv.URL(), "--prefix", "testfleet")
	if code != 0 || !strings.Contains(out, "dns:other.example") || !strings.Contains(out, "uri:"+clientURI) {
		t.Fatalf("list --redis: exit %d:\n%s", code, out)
	}
	// The same through the node's own config file, and the fleet's conns from Redis.
	out, code = d1.cli(t, "list", "--config", plain.file)
	if code != 0 || !strings.Contains(out, "dns:other.example") {
		t.Fatalf("list --config: exit %d:\n%s", code, out)
	}
	out, code = d1.cli(t, "conns", "--config", plain.file)
	if code != 0 || strings.Count(out, "testfleet") != 0 || len(regexp.MustCompile(`(?m)^\S+:\d+\s+\d+\s+\d+`).FindAllString(out, -1)) != 2 {
		t.Fatalf("conns --config: exit %d; want two node rows:\n%s", code, out)
	}
	if err := rs.Heartbeat(context.Background(), redisfeed.NodeStatus{ID: "ghost:1", Applied: 1, At: time.Now()}, time.Minute); err != nil {
		t.Fatal(err)
	}
	out, code = d1.cli(t, "revoke", "--redis", srv.URL(), "--prefix", "testfleet", "--dns", "third.example", "--wait", "1s")
	if code == 0 || !strings.Contains(out, "did not confirm") || !strings.Contains(out, "ghost:1") {
		t.Fatalf("revoke --wait with a silent node: exit %d:\n%s", code, out)
	}
	srv.Kill()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp3, err := d1.client(t, "admin").Get("https://" + plain.admin + "/readyz")
		if err == nil {
			resp3.Body.Close()
			if resp3.StatusCode == http.StatusServiceUnavailable {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz still ready 20s after Redis died (max_staleness 5s)")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestConfigErrorsNameFileAndField(t *testing.T) {
	dir := t.TempDir()
	good := `
audiences:
  - { name: a, sni: [x], cert: s.pem, key: s.key, client_ca: [ca.pem] }
`
	tests := []struct{ name, yaml, mention string }{
		{"unknown key", "listne: x\n" + good, "listne"},
		{"bad duration", "handshake_timeout: soon\n" + good, "bad duration"},
		{"bad store", "revocation: { store: etcd }\n" + good, "revocation.store"},
		{"redis without address", "revocation: { store: redis }\n" + good, "revocation.redis"},
		{"redis bad url", "revocation: { store: redis, redis: { url: 'http://x' } }\n" + good, "revocation.redis.url"},
		{"no audiences", "listen: ':1'\n", "audiences"},
		{"client auth without CA", "audiences:\n  - { name: a, sni: [x], cert: s.pem, key: s.key }\n", "audiences[0].client_ca"},
		{"bad on_stale", "audiences:\n  - { name: a, sni: [x], cert: s.pem, key: s.key, client_ca: [c], on_stale: maybe }\n", "audiences[0].on_stale"},
		{"duplicate audience", "audiences:\n  - { name: a, sni: [x], cert: s.pem, key: s.key, client_ca: [c] }\n  - { name: a, sni: [y], cert: s.pem, key: s.key, client_ca: [c] }\n", "audiences[1].name"},
		{"bad upstream", "audiences:\n  - { name: a, sni: [x], cert: s.pem, key: s.key, client_ca: [c], upstream: 'ftp://x' }\n", "audiences[0].upstream"},
		{"admin without CA", "admin: { listen: ':9', cert: a, key: b }\n" + good, "admin"},
		{"bad allow key", "admin: { listen: ':9', cert: a, key: b, client_ca: [c], allow: ['sha256:zz'] }\n" + good, "admin.allow[0]"},
		{"crl file and url", "revocation: { crl: [ { file: x.crl, url: 'http://ca/x.crl' } ] }\n" + good, "revocation.crl[0]"},
		{"crl neither", "revocation: { crl: [ { every: 1s } ] }\n" + good, "revocation.crl[0]"},
		{"crl bad url", "revocation: { crl: [ { file: a }, { url: 'ftp://ca/x.crl' } ] }\n" + good, "revocation.crl[1].url"},
		{"crl every on a url", "revocation: { crl: [ { url: 'http://ca/x.crl', every: 1s } ] }\n" + good, "revocation.crl[0].every"},
		{"crl refresh on a file", "revocation: { crl: [ { file: x.crl, refresh: 1m } ] }\n" + good, "revocation.crl[0]"},
		{"crl bad refresh", "revocation: { crl: [ { url: 'http://ca/x.crl', refresh: often } ] }\n" + good, "bad duration"},
		{"session binding without cookies", "audiences: [ { name: a, sni: [x], cert: s.pem, key: s.key, client_ca: [ca.pem], session_binding: { key: k } } ]\n", "audiences[0].session_binding.cookies"},
		{"session binding without key", "audiences: [ { name: a, sni: [x], cert: s.pem, key: s.key, client_ca: [ca.pem], session_binding: { cookies: [sid] } } ]\n", "audiences[0].session_binding.key"},
		{"token binding without algorithms", "audiences: [ { name: a, sni: [x], cert: s.pem, key: s.key, client_ca: [ca.pem], token_binding: { issuer: i, audience: a, keys: [k] } } ]\n", "algorithms"},
		{"token binding alg none", "audiences: [ { name: a, sni: [x], cert: s.pem, key: s.key, client_ca: [ca.pem], token_binding: { issuer: i, audience: a, keys: [k], algorithms: [none] } } ]\n", "algorithms[0]"},
		{"token binding without client certs", "audiences: [ { name: a, sni: [x], cert: s.pem, key: s.key, client_auth: none, token_binding: { issuer: i, audience: a, keys: [k], algorithms: [ES256] } } ]\n", "client_auth is none"},
		{"bad ocsp mode", "revocation: { ocsp: { mode: strict } }\n" + good, "revocation.ocsp.mode"},
		{"bad audience ocsp mode", "audiences: [ { name: a, sni: [x], cert: s.pem, key: s.key, client_ca: [ca.pem], ocsp: { mode: maybe } } ]\n", "audiences[0].ocsp.mode"},
		{"ocsp without client certs", "audiences: [ { name: a, sni: [x], cert: s.pem, key: s.key, client_auth: none, ocsp: { mode: hard } } ]\n", "audiences[0].ocsp.mode"},
		{"bad ocsp responder", "revocation: { ocsp: { responder: 'ldap://x' } }\n" + good, "revocation.ocsp.responder"},
		{"session binding on client_auth optional", "audiences: [ { name: a, sni: [x], cert: s.pem, key: s.key, client_auth: optional, client_ca: [ca.pem], session_binding: { cookies: [sid], key: k } } ]\n", "audiences[0].session_binding"},
		{"session binding on client_auth none", "audiences: [ { name: a, sni: [x], cert: s.pem, key: s.key, client_auth: none, session_binding: { cookies: [sid], key: k } } ]\n", "client_auth is none"},
		{"bad underscore_headers", "audiences: [ { name: a, sni: [x], cert: s.pem, key: s.key, client_ca: [ca.pem], underscore_headers: keep } ]\n", "audiences[0].underscore_headers"},
		{"negative max_conns_per_client", "audiences: [ { name: a, sni: [x], cert: s.pem, key: s.key, client_ca: [ca.pem], max_conns_per_client: -1 } ]\n", "audiences[0].max_conns_per_client"},
		{"negative max_conns", "max_conns: -1\n" + good, "max_conns"},
		{"crl without a trusted CA", "revocation: { crl: [ { file: x.crl } ] }\naudiences: [ { name: a, sni: [x], cert: s.pem, key: s.key, client_auth: none } ]\n", "crl_issuers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(dir, "g.yaml")
			_, err := daemon.Parse(file, []byte(tt.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("error %q does not name the file and %q", err, tt.mention)
			}
		})
	}
	// Missing files fail at start-up, naming the field; nothing is left listening.
	c, err := daemon.Parse(filepath.Join(dir, "g.yaml"), []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	_, err = daemon.New(context.Background(), c, daemon.Options{})
	if err == nil || !strings.Contains(err.Error(), "audiences[0].cert") {
		t.Fatalf("serve with missing cert files: %v", err)
	}
}

func eventuallyT(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 15s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Redis restarted empty under a node: /readyz reports the regression, the node keeps the
// revocation in force, and `guardian reseed` (checked first, then --yes) restores Redis.
func TestServeReseedAfterEmptyRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, dir, fmt.Sprintf(serveConfig, fmt.Sprintf("store: redis\n  redis: { url: %q }", srv.URL()), ""))
	d := s.demoView()
	out, code := d.cli(t, append([]string{"revoke"}, append(d.adminArgs("admin"), "--cert", filepath.Join(dir, "client.pem"), "--wait", "5s")...)...)
	if code != 0 {
		t.Fatalf("revoke: %s", out)
	}
	srv.Restart() // no persistence: comes back empty
	readyz := func() (int, string) { return s.readyz(t) }
	eventuallyT(t, "/readyz reports the regression", func() bool {
		code, body := readyz()
		return code == http.StatusServiceUnavailable && strings.Contains(body, "regressed")
	})
	if _, err := d.client(t, "client").Get("https://" + local(s.addr) + "/"); err == nil {
		t.Fatal("the revoked client was served after Redis lost the revocation")
	}
	out, code = d.cli(t, append([]string{"reseed"}, d.adminArgs("admin")...)...)
	if code != 0 || !strings.Contains(out, "1 entries that Redis lacks") || !strings.Contains(out, "--yes") {
		t.Fatalf("reseed (dry run): exit %d:\n%s", code, out)
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	if n, _ := rdb.HLen(context.Background(), "{guardian}:revoked").Result(); n != 0 {
		t.Fatalf("the dry run wrote %d entries", n)
	}
	out, code = d.cli(t, append([]string{"reseed", "--yes"}, d.adminArgs("admin")...)...)
	if code != 0 || !strings.Contains(out, "wrote 1 entries") {
		t.Fatalf("reseed --yes: exit %d:\n%s", code, out)
	}
	if n, _ := rdb.HLen(context.Background(), "{guardian}:revoked").Result(); n != 1 {
		t.Fatalf("Redis holds %d entries after the reseed; want 1", n)
	}
	eventuallyT(t, "/readyz ready again", func() bool { code, _ := readyz(); return code == http.StatusOK })
}

// The example configuration in the repository stays valid.
// Configurations that would open an audience or the admin API are refused at start-up,
// naming the field; risky ones that can be meant start with one warning each, naming it.
func TestConfigVetRefusesAndWarns(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if err := writePKI(other); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "other-ca.pem"), must(os.ReadFile(filepath.Join(other, "ca.pem"))), 0o644)
	os.WriteFile(filepath.Join(dir, "hmac.key"), []byte("0123456789abcdef0123456789abcdef"), 0o600)
	os.WriteFile(filepath.Join(dir, "inter.pem"), loadTestCA(t, dir).MustIntermediate(t, "service intermediate").CertPEM(), 0o644)
	aud := "audiences:\n  - { name: api, sni: [localhost], cert: server.pem, key: server.key, client_ca: [ca.pem] }\n"
	for _, c := range []struct {
		name, yaml string
		refused    string   // the field named in the refusal, or ""
		warns      []string // fields named in warnings
	}{
		{"admin shares the service CA, allow empty",
			"admin: { listen: '127.0.0.1:0', cert: server.pem, key: server.key, client_ca: [ca.pem] }\n" + aud, "admin.allow", nil},
		{"admin's CA issued an audience's intermediate, allow empty",
			"admin: { listen: '127.0.0.1:0', cert: server.pem, key: server.key, client_ca: [ca.pem] }\n" +
				"audiences:\n  - { name: api, sni: [localhost], cert: server.pem, key: server.key, client_ca: [inter.pem] }\n", "admin.allow", nil},
		{"admin shares the service CA, allow set",
			"admin: { listen: '127.0.0.1:0', cert: server.pem, key: server.key, client_ca: [ca.pem], allow: ['uri:spiffe://guardian.demo/admin'] }\n" + aud, "", nil},
		{"admin with its own CA, allow empty",
			"admin: { listen: '127.0.0.1:0', cert: server.pem, key: server.key, client_ca: [other-ca.pem] }\n" + aud, "", []string{"admin.allow"}},
		{"optional with an upstream",
			"audiences:\n  - { name: api, sni: [localhost], cert: server.pem, key: server.key, client_auth: optional, client_ca: [ca.pem], upstream: 'http://127.0.0.1:1' }\n", "", []string{"audiences[0].client_auth"}},
		{"on_stale open past an hour",
			"revocation: { max_staleness: 2h }\n" + aud, "", []string{"audiences[0].on_stale"}},
		{"on_stale closed past an hour",
			"revocation: { max_staleness: 2h }\naudiences:\n  - { name: api, sni: [localhost], cert: server.pem, key: server.key, client_ca: [ca.pem], on_stale: closed }\n", "", nil},
		{"a public audience on the upstream of one that binds sessions",
			"audiences:\n  - { name: app, sni: [localhost], cert: server.pem, key: server.key, client_ca: [ca.pem], upstream: 'http://127.0.0.1:9', session_binding: { cookies: [sid], keys: [hmac.key] } }\n" +
				"  - { name: pub, sni: [public.localhost], cert: server.pem, key: server.key, client_auth: none, upstream: 'http://127.0.0.1:9/other' }\n", "",
			[]string{"audiences[1].upstream"}},
		{"a token key that verifies no allowed algorithm",
			"audiences:\n  - { name: api, sni: [localhost], cert: server.pem, key: server.key, client_ca: [ca.pem], token_binding: { issuer: i, audience: a, keys: [hmac.key, server.pem], algorithms: [ES256] } }\n", "",
			[]string{"audiences[0].token_binding.keys[0]"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			file := filepath.Join(dir, "vet.yaml")
			cfg, err := daemon.Parse(file, []byte(c.yaml))
			if err != nil {
				t.Fatal(err)
			}
			warnings, err := cfg.Vet()
			if c.refused != "" {
				if err == nil || !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), c.refused) {
					t.Fatalf("vet: %v; want a refusal naming %s", err, c.refused)
				}
				// serve refuses it too, before listening.
				if _, err := daemon.New(context.Background(), cfg, daemon.Options{}); err == nil || !strings.Contains(err.Error(), c.refused) {
					t.Fatalf("serve: %v; want the refusal", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(warnings) != len(c.warns) {
				t.Fatalf("warnings %q; want %d, naming %v", warnings, len(c.warns), c.warns)
			}
			for i, w := range c.warns {
				if !strings.Contains(warnings[i], w) {
					t.Errorf("warning %q does not name %s", warnings[i], w)
				}
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// A foreign entry in the change stream (issue 13, item 5): revocations through the node
// keep working and closing conns; a feed that cannot follow a Redis that answers fails
// /readyz with the reason, and is ready again once the cause is gone.
func TestServeForeignStreamEntryAndStuckFeed(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, dir, fmt.Sprintf(serveConfig, fmt.Sprintf("store: redis\n  redis: { url: %q }", srv.URL()), ""))
	d := s.demoView()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: "{guardian}:log", Values: []string{"op", "revoke", "key", "uri:spiffe://guardian.demo/client2"}}).Err(); err != nil {
		t.Fatal(err)
	}
	lines := openStream(t, d.client(t, "client"), s.addr)
	out, code := d.cli(t, append([]string{"revoke"}, append(d.adminArgs("admin"), "--cert", filepath.Join(dir, "client.pem"), "--wait", "5s")...)...)
	if code != 0 {
		t.Fatalf("revoke after a foreign stream entry: %s", out)
	}
	if !streamEnds(lines, 10*time.Second) {
		t.Fatal("the revoked client's stream went on")
	}
	if _, err := d.client(t, "client2").Get("https://" + local(s.addr) + "/"); err != nil {
		t.Fatalf("client2, named by the foreign entry only: %v", err)
	}
	readyz := func() (int, string) { return s.readyz(t) }
	v, err := rdb.Get(ctx, "{guardian}:version").Result()
	if err != nil {
		t.Fatal(err)
	}
	rdb.Set(ctx, "{guardian}:version", "banana", 0)
	rdb.XAdd(ctx, &redis.XAddArgs{Stream: "{guardian}:log", ID: "*", Values: []string{"v", "999", "op", "revoke", "key", "dns:x"}})
	eventuallyT(t, "/readyz reports the stuck feed", func() bool {
		code, body := readyz()
		return code == http.StatusServiceUnavailable && strings.Contains(body, "revocation feed stuck")
	})
	rdb.Set(ctx, "{guardian}:version", v, 0)
	eventuallyT(t, "/readyz ready again", func() bool { code, _ := readyz(); return code == http.StatusOK })
}
