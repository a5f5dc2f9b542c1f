package redisfeed_test

import (
	"context"
	"crypto/x509"
	"math/big"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/internal/redistest"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/crl"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// startCRLNode is a node whose feed hands pushed CRLs to a CRL applier that trusts ca.
func startCRLNode(t *testing.T, srv *redistest.Server, ca *pkitest.CA) *node {
	t.Helper()
	n := &node{metrics: prometheus.NewRegistry()}
	n.set, _ = revoke.NewSet(revoke.SetOptions{})
	app, err := crl.NewApplier(crl.Options{Set: n.set, Issuers: []*x509.Certificate{ca.Cert}, Metrics: n.metrics})
	if err != nil {
		t.Fatal(err)
	}
	n.feed, err = redisfeed.NewFeed(redisfeed.NewStore(client(t, srv), "", 0), n.set, redisfeed.FeedOptions{
		Block: 200 * time.Millisecond, Metrics: n.metrics,
		OnCRL: func(_ string, der []byte) { app.Apply(der, "redis") },
	})
	if err != nil {
		t.Fatal(err)
	}
	n.run(t)
	return n
}

// A CRL pushed through Redis reaches every node: those running hear its record, a node
// that starts later loads it at sync, and a newer push replaces it on all of them. A
// garbage push is refused by every node, which keeps the CRL it had.
func TestPushedCRLReachesEveryNode(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ca := pkitest.NewCA(t)
	store := redisfeed.NewStore(client(t, srv), "", 0)
	issuer := revoke.IssuerHash(ca.Cert.RawSubject)
	k1 := revoke.KeySerialKey(ca.Cert.RawSubject, ca.Cert.RawSubjectPublicKeyInfo, big.NewInt(11))
	k2 := revoke.KeySerialKey(ca.Cert.RawSubject, ca.Cert.RawSubjectPublicKeyInfo, big.NewInt(22))
	ctx := context.Background()

	a := startCRLNode(t, srv, ca)
	push := func(der []byte) {
		t.Helper()
		if _, err := store.PushCRL(ctx, issuer, der); err != nil {
			t.Fatal(err)
		}
	}
	push(ca.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: []x509.RevocationListEntry{pkitest.Revoked(big.NewInt(11), 1)}}))
	eventually(t, "node a applies the pushed CRL", func() bool { return a.set.Has(k1) })

	b := startCRLNode(t, srv, ca)
	if !b.set.Has(k1) {
		t.Fatal("a node started after the push did not load the CRL at sync")
	}
	push(ca.MustCRL(t, pkitest.CRLOpts{Number: 2, Entries: []x509.RevocationListEntry{pkitest.Revoked(big.NewInt(22), 1)}}))
	for name, n := range map[string]*node{"a": a, "b": b} {
		eventually(t, "node "+name+" applies the second push", func() bool { return n.set.Has(k2) && !n.set.Has(k1) })
	}
	push([]byte("not a CRL"))
	for name, n := range map[string]*node{"a": a, "b": b} {
		eventually(t, "node "+name+" refuses the garbage push", func() bool {
			return metrictest.Value(t, n.metrics, "guardian_crl_refused_total", "reason", "malformed") == 1
		})
		if !n.set.Has(k2) {
			t.Errorf("node %s lost the last good CRL to a garbage push", name)
		}
	}
	if _, err := store.PushCRL(ctx, "ABC", nil); err == nil {
		t.Error("a push under a bad issuer hash was accepted")
	}
}
