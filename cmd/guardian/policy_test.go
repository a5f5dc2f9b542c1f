package main

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/need"
)

const policyConfig = `
listen: "127.0.0.1:0"
admin: { listen: "127.0.0.1:0", cert: server.pem, key: server.key, client_ca: [ca.pem], allow: ["uri:spiffe://guardian.demo/admin"] }
revocation: { store: memory }
audiences:
  - name: api
    sni: [localhost]
    cert: server.pem
    key: server.key
    client_ca: [ca.pem]
    allow: [%s]
    routes: [ { path: /admin/, allow: ["uri:spiffe://guardian.demo/admin"] } ]
`

// An audience's allow list refuses other clients of its CA in the handshake; a route narrows
// a path to its own list, whatever spelling of the path is sent; a reload that narrows the
// list closes the live conns it no longer admits; guardian conns -v says what admitted each.
func TestServeAllowAndRoutes(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	both := `"uri:spiffe://guardian.demo/client", "uri:spiffe://guardian.demo/admin"`
	s := startServe(t, dir, strings.Replace(policyConfig, "%s", both, 1))
	d := s.demoView()
	get := func(name, path string) (int, error) {
		resp, err := d.client(t, name).Get("https://" + local(s.addr) + path)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := get("client", "/"); err != nil || code != 200 {
		t.Fatalf("client on /: %d %v; want 200", code, err)
	}
	if _, err := get("client2", "/"); err == nil {
		t.Fatal("client2, outside the allow list, was served")
	}
	for _, p := range []string{"/admin/", "/admin/x", "/ADMIN/x", "//admin/x", "/x/../admin/x", "/%61dmin/x", "/admin;a=b/x"} {
		if code, err := get("client", p); err != nil || code != 403 {
			t.Errorf("client on %s: %d %v; want 403 (the route admits admin only)", p, code, err)
		}
	}
	if code, err := get("admin", "/admin/x"); err != nil || code != 200 {
		t.Fatalf("admin on /admin/x: %d %v; want 200", code, err)
	}
	if n := metricOf(t, s, `guardian_route_refused_total{audience="api",route="/admin/"}`); n != 7 {
		t.Errorf("route refusals counted: %v; want 7", n)
	}
	// The real curl, sending the path as typed (--path-as-is), and over HTTP/2.
	need.Tool(t, "curl")
	_, port, _ := net.SplitHostPort(s.addr)
	for _, p := range []string{"/admin/", "/x/../admin/", "/%2561dmin/", "/admin/./x"} {
		for _, h := range []string{"--http1.1", "--http2"} {
			out, _ := exec.Command("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--path-as-is", h,
				"--cacert", filepath.Join(dir, "ca.pem"), "--cert", filepath.Join(dir, "client.pem"), "--key", filepath.Join(dir, "client.key"),
				"https://localhost:"+port+p).Output()
			if string(out) != "403" {
				t.Errorf("curl %s %s: %s; want 403", h, p, out)
			}
		}
	}
	if n := metricOf(t, s, `guardian_handshake_failures_total{listener="data",reason="not_allowed"}`); n < 1 {
		t.Errorf("not_allowed handshakes counted: %v; want at least 1", n)
	}
	live := openStream(t, d.client(t, "client"), s.addr)
	out, code := d.cli(t, append([]string{"conns", "-v"}, d.adminArgs("admin")...)...)
	if code != 0 || !strings.Contains(out, "allowed by uri:spiffe://guardian.demo/client") {
		t.Fatalf("conns -v: exit %d:\n%s\nwant the pattern that admitted the client", code, out)
	}
	// Narrowed to admin alone: the client's live stream ends.
	if err := os.WriteFile(s.file, []byte(strings.Replace(policyConfig, "%s", `"uri:spiffe://guardian.demo/admin"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.node.Reload(); err != nil {
		t.Fatal(err)
	}
	if !streamEnds(live, 10*time.Second) {
		t.Fatal("the client's stream still flowing 10s after a reload took it out of the allow list")
	}
}
