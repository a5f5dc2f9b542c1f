package binding_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/binding"
	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// twoAudiences is guardian's listener with a public audience (no client certificate) and
// an mTLS one on one port, behind SNIHostGuard.
type twoAudiences struct {
	ca      *pkitest.CA
	addr    string
	metrics *prometheus.Registry
}

func startTwoAudiences(t *testing.T) *twoAudiences {
	t.Helper()
	ca := pkitest.NewCA(t)
	server := ca.MustIssue(t, pkitest.Opts{CommonName: "server", DNS: []string{"public.test", "api.test"}})
	set, _ := revoke.NewSet(revoke.SetOptions{})
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := listener.New(inner, listener.Config{Set: set, Audiences: []listener.Audience{
		{Name: "public", SNI: []string{"public.test"}, Certificates: []tls.Certificate{server.TLS()}, ClientAuth: tls.NoClientCert},
		{Name: "api", SNI: []string{"api.test"}, Certificates: []tls.Certificate{server.TLS()}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool()},
	}})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, _ := binding.NewMetrics(reg)
	h := binding.SNIHostGuard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info, _ := listener.FromContext(r.Context())
		fmt.Fprintf(w, "audience=%s host=%s proto=%d", info.Audience(), r.Host, r.ProtoMajor)
	}), m, nil)
	srv := &http.Server{Handler: h, ConnContext: l.ConnContext}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return &twoAudiences{ca: ca, addr: inner.Addr().String(), metrics: reg}
}

// client dials every request to the listener with SNI sni, whatever the URL's host: what a
// client does that handshakes for one name and then addresses another, or that coalesces
// HTTP/2 requests for several names onto one conn.
func (e *twoAudiences) client(t *testing.T, sni string, leaf *pkitest.Leaf, h2 bool) *http.Client {
	cfg := &tls.Config{RootCAs: e.ca.Pool(), ServerName: sni, NextProtos: []string{"http/1.1"}}
	if h2 {
		cfg.NextProtos = []string{"h2"}
	}
	if leaf != nil {
		cfg.Certificates = []tls.Certificate{leaf.TLS()}
	}
	tr := &http.Transport{ForceAttemptHTTP2: h2, DialTLSContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&tls.Dialer{Config: cfg}).DialContext(ctx, network, e.addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The two attacks SNIHostGuard stops: handshaking with the audience that asks for no
// certificate and sending Host: of the mTLS audience (HTTP/1.1), and the same over HTTP/2,
// as connection coalescing does. Matching requests pass, whatever the port and case.
func TestSNIHostGuard(t *testing.T) {
	e := startTwoAudiences(t)
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			anon := e.client(t, "public.test", nil, h2)
			if code, body := get(t, anon, "https://public.test/"); code != 200 || !strings.Contains(body, "audience=public") {
				t.Fatalf("public: %d %q", code, body)
			}
			code, body := get(t, anon, "https://api.test/")
			if code != http.StatusMisdirectedRequest {
				t.Fatalf("a conn to public.test addressing api.test: %d %q; want 421", code, body)
			}
			leaf := e.ca.MustIssue(t, pkitest.Opts{CommonName: "svc"})
			mtls := e.client(t, "api.test", leaf, h2)
			for _, u := range []string{"https://api.test/", "https://API.test:8443/"} {
				if code, body := get(t, mtls, u); code != 200 || !strings.Contains(body, "audience=api") {
					t.Fatalf("%s on its own conn: %d %q", u, code, body)
				}
			}
			want := map[bool]string{false: "proto=1", true: "proto=2"}[h2]
			if _, body := get(t, mtls, "https://api.test/"); !strings.Contains(body, want) {
				t.Errorf("served %q; want %s", body, want)
			}
		})
	}
	if v := metrictest.Value(t, e.metrics, "guardian_binding_refused_total", "check", "sni_host", "reason", "mismatch"); v != 2 {
		t.Errorf("guardian_binding_refused_total{sni_host,mismatch} = %v; want 2", v)
	}
}

// tlsServer is a crypto/tls server on loopback that asks for, but does not require, a
// client certificate from ca.
func tlsServer(t *testing.T, ca *pkitest.CA, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	leaf := ca.MustIssue(t, pkitest.Opts{CommonName: "server", DNS: []string{"app.test"}})
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf.TLS()}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: ca.Pool()}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func clientFor(t *testing.T, ca *pkitest.CA, srv *httptest.Server, leaf *pkitest.Leaf) *http.Client {
	cfg := &tls.Config{RootCAs: ca.Pool(), ServerName: "app.test"}
	if leaf != nil {
		cfg.Certificates = []tls.Certificate{leaf.TLS()}
	}
	tr := &http.Transport{TLSClientConfig: cfg, DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, srv.Listener.Addr().String())
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// A client's own X-Forwarded-Client-Cert never reaches the upstream; guardian's does, in
// Envoy's form, for conns with a certificate only.
func TestClientCertHeader(t *testing.T) {
	ca := pkitest.NewCA(t)
	srv := tlsServer(t, ca, binding.ClientCertHeader(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d|%s", len(r.Header.Values("X-Forwarded-Client-Cert")), r.Header.Get("X-Forwarded-Client-Cert"))
	})))
	leaf := ca.MustIssue(t, pkitest.Opts{CommonName: `svc "one"`, URIs: []string{"spiffe://prod/svc"}, DNS: []string{"svc.internal"}})
	for _, c := range []struct {
		name string
		leaf *pkitest.Leaf
		want string
	}{
		{"with a certificate", leaf, fmt.Sprintf(`1|Hash=%x;Subject="CN=svc \\\"one\\\",O=guardian test";URI=spiffe://prod/svc;DNS=svc.internal`, sha(leaf.Cert))},
		{"without", nil, "0|"},
	} {
		req, _ := http.NewRequest("GET", "https://app.test/", nil)
		req.Header.Add("X-Forwarded-Client-Cert", "Hash=forged;URI=spiffe://prod/admin")
		req.Header.Add("X-Forwarded-Client-Cert", "By=me")
		resp, err := clientFor(t, ca, srv, c.leaf).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != c.want {
			t.Errorf("%s: upstream saw %q; want %q", c.name, b, c.want)
		}
	}
}

func sha(c *x509.Certificate) [32]byte { return sha256Sum(c.Raw) }
