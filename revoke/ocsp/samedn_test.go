package ocsp_test

import (
	"context"
	"crypto/x509"
	"math/big"
	"testing"

	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/ocsp"
)

// Two CAs with one subject DN and different keys issue serial 5 each, each with its own
// responder in the AIA (invariant 6: an answer for issuer key K speaks only for what K
// issued). CA1's cached "good" for its serial 5 must not answer for CA2's serial 5, which
// CA2's responder revokes; and the Set entry that revocation makes denies only CA2's
// certificate, not CA1's of the same DN and serial.
func TestSameDNAnswersAreKeptApart(t *testing.T) {
	ca1, err := pkitest.New("same-dn")
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := pkitest.New("same-dn")
	if err != nil {
		t.Fatal(err)
	}
	r1, r2 := newResponder(t, ca1), newResponder(t, ca2)
	r2.set(func(r *responder) { r.revoked["5"] = true })
	l1 := ca1.MustIssue(t, pkitest.Opts{CommonName: "one", Serial: big.NewInt(5), OCSP: []string{r1.srv.URL}})
	l2 := ca2.MustIssue(t, pkitest.Opts{CommonName: "two", Serial: big.NewInt(5), OCSP: []string{r2.srv.URL}})
	set := newSet(t)
	c := newChecker(t, set, "", nil)
	if res := c.Check(context.Background(), l1.Cert, ca1.Cert); res.Status != ocsp.Good {
		t.Fatalf("CA1's serial 5: %v (%v); want good", res.Status, res.Err)
	}
	if res := c.Check(context.Background(), l2.Cert, ca2.Cert); res.Status != ocsp.Revoked {
		t.Fatalf("CA2's serial 5, after CA1's was found good: %v (responder asked %d times); want revoked, asked of CA2's responder",
			res.Status, r2.hits.Load())
	}
	chain1 := [][]*x509.Certificate{{l1.Cert, ca1.Cert}}
	chain2 := [][]*x509.Certificate{{l2.Cert, ca2.Cert}}
	if e, ok := set.AnyOf(revoke.KeysOfChains(chain1)); ok {
		t.Fatalf("CA2's revoked answer denies CA1's certificate of the same DN and serial, by %s", e.Key)
	}
	if _, ok := set.AnyOf(revoke.KeysOfChains(chain2)); !ok {
		t.Fatal("CA2's revoked answer does not deny CA2's certificate")
	}
}
