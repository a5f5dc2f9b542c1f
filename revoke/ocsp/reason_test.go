package ocsp_test

import (
	"context"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"

	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/ocsp"
)

// rfc5280Reasons is RFC 5280 section 5.3.1's CRLReason, written out here rather than taken
// from package revoke, so that a drift in revoke's table fails this test. Code 7 is unused.
var rfc5280Reasons = []struct {
	code int
	name revoke.Reason
}{
	{0, "unspecified"}, {1, "keyCompromise"}, {2, "cACompromise"}, {3, "affiliationChanged"},
	{4, "superseded"}, {5, "cessationOfOperation"}, {6, "certificateHold"}, {7, "unspecified"},
	{8, "removeFromCRL"}, {9, "privilegeWithdrawn"}, {10, "aACompromise"},
}

// A revoked answer's reason code comes back, in the Result and in the Set's entry, under
// its RFC 5280 name: every code from 0 to 10 (aACompromise was once read as unspecified).
// removeFromCRL (8) revokes nothing, as in a CRL: the answer counts as good.
func TestRevokedReasonNames(t *testing.T) {
	ca := pkitest.NewCA(t)
	for _, rc := range rfc5280Reasons {
		t.Run(string(rc.name), func(t *testing.T) {
			leaf := ca.MustIssue(t, pkitest.Opts{CommonName: "reason"})
			r := newResponder(t, ca)
			r.set(func(r *responder) {
				r.answer = func(req *xocsp.Request) []byte {
					der, err := xocsp.CreateResponse(ca.Cert, ca.Cert, xocsp.Response{
						Status: xocsp.Revoked, SerialNumber: req.SerialNumber, RevocationReason: rc.code,
						RevokedAt:  time.Now().Add(-time.Minute).Truncate(time.Second),
						ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour),
					}, ca.Key)
					if err != nil {
						t.Error(err)
					}
					return der
				}
			})
			set := newSet(t)
			res := newChecker(t, set, r.srv.URL, nil).Check(context.Background(), leaf.Cert, ca.Cert)
			if rc.code == 8 {
				if res.Status != ocsp.Good || set.Len() != 0 {
					t.Fatalf("code 8 (removeFromCRL): status %v reason %q (%v), %d Set entries; want good and none", res.Status, res.Reason, res.Err, set.Len())
				}
				return
			}
			if res.Status != ocsp.Revoked || res.Reason != rc.name {
				t.Fatalf("code %d: status %v reason %q (%v); want revoked for %q", rc.code, res.Status, res.Reason, res.Err, rc.name)
			}
			e, ok := set.Lookup(revoke.KeySerialKey(ca.Cert.RawSubject, ca.Cert.RawSubjectPublicKeyInfo, leaf.Cert.SerialNumber))
			if !ok || e.Reason != rc.name {
				t.Fatalf("code %d: Set entry %+v, %v; want reason %q", rc.code, e, ok, rc.name)
			}
		})
	}
}
