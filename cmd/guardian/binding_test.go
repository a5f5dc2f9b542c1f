package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/guardian-mtls/guardian/internal/pemfile"
)

// sniClient is a client with certificate name (or none) whose conns carry SNI sni.
func (d *runningDemo) sniClient(t *testing.T, name, sni string) *http.Client {
	t.Helper()
	pool, err := pemfile.LoadPool(filepath.Join(d.dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: sni}
	if name != "" {
		cert, err := tls.LoadX509KeyPair(filepath.Join(d.dir, name+".pem"), filepath.Join(d.dir, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	tr := &http.Transport{TLSClientConfig: cfg, DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, d.addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func call(t *testing.T, c *http.Client, url string, hdr ...string) (int, string, *http.Response) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b), resp
}

// guardian serve with session binding in front of an upstream that sets its own session
// cookie, and token binding on a second audience of the same port.
func TestServeSessionAndTokenBinding(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" {
			http.SetCookie(w, &http.Cookie{Name: "sid", Value: "upstream-session-1", Path: "/"})
			return
		}
		c, _ := r.Cookie("sid")
		if c == nil {
			http.Error(w, "no session", 403)
			return
		}
		fmt.Fprintf(w, "sid=%s xfcc=%v", c.Value, strings.HasSuffix(r.Header.Get("X-Forwarded-Client-Cert"), ";URI=spiffe://guardian.demo/client"))
	}))
	defer up.Close()
	os.WriteFile(filepath.Join(dir, "session.key"), []byte("0123456789abcdef0123456789abcdef\n"), 0o600)
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&signer.PublicKey)
	os.WriteFile(filepath.Join(dir, "jwt.pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
	cfg := fmt.Sprintf(`
listen: "127.0.0.1:0"
revocation: { store: memory }
audiences:
  - name: app
    sni: [localhost]
    cert: server.pem
    key: server.key
    client_ca: [ca.pem]
    upstream: %q
    session_binding: { cookies: [sid], key: session.key }
  - name: api
    sni: [public.localhost]
    cert: server.pem
    key: server.key
    client_ca: [ca.pem]
    token_binding: { issuer: nexus, audience: api, keys: [jwt.pem], algorithms: [ES256] }
`, up.URL)
	s := startServe(t, dir, cfg)
	d := s.demoView()
	a, b := d.sniClient(t, "client", "localhost"), d.sniClient(t, "client2", "localhost")

	code, _, resp := call(t, a, "https://localhost/login")
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "sid" {
			cookie = c
		}
	}
	if code != 200 || cookie == nil || strings.Contains(cookie.Value, "upstream-session") || !cookie.HttpOnly || !cookie.Secure {
		t.Fatalf("login through guardian: %d, cookie %+v; want a bound, HttpOnly, Secure cookie", code, cookie)
	}
	if code, body, _ := call(t, a, "https://localhost/", "Cookie", "sid="+cookie.Value); code != 200 || body != "sid=upstream-session-1 xfcc=true" {
		t.Fatalf("client with its session: %d %q; want the upstream to see its own value and guardian's XFCC", code, body)
	}
	if code, body, _ := call(t, b, "https://localhost/", "Cookie", "sid="+cookie.Value); code != 401 || body != `{"message":"unauthorized"}`+"\n" {
		t.Fatalf("client2 replaying client's session: %d %q; want 401", code, body)
	}

	h := sha256.Sum256(mustCert(t, filepath.Join(dir, "client.pem")).Raw)
	tok, _ := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"iss": "nexus", "aud": "api", "exp": time.Now().Add(time.Hour).Unix(),
		"cnf": map[string]any{"x5t#S256": base64.RawURLEncoding.EncodeToString(h[:])}}).SignedString(signer)
	ta, tb := d.sniClient(t, "client", "public.localhost"), d.sniClient(t, "client2", "public.localhost")
	if code, body, _ := call(t, ta, "https://public.localhost/", "Authorization", "Bearer "+tok); code != 200 || !strings.Contains(body, "hello spiffe://guardian.demo/client") {
		t.Fatalf("bound token on its certificate: %d %q", code, body)
	}
	if code, _, _ := call(t, tb, "https://public.localhost/", "Authorization", "Bearer "+tok); code != 401 {
		t.Fatalf("client's token on client2's conn: %d; want 401", code)
	}
	if code, _, _ := call(t, ta, "https://localhost/", "Host", "public.localhost"); code != 421 {
		t.Fatalf("a conn to localhost asking for public.localhost: %d; want 421", code)
	}
}

func mustCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	certs, err := pemfile.LoadCerts(file)
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

// A WebSocket upgrade passes through the proxy, and revoking the client ends both the
// client's conn and guardian's conn to the upstream.
func TestServeWebSocketThroughUpstreamEndsOnRevocation(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	upstreamGone := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "want a websocket upgrade", 400)
			return
		}
		c, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		rw.Flush()
		for {
			line, err := rw.ReadString('\n')
			if err != nil {
				close(upstreamGone)
				return
			}
			rw.WriteString("echo: " + line)
			rw.Flush()
		}
	}))
	defer up.Close()
	s := startServe(t, dir, strings.Replace(fmt.Sprintf(serveConfig, "store: memory", ""), "on_stale: closed", "on_stale: closed\n    upstream: "+up.URL, 1))
	d := s.demoView()
	cert, _ := tls.LoadX509KeyPair(filepath.Join(dir, "client.pem"), filepath.Join(dir, "client.key"))
	pool, _ := pemfile.LoadPool(filepath.Join(dir, "ca.pem"))
	conn, err := tls.Dial("tcp", s.addr, &tls.Config{ServerName: "localhost", RootCAs: pool, Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade through guardian: %v %v", resp, err)
	}
	fmt.Fprintf(conn, "hello\n")
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := br.ReadString('\n'); err != nil || line != "echo: hello\n" {
		t.Fatalf("over the upgraded conn: %q %v", line, err)
	}
	if out, code := d.cli(t, append([]string{"revoke"}, append(d.adminArgs("admin"), "--cert", filepath.Join(dir, "client.pem"))...)...); code != 0 {
		t.Fatalf("revoke: %s", out)
	}
	if _, err := br.ReadString('\n'); err == nil {
		t.Fatal("the upgraded conn still delivers after the revocation")
	}
	select {
	case <-upstreamGone:
	case <-time.After(10 * time.Second):
		t.Fatal("guardian's conn to the upstream still open 10s after the revocation")
	}
}

// SIGTERM (the serve context ending): no new conns, a request in flight finishes, and a
// stream that would never end is cut at shutdown_timeout.
func TestServeGracefulShutdown(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	slowStarted, release := make(chan struct{}), make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(slowStarted)
			<-release
			io.WriteString(w, "done")
			return
		}
		for {
			if _, err := io.WriteString(w, "still connected\n"); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}))
	defer up.Close()
	cfg := strings.Replace(fmt.Sprintf(serveConfig, "store: memory", ""), "on_stale: closed", "on_stale: closed\n    upstream: "+up.URL, 1)
	s := startServe(t, dir, "shutdown_timeout: 1s\n"+cfg)
	d := s.demoView()
	stream := openStream(t, d.client(t, "client2"), s.addr)
	slow := make(chan string, 1)
	go func() {
		resp, err := d.client(t, "client").Get("https://" + local(s.addr) + "/slow")
		if err != nil {
			slow <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		slow <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}()
	<-slowStarted
	stopped := make(chan struct{})
	go func() { s.stop(); close(stopped) }()
	// Shutdown has begun once the port refuses new conns.
	eventuallyT(t, "the port refusing new conns", func() bool {
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	close(release)
	if got := <-slow; got != "200 done" {
		t.Fatalf("the request in flight at shutdown: %q; want it to finish", got)
	}
	select {
	case <-stopped:
	case <-time.After(15 * time.Second):
		t.Fatal("serve still running 15s after SIGTERM with shutdown_timeout 1s")
	}
	if !streamEnds(stream, 5*time.Second) {
		t.Fatal("the endless stream was not cut at the shutdown deadline")
	}
}
