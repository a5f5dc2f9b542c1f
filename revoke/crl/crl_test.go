package crl_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/internal/fakeclock"
	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/crl"
)

func newSet(t testing.TB) *revoke.Set {
	t.Helper()
	s, err := revoke.NewSet(revoke.SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newApplier(t testing.TB, set *revoke.Set, reg prometheus.Registerer, issuers ...*x509.Certificate) *crl.Applier {
	t.Helper()
	a, err := crl.NewApplier(crl.Options{Set: set, Issuers: issuers, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// serialKey is the key a CRL of ca revokes serial by: its keyserial key under ca's key.
func serialKey(ca *pkitest.CA, serial int64) revoke.Key {
	return revoke.KeySerialKey(ca.Cert.RawSubject, ca.Cert.RawSubjectPublicKeyInfo, big.NewInt(serial))
}

// The streaming parser reads what crypto/x509 reads: serials, times and reasons, in order.
func TestParseMatchesStandardLibrary(t *testing.T) {
	ca := pkitest.NewCA(t)
	big20, _ := new(big.Int).SetString("7fffffffffffffffffffffffffffffffffffff01", 16)
	highBit, _ := new(big.Int).SetString("ff00000000000001", 16) // DER needs a leading 0x00
	entries := []x509.RevocationListEntry{
		pkitest.Revoked(big.NewInt(1), 0), pkitest.Revoked(big.NewInt(0x1234), 1),
		pkitest.Revoked(big20, 4), pkitest.Revoked(highBit, 6), pkitest.Revoked(big.NewInt(0), 5),
	}
	der := ca.MustCRL(t, pkitest.CRLOpts{Number: 42, Entries: entries})
	std, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range [][]byte{der, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})} {
		c, err := crl.Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		if c.Number.Int64() != 42 || !c.ThisUpdate.Equal(std.ThisUpdate) || !c.NextUpdate.Equal(std.NextUpdate) ||
			c.SignatureAlgorithm != std.SignatureAlgorithm || string(c.RawIssuer) != string(std.RawIssuer) {
			t.Fatalf("header: number %v this %v next %v alg %v; want 42 %v %v %v", c.Number, c.ThisUpdate, c.NextUpdate,
				c.SignatureAlgorithm, std.ThisUpdate, std.NextUpdate, std.SignatureAlgorithm)
		}
		var i int
		err = c.Each(func(e *crl.Entry) error {
			w := std.RevokedCertificateEntries[i]
			got := new(big.Int).SetBytes(e.Serial)
			if e.Negative || got.Cmp(w.SerialNumber) != 0 || !e.RevokedAt.Equal(w.RevocationTime) {
				t.Errorf("entry %d: serial %x at %v; want %x at %v", i, got, e.RevokedAt, w.SerialNumber, w.RevocationTime)
			}
			wantCode := w.ReasonCode
			if wantCode == 0 {
				wantCode = -1 // crypto/x509 writes no extension for reason 0
			}
			if e.ReasonCode != wantCode {
				t.Errorf("entry %d: reason %d; want %d", i, e.ReasonCode, wantCode)
			}
			i++
			return nil
		})
		if err != nil || i != len(entries) {
			t.Fatalf("Each: %v after %d entries; want %d", err, i, len(entries))
		}
		if err := c.CheckSignatureFrom(ca.Cert); err != nil {
			t.Fatalf("signature: %v", err)
		}
	}
}

func TestApplyLooksUpEverySerialThroughTheSet(t *testing.T) {
	ca := pkitest.NewCA(t)
	set := newSet(t)
	var changes []revoke.Change
	set.Subscribe(func(c revoke.Change) { changes = append(changes, c) })
	a := newApplier(t, set, nil, ca.Cert)
	var entries []x509.RevocationListEntry
	for i := int64(1); i <= 300; i++ {
		entries = append(entries, pkitest.Revoked(big.NewInt(i*1000), 1))
	}
	res, err := a.Apply(ca.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: entries}), "test")
	if err != nil {
		t.Fatal(err)
	}
	if res.Entries != 300 || res.Added != 300 || res.Sweep || len(changes) != 1 || len(changes[0].Added) != 300 {
		t.Fatalf("result %+v, changes %d; want 300 entries, all listed as added in one change", res, len(changes))
	}
	for i := int64(1); i <= 300; i++ {
		e, ok := set.Lookup(serialKey(ca, i*1000))
		if !ok || e.Reason != "keyCompromise" || e.Source != revoke.CRLSource(res.Issuer, res.IssuerKey) || e.Key != serialKey(ca, i*1000) {
			t.Fatalf("serial %d: %+v %v; want a keyCompromise entry from the CRL", i*1000, e, ok)
		}
	}
	for _, s := range []int64{0, 1, 999, 1001, 300001} {
		if set.Has(serialKey(ca, s)) {
			t.Errorf("serial %d is not in the CRL but the Set says revoked", s)
		}
	}
	// The same serial of another issuer is not revoked, nor the serial key, which names the
	// DN only (it is for operators; a CRL speaks for its key).
	other, _ := pkitest.New("another root")
	if set.Has(serialKey(other, 1000)) {
		t.Error("another issuer's serial 1000 is revoked")
	}
	if k := revoke.SerialKey(ca.Cert.RawSubject, big.NewInt(1000)); set.Has(k) {
		t.Errorf("the CRL revokes %q; want only keyserial keys", k)
	}
	if set.Len() != 300 || len(set.Lists()) != 1 {
		t.Errorf("Len %d, Lists %d; want 300 and 1", set.Len(), len(set.Lists()))
	}
}

// A new CRL is applied as a diff: new serials are reported added, serials that left (a
// released hold) removed, and the rest is not reported at all.
func TestApplyDiff(t *testing.T) {
	ca := pkitest.NewCA(t)
	set := newSet(t)
	var changes []revoke.Change
	set.Subscribe(func(c revoke.Change) { changes = append(changes, c) })
	a := newApplier(t, set, nil, ca.Cert)
	base := []x509.RevocationListEntry{pkitest.Revoked(big.NewInt(1), 1), pkitest.Revoked(big.NewInt(2), 6), pkitest.Revoked(big.NewInt(3), 0)}
	if _, err := a.Apply(ca.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: base}), "test"); err != nil {
		t.Fatal(err)
	}
	// Serial 2 leaves hold; 4 is added. Redis also revokes 3, which the next CRL drops.
	set.Add(revoke.SourceRedis, revoke.Entry{Key: serialKey(ca, 3)})
	next := []x509.RevocationListEntry{base[0], pkitest.Revoked(big.NewInt(4), 1)}
	res, err := a.Apply(ca.MustCRL(t, pkitest.CRLOpts{Number: 2, Entries: next}), "test")
	if err != nil {
		t.Fatal(err)
	}
	last := changes[len(changes)-1]
	if len(last.Added) != 1 || last.Added[0].Key != serialKey(ca, 4) || len(last.Removed) != 1 || last.Removed[0] != serialKey(ca, 2) {
		t.Fatalf("change = %+v; want 4 added and 2 removed (3 stays revoked by Redis)", last)
	}
	if res.Added != 1 || res.Removed != 2 {
		t.Errorf("result added %d removed %d; want 1 and 2 (the diff, before other sources are considered)", res.Added, res.Removed)
	}
	for s, want := range map[int64]bool{1: true, 2: false, 3: true, 4: true} {
		if set.Has(serialKey(ca, s)) != want {
			t.Errorf("serial %d revoked = %v; want %v", s, !want, want)
		}
	}
	// The same CRL again is no change.
	if res, err := a.Apply(ca.MustCRL(t, pkitest.CRLOpts{Number: 2, Entries: next}), "test"); err != nil || !res.Unchanged {
		t.Errorf("same number again: %+v, %v; want unchanged", res, err)
	}
}

// Bad CRLs are refused with a clear error and a metric, and the last good one stays.
func TestApplyRefusesBadCRLs(t *testing.T) {
	ca := pkitest.NewCA(t)
	other, err := pkitest.New("another root")
	if err != nil {
		t.Fatal(err)
	}
	leafCA := ca.MustIntermediate(t, "no crl sign")
	set := newSet(t)
	reg := prometheus.NewRegistry()
	a := newApplier(t, set, reg, ca.Cert, leafCA.Cert)
	good := ca.MustCRL(t, pkitest.CRLOpts{Number: 5, Entries: []x509.RevocationListEntry{pkitest.Revoked(big.NewInt(7), 1)}})
	if _, err := a.Apply(good, "test"); err != nil {
		t.Fatal(err)
	}
	forged := other.MustCRL(t, pkitest.CRLOpts{Number: 6})
	// A CRL that claims ca's name but is signed by other's key.
	impostor := &pkitest.CA{Cert: ca.Cert, Key: other.Key}
	badSig := impostor.MustCRL(t, pkitest.CRLOpts{Number: 6})
	dup := ca.MustCRL(t, pkitest.CRLOpts{Number: 6, Entries: []x509.RevocationListEntry{pkitest.Revoked(big.NewInt(9), 0), pkitest.Revoked(big.NewInt(9), 1)}})
	delta := mustCRLExt(t, ca, 6, pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 27}, Critical: true, Value: []byte{2, 1, 5}})
	unknownCrit := mustCRLExt(t, ca, 6, pkix.Extension{Id: asn1.ObjectIdentifier{1, 2, 3, 4}, Critical: true, Value: []byte{5, 0}})
	for _, c := range []struct {
		name, reason, want string
		der                []byte
	}{
		{"another CA (held until a client presents it)", "pending", "none of the configured CAs", forged},
		{"bad signature", "signature", "signature", badSig},
		{"lower number", "rollback", "lower than the applied 5", ca.MustCRL(t, pkitest.CRLOpts{Number: 4})},
		{"future", "future", "in the future", ca.MustCRL(t, pkitest.CRLOpts{Number: 6, ThisUpdate: time.Now().Add(time.Hour), NextUpdate: time.Now().Add(2 * time.Hour)})},
		{"truncated", "malformed", "malformed", good[:len(good)-10]},
		{"trailing data", "malformed", "trailing", append(append([]byte{}, good...), 0)},
		{"duplicate serial", "unusable", "listed twice", dup},
		{"delta", "unusable", "delta CRL", delta},
		{"unknown critical extension", "unusable", "critical extension 1.2.3.4", unknownCrit},
		{"not a CRL", "malformed", "malformed", []byte("hello")},
		{"PEM of another type", "malformed", "CERTIFICATE", ca.CertPEM()},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := metrictest.Value(t, reg, "guardian_crl_refused_total", "reason", c.reason)
			_, err := a.Apply(c.der, "test")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v; want one saying %q", err, c.want)
			}
			if got := metrictest.Value(t, reg, "guardian_crl_refused_total", "reason", c.reason); got != before+1 {
				t.Errorf("guardian_crl_refused_total{reason=%s} = %v; want %v", c.reason, got, before+1)
			}
			if !set.Has(serialKey(ca, 7)) || set.Len() != 1 {
				t.Errorf("the last good CRL is no longer in force: Len %d", set.Len())
			}
		})
	}
	if !errors.Is(mustErr(a.Apply(ca.MustCRL(t, pkitest.CRLOpts{Number: 1}), "t")), crl.ErrRollback) {
		t.Error("rollback not reported as ErrRollback")
	}
}

func mustErr(_ crl.Result, err error) error { return err }

func mustCRLExt(t *testing.T, ca *pkitest.CA, number int64, ext pkix.Extension) []byte {
	t.Helper()
	der, err := x509.CreateRevocationList(nil, &x509.RevocationList{
		Number: big.NewInt(number), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour),
		ExtraExtensions: []pkix.Extension{ext},
	}, ca.Cert, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// A first load bigger than a Change lists is a sweep, and every serial is still found.
func TestLargeCRLSweeps(t *testing.T) {
	ca := pkitest.NewCA(t)
	set := newSet(t)
	var sweeps int
	set.Subscribe(func(c revoke.Change) {
		if c.Sweep && len(c.Added) == 0 {
			sweeps++
		}
	})
	a := newApplier(t, set, nil, ca.Cert)
	n := revoke.MaxListed + 100
	entries := make([]x509.RevocationListEntry, n)
	for i := range entries {
		entries[i] = pkitest.Revoked(big.NewInt(int64(i+1)), 0)
	}
	if _, err := a.Apply(ca.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: entries}), "t"); err != nil {
		t.Fatal(err)
	}
	if sweeps != 1 {
		t.Fatalf("sweeps = %d; want 1", sweeps)
	}
	for i := 1; i <= n; i++ {
		if !set.Has(serialKey(ca, int64(i))) {
			t.Fatalf("serial %d not found", i)
		}
	}
}

func TestStaleAfterNextUpdate(t *testing.T) {
	ca := pkitest.NewCA(t)
	now := time.Now()
	clk := fakeclock.New(now)
	a, err := crl.NewApplier(crl.Options{Set: newSet(t), Issuers: []*x509.Certificate{ca.Cert}, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Apply(ca.MustCRL(t, pkitest.CRLOpts{Number: 1, ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(time.Hour)}), "t"); err != nil {
		t.Fatal(err)
	}
	if s := a.Stale(); len(s) != 0 {
		t.Fatalf("stale right after loading: %+v", s)
	}
	clk.Advance(2 * time.Hour) // now+2h
	if s := a.Stale(); len(s) != 1 || !strings.Contains(s[0].Subject, "guardian test root") {
		t.Fatalf("Stale() = %+v; want the one CRL, named by its issuer", s)
	}
}
