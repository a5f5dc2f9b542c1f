package crl_test

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"math/big"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
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

// A CRL entry's reason code comes back, in the entry that denies the certificate, under its
// RFC 5280 name: every code from 0 to 10, each written in the entry (crypto/x509 would omit
// code 0, so the CRL is built here). removeFromCRL (8) revokes nothing: its certificate is
// served.
func TestCRLReasonNames(t *testing.T) {
	ca := pkitest.NewCA(t)
	var codes []int
	leaves := map[int]*pkitest.Leaf{}
	for _, rc := range rfc5280Reasons {
		codes = append(codes, rc.code)
		leaves[rc.code] = ca.MustIssue(t, pkitest.Opts{CommonName: string(rc.name), Serial: big.NewInt(int64(100 + rc.code))})
	}
	set := newSet(t)
	a := newApplier(t, set, nil, ca.Cert)
	mustApply(t, a, crlWithReasons(t, ca, codes), "the CRL")
	for _, rc := range rfc5280Reasons {
		e, ok := denied(set, verified(t, leaves[rc.code], ca.Cert))
		switch {
		case rc.code == 8 && ok:
			t.Errorf("code 8 (removeFromCRL): denied by %+v; want served", e)
		case rc.code != 8 && (!ok || e.Reason != rc.name):
			t.Errorf("code %d: entry %+v, %v; want reason %q", rc.code, e, ok, rc.name)
		}
	}
}

// crlWithReasons is ca's CRL number 1 revoking serial 100+code with that reason code, for
// each of codes, every one in a reasonCode extension.
func crlWithReasons(t *testing.T, ca *pkitest.CA, codes []int) []byte {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	utc := func(b *cryptobyte.Builder, t time.Time) {
		b.AddASN1(cbasn1.UTCTime, func(b *cryptobyte.Builder) { b.AddBytes([]byte(t.Format("060102150405Z"))) })
	}
	alg := func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier([]int{1, 2, 840, 10045, 4, 3, 2}) })
	}
	ext := func(b *cryptobyte.Builder, oid asn1.ObjectIdentifier, value func(*cryptobyte.Builder)) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oid)
			b.AddASN1(cbasn1.OCTET_STRING, value)
		})
	}
	var tbs cryptobyte.Builder
	tbs.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Int64(1)
		alg(b)
		b.AddBytes(ca.Cert.RawSubject)
		utc(b, now.Add(-time.Minute))
		utc(b, now.Add(time.Hour))
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			for _, code := range codes {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1Int64(int64(100 + code))
					utc(b, now.Add(-time.Hour))
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						ext(b, asn1.ObjectIdentifier{2, 5, 29, 21}, func(b *cryptobyte.Builder) { b.AddASN1Enum(int64(code)) })
					})
				})
			}
		})
		b.AddASN1(cbasn1.Tag(0).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				ext(b, asn1.ObjectIdentifier{2, 5, 29, 20}, func(b *cryptobyte.Builder) { b.AddASN1Int64(1) })
			})
		})
	})
	tbsDER := tbs.BytesOrPanic()
	digest := sha256.Sum256(tbsDER)
	sig, err := ca.Key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	var out cryptobyte.Builder
	out.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbsDER)
		alg(b)
		b.AddASN1BitString(sig)
	})
	return out.BytesOrPanic()
}
