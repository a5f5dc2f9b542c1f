package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/guardian-mtls/guardian/internal/need"
	"github.com/guardian-mtls/guardian/internal/pemfile"
)

// freeAddr is a free loopback port on ip.
func freeAddr(t *testing.T, ip string) string {
	t.Helper()
	l, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Behind a real HAProxy in mode tcp with send-proxy-v2: a client connecting from 127.0.0.77
// is that address to guardian (its conns list) and to the upstream (X-Forwarded-For); a
// forged PROXY header from a peer not trusted to send one is refused, as is a trusted
// peer's conn without one; an untrusted client without a header is served as itself.
func TestServeBehindHAProxy(t *testing.T) {
	need.Tool(t, "haproxy")
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "xff=%s", r.Header.Get("X-Forwarded-For"))
	}))
	defer up.Close()
	guardianAddr := freeAddr(t, "127.0.0.1")
	cfg := fmt.Sprintf(`
listen: %q
proxy_protocol: { trusted: ["127.0.0.2"], timeout: 2s }
admin: { listen: "127.0.0.1:0", cert: server.pem, key: server.key, client_ca: [ca.pem], allow: ["uri:spiffe://guardian.demo/admin"] }
revocation: { store: memory }
audiences:
  - { name: api, sni: [localhost], cert: server.pem, key: server.key, client_ca: [ca.pem], upstream: %q }
`, guardianAddr, up.URL)
	s := startServe(t, dir, cfg)
	d := s.demoView()

	front := freeAddr(t, "127.0.0.1")
	conf := filepath.Join(dir, "haproxy.cfg")
	os.WriteFile(conf, []byte(fmt.Sprintf(`global
  log stderr format short local0
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend f
  bind %s
  default_backend g
backend g
  server guardian %s send-proxy-v2 source 127.0.0.2
`, front, guardianAddr)), 0o644)
	hap := exec.Command("haproxy", "-db", "-f", conf)
	hapLog := &syncBuffer{}
	hap.Stdout, hap.Stderr = hapLog, hapLog
	if err := hap.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hap.Process.Kill(); hap.Wait() })
	eventuallyT(t, "haproxy listening", func() bool {
		c, err := net.Dial("tcp", front)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	pool, err := pemfile.LoadPool(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	clientFrom := func(local, to string) *http.Client {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{cert}},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}).DialContext(ctx, network, to)
			}}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	get := func(c *http.Client) (string, error) {
		resp, err := c.Get("https://localhost/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), nil
	}

	viaLB := clientFrom("127.0.0.77", front)
	body, err := get(viaLB)
	if err != nil || body != "xff=127.0.0.77" {
		t.Fatalf("through HAProxy from 127.0.0.77: %q, %v; want the upstream to see xff=127.0.0.77\nhaproxy:\n%s", body, err, hapLog)
	}
	out, code := d.cli(t, append([]string{"conns"}, d.adminArgs("admin")...)...)
	if code != 0 || !strings.Contains(out, "127.0.0.77:") {
		t.Fatalf("guardian conns: exit %d:\n%s\nwant the client's address, 127.0.0.77", code, out)
	}

	// A peer not trusted to send a header, sending one that claims another client.
	raw, err := net.Dial("tcp", guardianAddr)
	if err != nil {
		t.Fatal(err)
	}
	src, _ := net.ResolveTCPAddr("tcp", "203.0.113.9:4242")
	dst, _ := net.ResolveTCPAddr("tcp", guardianAddr)
	hdr, _ := proxyproto.HeaderProxyFromAddrs(2, src, dst).Format()
	raw.Write(hdr)
	forged := tls.Client(raw, &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{cert}})
	forged.SetDeadline(time.Now().Add(10 * time.Second))
	if err := forged.Handshake(); err == nil {
		if _, err := forged.Read(make([]byte, 1)); err == nil {
			t.Fatal("a forged PROXY header from an untrusted peer was served")
		}
	}
	raw.Close()
	eventuallyT(t, "the forged header refused and counted", func() bool {
		return metricOf(t, s, `guardian_handshake_failures_total{listener="data",reason="proxy_header_untrusted"}`) == 1
	})
	// The trusted balancer's address, without a header: refused.
	if _, err := get(clientFrom("127.0.0.2", guardianAddr)); err == nil {
		t.Fatal("a conn from the trusted balancer's address without a PROXY header was served")
	}
	eventuallyT(t, "the missing header counted", func() bool {
		return metricOf(t, s, `guardian_handshake_failures_total{listener="data",reason="proxy_header_missing"}`) >= 1
	})
	// Anyone else, without a header, is served as itself.
	if body, err := get(clientFrom("127.0.0.1", guardianAddr)); err != nil || body != "xff=127.0.0.1" {
		t.Fatalf("a direct client: %q, %v; want xff=127.0.0.1", body, err)
	}
}
