package crl_test

import (
	"crypto/x509"
	"math/big"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke/crl"
)

// FuzzParseCRL feeds arbitrary bytes to the parser and the table: never a panic, and when
// crypto/x509 also accepts the input, both read the same serials, and the table finds each.
func FuzzParseCRL(f *testing.F) {
	ca, err := pkitest.New("fuzz root")
	if err != nil {
		f.Fatal(err)
	}
	big20, _ := new(big.Int).SetString("8affffffffffffffffffffffffffffffffffff02", 16)
	for _, entries := range [][]x509.RevocationListEntry{
		nil,
		{pkitest.Revoked(big.NewInt(1), 1)},
		{pkitest.Revoked(big.NewInt(1), 0), pkitest.Revoked(big20, 6), pkitest.Revoked(big.NewInt(1<<40), 8)},
	} {
		der, err := ca.CRL(pkitest.CRLOpts{Number: 3, Entries: entries})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der)
	}
	f.Add([]byte("-----BEGIN X509 CRL-----\nMAA=\n-----END X509 CRL-----\n"))
	f.Add([]byte{0x30, 0x03, 0x30, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := crl.Parse(b)
		if err != nil {
			return
		}
		var serials []*big.Int
		eachErr := c.Each(func(e *crl.Entry) error {
			n := new(big.Int).SetBytes(e.Serial)
			if e.Negative {
				n.Neg(n)
			}
			serials = append(serials, n)
			if e.RevokedAt.Location() != time.UTC {
				t.Errorf("revocation time %v is not UTC", e.RevokedAt)
			}
			return nil
		})
		tab, tabErr := crl.NewTable(c)
		if eachErr == nil && tabErr == nil {
			if tab.Len() != len(serials) {
				t.Fatalf("table holds %d serials; Each yielded %d", tab.Len(), len(serials))
			}
			for _, n := range serials {
				if _, ok := tab.Lookup(canon(n)); !ok {
					t.Fatalf("serial %s parsed but not found in the table", canon(n))
				}
			}
		}
		std, err := x509.ParseRevocationList(c.Raw)
		if err != nil || eachErr != nil {
			return
		}
		want := map[string]bool{}
		for _, e := range std.RevokedCertificateEntries {
			if e.ReasonCode != 8 {
				want[canon(e.SerialNumber)] = true
			}
		}
		for _, n := range serials {
			if !want[canon(n)] {
				t.Fatalf("serial %s read here, not by crypto/x509", canon(n))
			}
			delete(want, canon(n))
		}
		if len(want) > 0 {
			t.Fatalf("crypto/x509 read serials this parser did not: %v", want)
		}
	})
}

func canon(n *big.Int) string { return n.Text(16) }
