package ocsp_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/big"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"

	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/crl"
	"github.com/guardian-mtls/guardian/revoke/ocsp"
)

// A CA's CRL and its OCSP responder, saying "revoked" for one certificate with the same
// CRLReason code, leave the same thing in the Set: for every code 0 to 10 (7 unused,
// removeFromCRL revoking nothing) and for codes RFC 5280 does not define (both revoke, as
// unspecified; a CRL carrying one was once refused whole).
func TestCRLAndOCSPAgreeOnReasons(t *testing.T) {
	ca := pkitest.NewCA(t)
	for _, code := range []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 200} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			serial := big.NewInt(int64(1000 + code))
			leaf := ca.MustIssue(t, pkitest.Opts{CommonName: "reasons", Serial: serial})
			key := revoke.KeySerialKey(ca.Cert.RawSubject, ca.Cert.RawSubjectPublicKeyInfo, serial)

			// crypto/x509 writes no reasonCode for 0, and an OCSP answer omits it too: both
			// read that as unspecified.
			byCRL := newSet(t)
			a, err := crl.NewApplier(crl.Options{Set: byCRL, Issuers: []*x509.Certificate{ca.Cert}})
			if err != nil {
				t.Fatal(err)
			}
			der := ca.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: []x509.RevocationListEntry{pkitest.Revoked(serial, code)}})
			if _, err := a.Apply(der, "test"); err != nil {
				t.Fatalf("CRL with reason code %d refused: %v", code, err)
			}
			fromCRL, inCRL := byCRL.Lookup(key)

			r := newResponder(t, ca)
			r.set(func(r *responder) {
				r.answer = func(req *xocsp.Request) []byte {
					der, err := xocsp.CreateResponse(ca.Cert, ca.Cert, xocsp.Response{
						Status: xocsp.Revoked, SerialNumber: req.SerialNumber, RevocationReason: code,
						RevokedAt:  time.Now().Add(-time.Minute).Truncate(time.Second),
						ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour),
					}, ca.Key)
					if err != nil {
						t.Error(err)
					}
					return der
				}
			})
			byOCSP := newSet(t)
			res := newChecker(t, byOCSP, r.srv.URL, nil).Check(context.Background(), leaf.Cert, ca.Cert)
			if res.Status == ocsp.Unavailable {
				t.Fatalf("OCSP answer with reason code %d unusable: %v", code, res.Err)
			}
			fromOCSP, inOCSP := byOCSP.Lookup(key)

			if inCRL != inOCSP || fromCRL.Reason != fromOCSP.Reason {
				t.Fatalf("code %d: the CRL leaves %v %q, OCSP %v %q (status %v); want the same", code, inCRL, fromCRL.Reason, inOCSP, fromOCSP.Reason, res.Status)
			}
			if want := code != 8; inCRL != want || (res.Status == ocsp.Revoked) != want {
				t.Fatalf("code %d: revoked by the CRL %v, by OCSP %v (%v); want %v", code, inCRL, inOCSP, res.Status, want)
			}
			if inCRL && fromCRL.Reason != revoke.ReasonFromCode(code) {
				t.Fatalf("code %d: reason %q; want %q", code, fromCRL.Reason, revoke.ReasonFromCode(code))
			}
		})
	}
}
