package crl_test

import (
	"crypto/x509"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/crl"
)

// A CRL signed by an intermediate that no configured CA is — the common PKI: an offline root
// in client_ca, an intermediate that issues and publishes the CRL — is held, then applied the
// moment a client's verified chain shows the intermediate; its revocations then deny.
func TestCRLOfAnIntermediateLearnedFromAChain(t *testing.T) {
	reg := prometheus.NewRegistry()
	set := newSet(t)
	root := pkitest.NewCA(t)
	inter := root.MustIntermediate(t, "devices intermediate")
	other := root.MustIntermediate(t, "another intermediate")
	alice := inter.MustIssue(t, pkitest.Opts{CommonName: "alice"})
	bob := inter.MustIssue(t, pkitest.Opts{CommonName: "bob"})
	carol := other.MustIssue(t, pkitest.Opts{CommonName: "carol"})
	a, err := crl.NewApplier(crl.Options{Set: set, Issuers: []*x509.Certificate{root.Cert}, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	der := inter.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: []x509.RevocationListEntry{pkitest.Revoked(alice.Cert.SerialNumber, 1)}})
	if _, err := a.Apply(der, "devices.crl"); !errors.Is(err, crl.ErrPending) || !errors.Is(err, crl.ErrUntrusted) {
		t.Fatalf("Apply = %v; want ErrPending (an ErrUntrusted)", err)
	}
	if p := a.Pending(); len(p) != 1 || p[0].Origin != "devices.crl" || a.InForce("devices.crl") {
		t.Fatalf("pending %+v, in force %v; want the CRL held, not in force", p, a.InForce("devices.crl"))
	}
	if v := metrictest.Value(t, reg, "guardian_crl_pending"); v != 1 {
		t.Fatalf("guardian_crl_pending = %v; want 1", v)
	}
	chain := func(l *pkitest.Leaf) [][]*x509.Certificate { return [][]*x509.Certificate{append(l.Chain, root.Cert)} }
	revoked := func(l *pkitest.Leaf) bool { _, hit := set.AnyOf(revoke.KeysOfChains(chain(l))); return hit }

	// A chain through another intermediate teaches nothing about this CRL.
	a.Learn(chain(carol))
	if len(a.Pending()) != 1 || revoked(alice) {
		t.Fatal("a chain through another intermediate applied the held CRL")
	}
	// Bob's chain shows the CRL's issuer: the CRL applies before Learn returns.
	a.Learn(chain(bob))
	if len(a.Pending()) != 0 || !a.InForce("devices.crl") {
		t.Fatalf("after Learn: pending %+v, in force %v; want it applied", a.Pending(), a.InForce("devices.crl"))
	}
	if !revoked(alice) || revoked(bob) || revoked(carol) {
		t.Fatalf("alice %v, bob %v, carol %v; want only alice revoked", revoked(alice), revoked(bob), revoked(carol))
	}
	// The intermediate is now an issuer: its next CRL applies at once.
	der2 := inter.MustCRL(t, pkitest.CRLOpts{Number: 2, Entries: []x509.RevocationListEntry{
		pkitest.Revoked(alice.Cert.SerialNumber, 1), pkitest.Revoked(bob.Cert.SerialNumber, 1)}})
	if _, err := a.Apply(der2, "devices.crl"); err != nil {
		t.Fatalf("the learned intermediate's next CRL: %v", err)
	}
	if !revoked(bob) {
		t.Fatal("bob not revoked by the intermediate's second CRL")
	}
	// A CRL signed by a key that only claims the intermediate's name is refused, not held.
	impostor, err := pkitest.New("devices intermediate") // the same DN, another key
	if err != nil {
		t.Fatal(err)
	}
	forged := impostor.MustCRL(t, pkitest.CRLOpts{Number: 3})
	if _, err := a.Apply(forged, "devices.crl"); err == nil || errors.Is(err, crl.ErrPending) {
		t.Fatalf("a CRL under the intermediate's name, signed by another key: %v; want a signature refusal", err)
	}
}
