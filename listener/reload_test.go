package listener_test

import (
	"crypto/tls"
	"crypto/x509"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// SetAudiences, as a reload: conns whose audience still trusts them keep serving on the same
// conn; conns whose CA left the audience's pool, or whose audience is gone, are closed with
// reason policy; an invalid set changes nothing, not even later, on the eviction workers.
func TestSetAudiencesEvictsWhatItNoLongerTrusts(t *testing.T) {
	other := pkitest.NewCA(t)
	var api, pub listener.Audience
	var mu sync.Mutex
	var evicted []string // "reason CN" of each conn closed, as OnEvict hears of them
	evictions := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(evicted)
	}
	e := newEnv(t, envOpts{audiences: func(e *env) []listener.Audience {
		both := x509.NewCertPool()
		both.AddCert(e.root.Cert)
		both.AddCert(other.Cert)
		api = listener.Audience{Name: "api", SNI: []string{"localhost"}, Certificates: []tls.Certificate{e.server.TLS()},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: both}
		pub = listener.Audience{Name: "pub", SNI: []string{"public.test"}, Certificates: []tls.Certificate{e.server.TLS()}, ClientAuth: tls.NoClientCert}
		return []listener.Audience{api, pub}
	}, onEvict: func(ev listener.Eviction) {
		cn := "anonymous"
		if leaf := ev.Conn.Leaf(); leaf != nil {
			cn = leaf.Subject.CommonName
		}
		mu.Lock()
		evicted = append(evicted, ev.Reason+" "+cn)
		mu.Unlock()
	}})
	kept := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "kept"}), false)
	dropped := e.client(other.MustIssue(t, pkitest.Opts{CommonName: "dropped"}), false)
	anon := e.client(nil, false, func(c *tls.Config) { c.ServerName = "public.test" })
	witnessCert := e.root.MustIssue(t, pkitest.Opts{CommonName: "witness"})
	witness := e.client(witnessCert, false)
	for _, c := range []*client{kept, dropped, anon, witness} {
		c.get(t, "/")
	}

	// Two invalid sets, each of which, were its audiences swept before being refused, would
	// close dropped (its CA is not in narrowed's pool) and anon (no audience is named pub).
	narrowed := api
	narrowed.ClientCAs = e.root.Pool()
	clash := pub
	clash.Name, clash.SNI = "pub2", []string{"localhost"}
	for _, bad := range []struct {
		auds    []listener.Audience
		mention string
	}{
		{[]listener.Audience{narrowed, narrowed}, "twice"},
		{[]listener.Audience{narrowed, clash}, `SNI "localhost"`},
	} {
		if n, err := e.l.SetAudiences(bad.auds); err == nil || !strings.Contains(err.Error(), bad.mention) || n != 0 {
			t.Fatalf("an invalid set: %d closed, %v; want it refused, mentioning %q", n, err, bad.mention)
		}
	}
	// A valid reload to the audiences in force closes nothing either.
	if n, err := e.l.SetAudiences([]listener.Audience{api, pub}); err != nil || n != 0 {
		t.Fatalf("a reload to the same audiences: %d closed, %v; want none", n, err)
	}
	// Evictions run on workers, from one queue in order: the witness's revocation is queued
	// after anything the reloads above queued, so once it is done theirs have been taken up
	// too; a grace period lets a worker that took them alongside finish.
	revokeKey(t, e.set, keyOf(t, witnessCert.Cert, revoke.KindSHA256))
	waitClosed(t, witness.conn(0), "the witness")
	for deadline := time.Now().Add(10 * time.Second); !slices.Contains(evictions(), "revoked witness"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("OnEvict never heard of the witness: %q", evictions())
		}
	}
	time.Sleep(100 * time.Millisecond)
	if got := evictions(); !slices.Equal(got, []string{"revoked witness"}) || e.l.Len() != 3 {
		t.Fatalf("after two refused reloads, a no-op one and a revocation: evictions %q, %d conns live; want only the witness's, and 3", got, e.l.Len())
	}
	if !isOpen(kept.conn(0)) || !isOpen(dropped.conn(0)) || !isOpen(anon.conn(0)) {
		t.Fatal("a refused or no-op reload closed conns")
	}
	if v := metrictest.Value(t, e.metrics, "guardian_evictions_total", "reason", "policy"); v != 0 {
		t.Fatalf("policy evictions = %v after refused and no-op reloads; want 0", v)
	}

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
	if got := evictions(); len(got) != 3 || !slices.Contains(got, "policy dropped") || !slices.Contains(got, "policy anonymous") {
		t.Errorf("evictions %q; want the witness's, then dropped's and anon's for policy", got)
	}
	if _, err := dropped.try("/"); err == nil {
		t.Fatal("a certificate of the removed CA was served after the reload")
	}
}
