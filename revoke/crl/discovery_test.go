package crl_test

import (
	"context"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke/crl"
)

// Distribution points that misbehave: a redirect away from HTTP, one that hangs (the
// handshake's wait bounds it), a CRL of another CA, a body over the cap — none is in force,
// each is reported; a good one applies.
func TestDiscoveryRefusesBadPoints(t *testing.T) {
	ca := pkitest.NewCA(t)
	foreign := pkitest.NewCA(t)
	good := ca.MustCRL(t, pkitest.CRLOpts{Number: 1})
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/good.crl":
			w.Write(good)
		case "/redirect.crl":
			http.Redirect(w, r, "ftp://127.0.0.1/x.crl", http.StatusFound)
		case "/hang.crl":
			select {
			case <-hang:
			case <-r.Context().Done():
			}
		case "/foreign.crl":
			w.Write(foreign.MustCRL(t, pkitest.CRLOpts{Number: 1}))
		case "/huge.crl":
			w.Write(make([]byte, 4096))
		}
	}))
	defer srv.Close()
	defer close(hang) // before srv.Close, which waits for the hanging handler
	app, err := crl.NewApplier(crl.Options{Set: newSet(t), Issuers: []*x509.Certificate{ca.Cert}})
	if err != nil {
		t.Fatal(err)
	}
	d := &crl.Discovery{Applier: app, Timeout: 10 * time.Second, MaxSize: 1024}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d.Start(ctx)
	chainNaming := func(path string) [][]*x509.Certificate {
		l := ca.MustIssue(t, pkitest.Opts{CommonName: path, CRLDistributionPoints: []string{srv.URL + path}})
		return [][]*x509.Certificate{{l.Cert, ca.Cert}}
	}
	if missing := d.Unavailable(chainNaming("/good.crl"), 5*time.Second); len(missing) != 0 {
		t.Fatalf("the good point unavailable: %v", missing)
	}
	for _, p := range []string{"/redirect.crl", "/hang.crl", "/foreign.crl", "/huge.crl"} {
		missing := d.Unavailable(chainNaming(p), 300*time.Millisecond)
		if len(missing) != 1 || !strings.HasSuffix(missing[0], p) {
			t.Errorf("%s: unavailable %v; want it", p, missing)
		}
	}
	failing := strings.Join(d.Failing(), " ")
	for _, p := range []string{"/redirect.crl", "/foreign.crl", "/huge.crl"} {
		if !strings.Contains(failing, p) {
			t.Errorf("Failing() = %q; want %s in it", failing, p)
		}
	}
	if strings.Contains(failing, "/good.crl") {
		t.Errorf("Failing() = %q names the good point", failing)
	}
}
