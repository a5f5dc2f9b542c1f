package daemon

import (
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/crl"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// A CRL past its nextUpdate makes stale only the audiences whose client CAs its signer chains
// to; a configured CRL not loaded yet makes every audience with client certificates stale.
func TestStalenessPerAudience(t *testing.T) {
	rootA, rootB := pkitest.NewCA(t), pkitest.NewCA(t)
	interB := rootB.MustIntermediate(t, "B devices")
	set, _ := revoke.NewSet(revoke.SetOptions{})
	app, err := crl.NewApplier(crl.Options{Set: set, Issuers: []*x509.Certificate{rootA.Cert, interB.Cert}})
	if err != nil {
		t.Fatal(err)
	}
	n := &revocation{set: set, crl: app}
	now := time.Now()
	fresh := rootA.MustCRL(t, pkitest.CRLOpts{Number: 1, ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(time.Hour)})
	lapsed := interB.MustCRL(t, pkitest.CRLOpts{Number: 1, ThisUpdate: now.Add(-2 * time.Hour), NextUpdate: now.Add(-time.Hour)})
	for _, der := range [][]byte{fresh, lapsed} {
		if _, err := app.Apply(der, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if n.stale(time.Minute, rootA.Pool())() {
		t.Error("audience A is stale; only B's intermediate's CRL is past its nextUpdate")
	}
	if !n.stale(time.Minute, rootB.Pool())() {
		t.Error("audience B is not stale; its intermediate's CRL is past its nextUpdate")
	}
	if n.stale(time.Minute, nil)() {
		t.Error("an audience without client certificates is stale")
	}
	n.crls = []crl.Source{&crl.File{Path: filepath.Join(t.TempDir(), "missing.crl"), Applier: app}}
	if !n.stale(time.Minute, rootA.Pool())() {
		t.Error("a configured CRL that never loaded does not make audience A stale")
	}
}

// The node prunes what has expired (an OCSP revoked answer past its nextUpdate), counted,
// and keeps the rest: without it such entries pile up for the life of a node.
func TestPruneDropsExpiredEntries(t *testing.T) {
	reg := prometheus.NewRegistry()
	set, err := revoke.NewSet(revoke.SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n := &revocation{set: set, pruned: prometheus.NewCounter(prometheus.CounterOpts{Name: "guardian_revocations_pruned_total", Help: "x"})}
	reg.MustRegister(n.pruned)
	now := time.Now()
	expiring := revoke.MustParseKey("dns:expiring.example")
	kept := revoke.MustParseKey("dns:kept.example")
	if _, err := set.Add(revoke.SourceOCSP, revoke.Entry{Key: expiring, Expires: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if _, err := set.Add(revoke.SourceAPI, revoke.Entry{Key: kept}); err != nil {
		t.Fatal(err)
	}
	if got := n.pruneAt(now); got != 0 || !set.Has(expiring) {
		t.Fatalf("pruned %d before the expiry; want 0, the entry kept", got)
	}
	if got := n.pruneAt(now.Add(2 * time.Minute)); got != 1 || set.Has(expiring) || !set.Has(kept) {
		t.Fatalf("pruned %d after the expiry (expiring held: %v, kept held: %v); want 1, only the expired one", got, set.Has(expiring), set.Has(kept))
	}
	if v := metrictest.Value(t, reg, "guardian_revocations_pruned_total"); v != 1 {
		t.Fatalf("guardian_revocations_pruned_total = %v; want 1", v)
	}
}

// A node that never reached Redis is not ready, and says so in words — not as an unheard
// time of 2562047h.
func TestReadyNeverReachedRedis(t *testing.T) {
	set, err := revoke.NewSet(revoke.SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rdb, err := redisfeed.NewClient(redisfeed.ClientConfig{URL: "redis://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	feed, err := redisfeed.NewFeed(redisfeed.NewStore(rdb, "", 0), set, redisfeed.FeedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	app, err := crl.NewApplier(crl.Options{Set: set})
	if err != nil {
		t.Fatal(err)
	}
	n := &revocation{set: set, feed: feed, crl: app, start: time.Now().Add(-3 * time.Second)}
	got := n.ready(time.Minute)
	if !strings.Contains(got, "Redis never reached since start-up (3s ago)") {
		t.Fatalf("ready = %q; want it to say Redis was never reached, 3s ago", got)
	}
}
