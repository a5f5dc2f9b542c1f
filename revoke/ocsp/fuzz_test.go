package ocsp

import (
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"

	"github.com/guardian-mtls/guardian/pkitest"
)

// FuzzVerify feeds arbitrary bytes to the response checks: never a panic, and nothing but
// a response the CA signed for this certificate comes back good or revoked.
func FuzzVerify(f *testing.F) {
	ca, err := pkitest.New("fuzz CA")
	if err != nil {
		f.Fatal(err)
	}
	leaf, err := ca.Issue(pkitest.Opts{CommonName: "leaf"})
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	for _, st := range []int{xocsp.Good, xocsp.Revoked, xocsp.Unknown} {
		der, err := xocsp.CreateResponse(ca.Cert, ca.Cert, xocsp.Response{Status: st, SerialNumber: leaf.Cert.SerialNumber,
			ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(time.Hour), RevokedAt: now.Add(-time.Hour)}, ca.Key)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der)
	}
	f.Add([]byte{0x30, 0x03, 0x0a, 0x01, 0x06})
	f.Fuzz(func(t *testing.T, b []byte) {
		res, err := verify(b, leaf.Cert, ca.Cert, now)
		if err != nil {
			return
		}
		// It verified: the CA's key signed it, so it must be one of the seeds' answers.
		if res.Status != Good && res.Status != Revoked && res.Status != Unknown {
			t.Fatalf("verified response with status %v", res.Status)
		}
		certIDs(b) // must not panic either
	})
}
