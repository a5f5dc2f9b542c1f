package crl_test

import (
	"crypto/x509"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/fakeclock"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/crl"
)

// verified returns leaf's chains as crypto/tls hands them to the listener: verified against
// roots, with the intermediates the client sent (leaf.Chain).
func verified(t *testing.T, leaf *pkitest.Leaf, roots ...*x509.Certificate) [][]*x509.Certificate {
	t.Helper()
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	for _, c := range leaf.Chain[1:] {
		inter.AddCert(c)
	}
	chains, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		t.Fatalf("verify %s: %v", leaf.Cert.Subject, err)
	}
	return chains
}

// denied is the listener's handshake check: is any key of the verified chains revoked?
func denied(set *revoke.Set, chains [][]*x509.Certificate) (revoke.Entry, bool) {
	return set.AnyOf(revoke.KeysOfChains(chains))
}

func serials(ns ...int64) []x509.RevocationListEntry {
	var out []x509.RevocationListEntry
	for _, n := range ns {
		out = append(out, pkitest.Revoked(big.NewInt(n), 1))
	}
	return out
}

func mustApply(t *testing.T, a *crl.Applier, der []byte, what string) crl.Result {
	t.Helper()
	res, err := a.Apply(der, "test")
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return res
}

// Two trusted CAs with one subject DN and different keys (a look-alike): the second's CRL,
// numbered far ahead, neither replaces the first's list nor lifts what it revokes, and the
// first's next CRL is no rollback.
func TestSameDNCRLDoesNotReplaceAnotherKeysList(t *testing.T) {
	ca1, err := pkitest.New("shared name CA")
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := pkitest.New("shared name CA")
	if err != nil {
		t.Fatal(err)
	}
	if string(ca1.Cert.RawSubject) != string(ca2.Cert.RawSubject) {
		t.Fatal("the two CAs' subject DNs differ; the test needs them equal")
	}
	one5 := ca1.MustIssue(t, pkitest.Opts{CommonName: "one-5", Serial: big.NewInt(5)})
	one6 := ca1.MustIssue(t, pkitest.Opts{CommonName: "one-6", Serial: big.NewInt(6)})
	two9 := ca2.MustIssue(t, pkitest.Opts{CommonName: "two-9", Serial: big.NewInt(9)})
	set := newSet(t)
	a := newApplier(t, set, nil, ca1.Cert, ca2.Cert)

	mustApply(t, a, ca1.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: serials(5)}), "CA1's CRL 1")
	if _, ok := denied(set, verified(t, one5, ca1.Cert, ca2.Cert)); !ok {
		t.Fatal("CA1's CRL 1 lists serial 5, but CA1's certificate with serial 5 is served")
	}

	mustApply(t, a, ca2.MustCRL(t, pkitest.CRLOpts{Number: 1000, Entries: serials(9)}), "CA2's CRL 1000")
	if _, ok := denied(set, verified(t, one5, ca1.Cert, ca2.Cert)); !ok {
		t.Error("CA2's CRL 1000 lifted CA1's revocation of serial 5: CA1's revoked certificate is served again")
	}
	if _, ok := denied(set, verified(t, two9, ca1.Cert, ca2.Cert)); !ok {
		t.Error("CA2's CRL 1000 lists serial 9, but CA2's certificate with serial 9 is served")
	}

	if _, err := a.Apply(ca1.MustCRL(t, pkitest.CRLOpts{Number: 2, Entries: serials(5, 6)}), "test"); err != nil {
		t.Errorf("CA1's CRL 2 after CA2's CRL 1000: %v; want it applied (another key's number is no rollback)", err)
	}
	for _, l := range []*pkitest.Leaf{one5, one6} {
		if _, ok := denied(set, verified(t, l, ca1.Cert, ca2.Cert)); !ok {
			t.Errorf("%s: listed in CA1's CRL 2, but served", l.Cert.Subject.CommonName)
		}
	}
	if _, ok := denied(set, verified(t, two9, ca1.Cert, ca2.Cert)); !ok {
		t.Error("CA1's CRL 2 lifted CA2's revocation of serial 9")
	}
	numbers := map[string]bool{}
	for _, ap := range a.Applied() {
		numbers[ap.Number.String()] = true
	}
	if len(numbers) != 2 || !numbers["2"] || !numbers["1000"] {
		t.Errorf("CRLs in force have numbers %v; want CA1's 2 and CA2's 1000", numbers)
	}
	if !errors.Is(mustErr(a.Apply(ca1.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: serials(5)}), "test")), crl.ErrRollback) {
		t.Error("CA1's CRL 1 after its CRL 2 was not refused as a rollback")
	}
}

// A CRL denies only certificates whose verified chain has an issuer with the key that
// signed it: CA1's CRL listing serial 5 leaves CA2's certificate with serial 5 alone, on a
// new handshake and in the change that closes live conns.
func TestSameDNCRLDeniesOnlyItsOwnKeysCertificates(t *testing.T) {
	ca1, err := pkitest.New("shared name CA")
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := pkitest.New("shared name CA")
	if err != nil {
		t.Fatal(err)
	}
	one5 := ca1.MustIssue(t, pkitest.Opts{CommonName: "one-5", Serial: big.NewInt(5)})
	two5 := ca2.MustIssue(t, pkitest.Opts{CommonName: "two-5", Serial: big.NewInt(5)})
	set := newSet(t)
	var changes []revoke.Change
	set.Subscribe(func(c revoke.Change) { changes = append(changes, c) })
	a := newApplier(t, set, nil, ca1.Cert, ca2.Cert)

	mustApply(t, a, ca1.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: serials(5)}), "CA1's CRL")
	one, two := verified(t, one5, ca1.Cert, ca2.Cert), verified(t, two5, ca1.Cert, ca2.Cert)
	if _, ok := denied(set, one); !ok {
		t.Error("CA1's certificate with serial 5 is served; CA1's CRL lists it")
	}
	if e, ok := denied(set, two); ok {
		t.Errorf("CA2's certificate with serial 5 is denied by %q (source %s); only CA1's CRL lists serial 5", e.Key, e.Source)
	}
	// The listener closes the live conns indexed under a change's added keys.
	if len(changes) != 1 || len(changes[0].Added) != 1 {
		t.Fatalf("changes %+v; want one adding one key", changes)
	}
	added := changes[0].Added[0].Key
	has := func(keys []revoke.Key, k revoke.Key) bool {
		for _, x := range keys {
			if x == k {
				return true
			}
		}
		return false
	}
	if !has(revoke.KeysOfChains(one), added) || !revoke.Matches(one, added) {
		t.Errorf("the change adds %q, which is not a key of CA1's certificate: its live conns stay open", added)
	}
	if has(revoke.KeysOfChains(two), added) || revoke.Matches(two, added) {
		t.Errorf("the change adds %q, a key of CA2's certificate too: its live conns would be closed", added)
	}
}

// A CA key rollover: one issuing CA's DN with an old and a new key, both publishing CRLs
// while certificates of both are live. Both lists are in force at once, each with its own
// CRL number sequence.
func TestKeyRolloverBothCRLsInForce(t *testing.T) {
	root := pkitest.NewCA(t)
	oldCA := root.MustIntermediate(t, "issuing CA")
	newCA := root.MustIntermediate(t, "issuing CA")
	oldLeaf := oldCA.MustIssue(t, pkitest.Opts{CommonName: "old-5", Serial: big.NewInt(5)})
	newLeaf := newCA.MustIssue(t, pkitest.Opts{CommonName: "new-7", Serial: big.NewInt(7)})
	old8 := oldCA.MustIssue(t, pkitest.Opts{CommonName: "old-8", Serial: big.NewInt(8)})
	new8 := newCA.MustIssue(t, pkitest.Opts{CommonName: "new-8", Serial: big.NewInt(8)})
	set := newSet(t)
	a := newApplier(t, set, nil, root.Cert, oldCA.Cert, newCA.Cert)
	check := func(when string, l *pkitest.Leaf, want bool) {
		t.Helper()
		if _, got := denied(set, verified(t, l, root.Cert)); got != want {
			t.Errorf("%s: %s denied = %v; want %v", when, l.Cert.Subject.CommonName, got, want)
		}
	}

	mustApply(t, a, oldCA.MustCRL(t, pkitest.CRLOpts{Number: 10, Entries: serials(5)}), "old key's CRL 10")
	// The new key starts its own sequence, below the old key's.
	if _, err := a.Apply(newCA.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: serials(7)}), "test"); err != nil {
		t.Errorf("new key's CRL 1 after the old key's CRL 10: %v; want it applied", err)
	}
	check("both first CRLs", oldLeaf, true)
	check("both first CRLs", newLeaf, true)
	check("both first CRLs", old8, false)
	check("both first CRLs", new8, false)

	if _, err := a.Apply(oldCA.MustCRL(t, pkitest.CRLOpts{Number: 11, Entries: serials(5, 8)}), "test"); err != nil {
		t.Errorf("old key's CRL 11: %v", err)
	}
	if _, err := a.Apply(newCA.MustCRL(t, pkitest.CRLOpts{Number: 2, Entries: serials(7)}), "test"); err != nil {
		t.Errorf("new key's CRL 2: %v", err)
	}
	check("old 11, new 2", oldLeaf, true)
	check("old 11, new 2", newLeaf, true)
	check("old 11, new 2", old8, true)
	check("old 11, new 2", new8, false)

	for _, c := range []struct {
		name string
		ca   *pkitest.CA
		n    int64
	}{{"old key's CRL 10 again", oldCA, 10}, {"new key's CRL 1 again", newCA, 1}} {
		if err := mustErr(a.Apply(c.ca.MustCRL(t, pkitest.CRLOpts{Number: c.n}), "test")); !errors.Is(err, crl.ErrRollback) {
			t.Errorf("%s: %v; want ErrRollback", c.name, err)
		}
	}
	check("after refused rollbacks", oldLeaf, true)
	check("after refused rollbacks", newLeaf, true)
	if n := len(a.Applied()); n != 2 {
		t.Errorf("%d CRLs in force; want 2, one per key", n)
	}
}

// A CRL too big for a change to list makes the listener sweep its live conns through a
// Sweeper, which finds CA1's listed certificate and not CA2's with the same DN and serial.
func TestSameDNSweep(t *testing.T) {
	ca1, ca2 := pkitest.NewCA(t), pkitest.NewCA(t) // one DN, two keys
	one5 := ca1.MustIssue(t, pkitest.Opts{CommonName: "one-5", Serial: big.NewInt(5)})
	two5 := ca2.MustIssue(t, pkitest.Opts{CommonName: "two-5", Serial: big.NewInt(5)})
	set := newSet(t)
	var sweeps int
	set.Subscribe(func(c revoke.Change) {
		if c.Sweep {
			sweeps++
		}
	})
	a := newApplier(t, set, nil, ca1.Cert, ca2.Cert)
	entries := serials(5)
	for i := 0; i < revoke.MaxListed+10; i++ {
		entries = append(entries, pkitest.Revoked(big.NewInt(int64(1000+i)), 0))
	}
	mustApply(t, a, ca1.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: entries}), "CA1's big CRL")
	if sweeps != 1 {
		t.Fatalf("sweeps = %d; want 1", sweeps)
	}
	sw := set.Sweeper()
	want := revoke.KeySerialKey(ca1.Cert.RawSubject, ca1.Cert.RawSubjectPublicKeyInfo, big.NewInt(5))
	for i := 0; i < 2; i++ { // the second time from the Sweeper's cache
		if k, ok := sw.Revoked(verified(t, one5, ca1.Cert, ca2.Cert)); !ok || k != want {
			t.Errorf("sweep of CA1's serial 5: %q, %v; want %q", k, ok, want)
		}
		if k, ok := sw.Revoked(verified(t, two5, ca1.Cert, ca2.Cert)); ok {
			t.Errorf("sweep of CA2's serial 5: hit by %q; only CA1's CRL lists it", k)
		}
	}
}

// A table that no Applier bound to a verifying key is no list for the Set.
func TestUnboundTableRefused(t *testing.T) {
	ca := pkitest.NewCA(t)
	c, err := crl.Parse(ca.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: serials(5)}))
	if err != nil {
		t.Fatal(err)
	}
	tab, err := crl.NewTable(c)
	if err != nil {
		t.Fatal(err)
	}
	set := newSet(t)
	if _, err := set.SwapList(nil, tab, revoke.ListDiff{}); err == nil || !strings.Contains(err.Error(), "issuer key") {
		t.Fatalf("SwapList of an unbound table: %v; want a refusal naming its issuer key", err)
	}
	if len(set.Lists()) != 0 {
		t.Fatalf("the Set holds %d lists; want none", len(set.Lists()))
	}
}

// After a rollover, once the old CA certificate leaves the configuration, the old key's
// last CRL stays in force but its passing nextUpdate makes nothing stale; the new key's
// does.
func TestRetiredKeyCRLNotStale(t *testing.T) {
	root := pkitest.NewCA(t)
	oldCA := root.MustIntermediate(t, "issuing CA")
	newCA := root.MustIntermediate(t, "issuing CA")
	oldLeaf := oldCA.MustIssue(t, pkitest.Opts{CommonName: "old-5", Serial: big.NewInt(5)})
	now := time.Now()
	clk := fakeclock.New(now)
	set := newSet(t)
	a, err := crl.NewApplier(crl.Options{Set: set, Issuers: []*x509.Certificate{root.Cert, oldCA.Cert, newCA.Cert}, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, a, oldCA.MustCRL(t, pkitest.CRLOpts{Number: 9, ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(time.Hour), Entries: serials(5)}), "old key's CRL")
	mustApply(t, a, newCA.MustCRL(t, pkitest.CRLOpts{Number: 1, ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(3 * time.Hour)}), "new key's CRL")
	clk.Advance(2 * time.Hour) // now+2h
	if st := a.Stale(); len(st) != 1 || st[0].IssuerKey != revoke.SPKIHash(oldCA.Cert.RawSubjectPublicKeyInfo) {
		t.Fatalf("Stale() = %v; want the old key's CRL, its CA still configured", ids(st))
	}
	a.SetIssuers([]*x509.Certificate{root.Cert, newCA.Cert})
	if st := a.Stale(); len(st) != 0 {
		t.Errorf("Stale() = %v; want none: the old key is no longer configured", ids(st))
	}
	if _, ok := denied(set, verified(t, oldLeaf, root.Cert)); !ok {
		t.Error("the old key's CRL is no longer in force")
	}
	clk.Advance(2 * time.Hour) // now+4h
	if st := a.Stale(); len(st) != 1 || st[0].IssuerKey != revoke.SPKIHash(newCA.Cert.RawSubjectPublicKeyInfo) {
		t.Errorf("Stale() = %v; want the new key's CRL", ids(st))
	}
}

func ids(aps []crl.Applied) []string {
	var out []string
	for _, ap := range aps {
		out = append(out, ap.ID)
	}
	return out
}
