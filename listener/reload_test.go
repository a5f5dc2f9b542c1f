package listener_test

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/guardian-mtls/guardian/internal/testpki"
	"github.com/guardian-mtls/guardian/listener"
)

// SetAudiences, as a reload: conns whose audience still trusts them keep serving on the same
// conn; conns whose CA left the audience's pool, or whose audience is gone, are closed with
// reason policy; an invalid set changes nothing.
func TestSetAudiencesEvictsWhatItNoLongerTrusts(t *testing.T) {
	other := testpki.NewCA(t)
	var api, pub listener.Audience
	e := newEnv(t, envOpts{audiences: func(e *env) []listener.Audience {
		both := x509.NewCertPool()
		both.AddCert(e.root.Cert)
		both.AddCert(other.Cert)
		api = listener.Audience{Name: "api", SNI: []string{"localhost"}, Certificates: []tls.Certificate{e.server.TLS()},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: both}
		pub = listener.Audience{Name: "pub", SNI: []string{"public.test"}, Certificates: []tls.Certificate{e.server.TLS()}, ClientAuth: tls.NoClientCert}
		return []listener.Audience{api, pub}
	}})
	kept := e.client(e.root.MustIssue(t, testpki.Opts{CommonName: "kept"}), false)
	dropped := e.client(other.MustIssue(t, testpki.Opts{CommonName: "dropped"}), false)
	anon := e.client(nil, false, func(c *tls.Config) { c.ServerName = "public.test" })
	for _, c := range []*client{kept, dropped, anon} {
		c.get(t, "/")
	}

	dup := api
	if _, err := e.l.SetAudiences([]listener.Audience{api, dup}); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("an invalid set: %v; want it refused", err)
	}
	if !isOpen(dropped.conn(0)) || !isOpen(anon.conn(0)) {
		t.Fatal("a refused reload closed conns")
	}

	narrowed := api
	narrowed.ClientCAs = e.root.Pool()
	n, err := e.l.SetAudiences([]listener.Audience{narrowed})
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(t, dropped.conn(0), "a conn whose CA left the pool")
	waitClosed(t, anon.conn(0), "a conn of a removed audience")
	if got := kept.get(t, "/"); !strings.Contains(got, "cn=kept") || kept.numConns() != 1 {
		t.Fatalf("a conn the new audiences still trust: %q on %d conns; want the same conn serving", got, kept.numConns())
	}
	if n != 2 {
		t.Errorf("SetAudiences closed %d conns; want 2", n)
	}
	waitMetric(t, e, "guardian_evictions_total", 2, "reason", "policy")
	if _, err := dropped.try("/"); err == nil {
		t.Fatal("a certificate of the removed CA was served after the reload")
	}
}
