package main

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// crl: [ { from_certificates: true } ] with certificates made by openssl ca that name a
// CRL distribution point served over HTTP: the first client the CRL lists is refused on first
// contact, another client's live conn closes when the next CRL lists it, and a certificate
// whose distribution point cannot be fetched is refused under crl_unavailable: closed.
func TestServeCRLFromDistributionPoints(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	dp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/inter.crl" {
			http.NotFound(w, r)
			return
		}
		b, err := os.ReadFile(filepath.Join(dir, "inter.crl"))
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		// An ETag of the content: Last-Modified has whole seconds, and the test publishes
		// two CRLs within one.
		etag := fmt.Sprintf(`"%x"`, sha256.Sum256(b))
		w.Header().Set("ETag", etag)
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Write(b)
	}))
	defer dp.Close()
	o := newOpensslIntermediate(t, dir)
	cnf := filepath.Join(dir, "inter.cnf")
	base, _ := os.ReadFile(cnf)
	withCDP := func(url string) {
		os.WriteFile(cnf, []byte(strings.Replace(string(base), "[ client ]\n", "[ client ]\ncrlDistributionPoints = URI:"+url+"\n", 1)), 0o644)
	}
	withCDP(dp.URL + "/inter.crl")
	o.issue("alice")
	o.issue("bob")
	withCDP(dp.URL + "/missing.crl")
	o.issue("carol")
	o.revoke("alice")
	cfg := fmt.Sprintf(`
listen: "127.0.0.1:0"
admin: { listen: "127.0.0.1:0", cert: server.pem, key: server.key, client_ca: [ca.pem], allow: ["uri:spiffe://guardian.demo/admin"] }
revocation:
  store: memory
  crl: [ { from_certificates: true, refresh: 200ms, wait: 5s } ]
audiences:
  - { name: devices, sni: [localhost], cert: server.pem, key: server.key, client_ca: [root.pem], crl_unavailable: closed }
`)
	s := startServe(t, dir, cfg)
	d := s.demoView()
	if resp, err := d.client(t, "alice").Get("https://" + local(s.addr) + "/"); err == nil {
		resp.Body.Close()
		t.Fatal("alice, listed by the CRL her certificate names, was served")
	}
	if n := metricOf(t, s, `guardian_handshake_failures_total{listener="data",reason="revoked"}`); n != 1 {
		t.Fatalf("revoked refusals = %v; want 1: alice refused as revoked on first contact", n)
	}
	bob := openStream(t, d.client(t, "bob"), s.addr)
	o.revoke("bob")
	if !streamEnds(bob, 10*time.Second) {
		t.Fatal("bob's live stream still flowing 10s after the CRL at his distribution point listed him")
	}
	if resp, err := d.client(t, "carol").Get("https://" + local(s.addr) + "/"); err == nil {
		resp.Body.Close()
		t.Fatal("carol, whose distribution point answers 404, was served under crl_unavailable: closed")
	}
	eventuallyT(t, "carol refused as crl_unavailable", func() bool {
		return metricOf(t, s, `guardian_handshake_failures_total{listener="data",reason="crl_unavailable"}`) == 1
	})
	if code, body := s.readyz(t); code != 503 || !strings.Contains(body, "missing.crl") {
		t.Fatalf("/readyz: %d %q; want it to name the failing distribution point", code, body)
	}
}
