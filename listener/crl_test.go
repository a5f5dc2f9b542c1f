package listener_test

import (
	"crypto/x509"
	"math/big"
	"strings"
	"testing"

	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/crl"
)

// A CRL that lists a live conn's certificate closes that conn, whether the change lists its
// key (a small diff) or is too big to list and makes the listener sweep every live conn
// (a CRL's first load); a root's CRL that lists an intermediate closes the conns under it.
// No other conn is touched.
func TestCRLEvictsLiveConns(t *testing.T) {
	e := newEnv(t, envOpts{})
	inter := e.root.MustIntermediate(t, "devices CA")
	leafA := inter.MustIssue(t, pkitest.Opts{CommonName: "a"})
	leafB := inter.MustIssue(t, pkitest.Opts{CommonName: "b"})
	leafC := inter.MustIssue(t, pkitest.Opts{CommonName: "c"})
	a, b, c := e.client(leafA, false), e.client(leafB, true), e.client(leafC, false)
	direct := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "direct"}), false)
	for _, cl := range []*client{a, b, c, direct} {
		cl.get(t, "/")
	}
	app, err := crl.NewApplier(crl.Options{Set: e.set, Issuers: []*x509.Certificate{e.root.Cert, inter.Cert}})
	if err != nil {
		t.Fatal(err)
	}

	listed := []x509.RevocationListEntry{pkitest.Revoked(leafA.Cert.SerialNumber, 1)}
	if _, err := app.Apply(inter.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: listed}), "test"); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, a.conn(0), "a (listed in a small CRL)")

	// More new serials than a change lists: the listener sweeps.
	for i := 0; i < revoke.MaxListed+10; i++ {
		listed = append(listed, pkitest.Revoked(big.NewInt(int64(1e6+i)), 0))
	}
	listed = append(listed, pkitest.Revoked(leafB.Cert.SerialNumber, 1))
	res, err := app.Apply(inter.MustCRL(t, pkitest.CRLOpts{Number: 2, Entries: listed}), "test")
	if err != nil || !res.Sweep {
		t.Fatalf("second CRL: %+v, %v; want a sweep", res, err)
	}
	waitClosed(t, b.conn(0), "b (HTTP/2, in a CRL too big to list)")

	rootCRL := e.root.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: []x509.RevocationListEntry{pkitest.Revoked(inter.Cert.SerialNumber, 2)}})
	if _, err := app.Apply(rootCRL, "test"); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, c.conn(0), "c (its intermediate revoked by the root's CRL)")

	if got := direct.get(t, "/"); !strings.Contains(got, "cn=direct") || direct.numConns() != 1 || !isOpen(direct.conn(0)) {
		t.Fatalf("bystander disturbed: %q on %d conns", got, direct.numConns())
	}
	if _, err := a.try("/"); err == nil {
		t.Fatal("a certificate listed in the CRL was served on a new conn")
	}
	waitMetric(t, e, "guardian_evictions_total", 3, "reason", "revoked")
}
