package listener_test

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
)

// Hostile handshakes, each refused and counted under its reason, none disturbing a served
// client: a certificate from another audience's CA, expired and not-yet-valid certificates,
// a chain longer than MaxChainLength, and an SNI of a thousand bytes.
func TestHostileHandshakes(t *testing.T) {
	partners := pkitest.NewCA(t)
	e := newEnv(t, envOpts{audiences: func(e *env) []listener.Audience {
		return []listener.Audience{
			{Name: "api", SNI: []string{"localhost"}, Certificates: []tls.Certificate{e.server.TLS()},
				ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: e.root.Pool()},
			{Name: "partners", SNI: []string{"public.test"}, Certificates: []tls.Certificate{e.server.TLS()},
				ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: partners.Pool()},
		}
	}})
	good := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "good"}), false)
	good.get(t, "/")

	deep := e.root
	for i := 0; i < 11; i++ {
		deep = deep.MustIntermediate(t, "level")
	}
	now := time.Now()
	for _, c := range []struct {
		name, sni, reason string
		leaf              *pkitest.Leaf
	}{
		{"a partner's certificate on api", "localhost", "bad_certificate", partners.MustIssue(t, pkitest.Opts{CommonName: "partner"})},
		{"an api certificate on partners", "public.test", "bad_certificate", e.root.MustIssue(t, pkitest.Opts{CommonName: "api"})},
		{"expired", "localhost", "bad_certificate", e.root.MustIssue(t, pkitest.Opts{CommonName: "old", NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)})},
		{"not yet valid", "localhost", "bad_certificate", e.root.MustIssue(t, pkitest.Opts{CommonName: "early", NotBefore: now.Add(time.Hour), NotAfter: now.Add(2 * time.Hour)})},
		{"a chain of 12", "localhost", "chain_too_long", deep.MustIssue(t, pkitest.Opts{CommonName: "deep"})},
		{"a thousand-byte SNI", strings.Repeat("a", 60) + strings.Repeat(".b", 470), "unknown_sni", e.root.MustIssue(t, pkitest.Opts{CommonName: "long"})},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := metricValue(t, e, "guardian_handshake_failures_total", "reason", c.reason)
			if _, err := rawGet(e.addr, &tls.Config{RootCAs: e.root.Pool(), ServerName: c.sni, InsecureSkipVerify: c.sni != "localhost",
				Certificates: []tls.Certificate{c.leaf.TLS()}}, c.sni); err == nil {
				t.Fatal("served")
			}
			waitMetric(t, e, "guardian_handshake_failures_total", before+1, "reason", c.reason)
		})
	}
	if got := good.get(t, "/"); !strings.Contains(got, "cn=good") || good.numConns() != 1 {
		t.Fatalf("good client disturbed: %q on %d conns", got, good.numConns())
	}
}

func metricValue(t *testing.T, e *env, name string, labels ...string) float64 {
	t.Helper()
	return metrictest.Value(t, e.metrics, name, labels...)
}
