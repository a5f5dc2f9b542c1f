package pkitest_test

import (
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"github.com/guardian-mtls/guardian/pkitest"
)

// An OCSP answer made by the CA parses and verifies against it, with the status asked for.
func TestOCSP(t *testing.T) {
	ca := pkitest.NewCA(t)
	leaf := ca.MustIssue(t, pkitest.Opts{CommonName: "alice"})
	at := time.Now().Add(-time.Hour).Truncate(time.Second)
	der, err := ca.OCSP(leaf.Cert, pkitest.OCSPOpts{Status: ocsp.Revoked, RevokedAt: at, Reason: ocsp.KeyCompromise})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ocsp.ParseResponseForCert(der, leaf.Cert, ca.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != ocsp.Revoked || !resp.RevokedAt.Equal(at) || resp.RevocationReason != ocsp.KeyCompromise || resp.SerialNumber.Cmp(leaf.Cert.SerialNumber) != 0 {
		t.Fatalf("got status %d at %v reason %d serial %v; want revoked at %v, keyCompromise, the leaf's serial", resp.Status, resp.RevokedAt, resp.RevocationReason, resp.SerialNumber, at)
	}
}
