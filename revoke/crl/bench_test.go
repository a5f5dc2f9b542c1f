package crl_test

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"math/big"
	"runtime"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/crl"
)

// bigCRL builds and signs a CRL of n entries as a large CA publishes it: 16-byte serials
// that look random (a leading zero byte in DER when the top bit is set) and a
// keyCompromise reason on each. Entry i is the same in every CRL bigCRL makes, so a CRL of
// n+k entries is one of n to which the CA appended k. It writes the DER itself: crypto/x509's
// CreateRevocationList takes most of a benchmark's time to marshal a million entries.
func bigCRL(tb testing.TB, ca *pkitest.CA, n int, number int64) []byte {
	tb.Helper()
	now := time.Now().UTC().Truncate(time.Second)
	revokedAt := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	utc := func(b *cryptobyte.Builder, t time.Time) {
		b.AddASN1(cbasn1.UTCTime, func(b *cryptobyte.Builder) { b.AddBytes([]byte(t.Format("060102150405Z"))) })
	}
	ecdsaSHA256 := func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier([]int{1, 2, 840, 10045, 4, 3, 2})
		})
	}
	var tbs cryptobyte.Builder
	tbs.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Int64(1)
		ecdsaSHA256(b)
		b.AddBytes(ca.Cert.RawSubject)
		utc(b, now.Add(-time.Minute))
		utc(b, now.Add(24*time.Hour))
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			for i := 0; i < n; i++ {
				h := sha256.Sum256([]byte(fmt.Sprint(i)))
				serial := h[:16]
				serial[0] |= 1 // no leading zero byte of its own
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1BigInt(new(big.Int).SetBytes(serial))
					utc(b, revokedAt)
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddASN1ObjectIdentifier([]int{2, 5, 29, 21})
							b.AddASN1(cbasn1.OCTET_STRING, func(b *cryptobyte.Builder) { b.AddASN1Enum(1) })
						})
					})
				})
			}
		})
		b.AddASN1(cbasn1.Tag(0).ContextSpecific().Constructed(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier([]int{2, 5, 29, 20})
					b.AddASN1(cbasn1.OCTET_STRING, func(b *cryptobyte.Builder) { b.AddASN1Int64(number) })
				})
			})
		})
	})
	tbsDER := tbs.BytesOrPanic()
	digest := sha256.Sum256(tbsDER)
	sig, err := ca.Key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		tb.Fatal(err)
	}
	var out cryptobyte.Builder
	out.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbsDER)
		ecdsaSHA256(b)
		b.AddASN1BitString(sig)
	})
	return out.BytesOrPanic()
}

var benchSizes = []int{100_000, 1_000_000}

// BenchmarkParseEntries reads every entry of a CRL: this package's streaming parser (Parse
// and Each) beside crypto/x509's ParseRevocationList on the same DER.
func BenchmarkParseEntries(b *testing.B) {
	ca := pkitest.NewCA(b)
	for _, n := range benchSizes {
		der := bigCRL(b, ca, n, 1)
		b.Run(fmt.Sprintf("entries=%d/guardian", n), func(b *testing.B) {
			b.SetBytes(int64(len(der)))
			for i := 0; i < b.N; i++ {
				c, err := crl.Parse(der)
				if err != nil {
					b.Fatal(err)
				}
				got := 0
				if err := c.Each(func(*crl.Entry) error { got++; return nil }); err != nil || got != n {
					b.Fatalf("read %d entries (%v); want %d", got, err, n)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mentries/s")
		})
		b.Run(fmt.Sprintf("entries=%d/stdlib", n), func(b *testing.B) {
			b.SetBytes(int64(len(der)))
			for i := 0; i < b.N; i++ {
				rl, err := x509.ParseRevocationList(der)
				if err != nil || len(rl.RevokedCertificateEntries) != n {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mentries/s")
		})
	}
}

// BenchmarkApply is a CRL's first load into an empty Set: parse, verify the signature,
// index, diff (a sweep) and swap in. It reports the heap the Set retains per entry, the
// CRL's DER included, and the bytes allocated during Apply as a multiple of the CRL's size
// (an upper bound on its peak beyond the DER).
func BenchmarkApply(b *testing.B) {
	ca := pkitest.NewCA(b)
	for _, n := range benchSizes {
		der := bigCRL(b, ca, n, 1)
		b.Run(fmt.Sprintf("entries=%d", n), func(b *testing.B) {
			var retained, allocated float64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				set, err := revoke.NewSet(revoke.SetOptions{})
				if err != nil {
					b.Fatal(err)
				}
				a, err := crl.NewApplier(crl.Options{Set: set, Issuers: []*x509.Certificate{ca.Cert}})
				if err != nil {
					b.Fatal(err)
				}
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				b.StartTimer()
				res, err := a.Apply(der, "bench")
				b.StopTimer()
				if err != nil || res.Entries != n || !res.Sweep {
					b.Fatalf("%+v %v", res, err)
				}
				runtime.ReadMemStats(&after)
				allocated = float64(after.TotalAlloc - before.TotalAlloc)
				runtime.GC()
				runtime.ReadMemStats(&after)
				retained = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) + float64(len(der))
				runtime.KeepAlive(set)
				b.StartTimer()
			}
			b.ReportMetric(retained/float64(n), "retained-B/entry")
			b.ReportMetric(float64(len(der))/float64(n), "DER-B/entry")
			b.ReportMetric(1+allocated/float64(len(der)), "peak/CRL-size")
		})
	}
}

// BenchmarkApplyUpdate applies the next CRL of a CA that revoked 100 more certificates
// since its CRL of a million entries: what a node does at every refresh.
func BenchmarkApplyUpdate(b *testing.B) {
	ca := pkitest.NewCA(b)
	const n = 1_000_000
	first, next := bigCRL(b, ca, n, 1), bigCRL(b, ca, n+100, 2)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		set, _ := revoke.NewSet(revoke.SetOptions{})
		a, err := crl.NewApplier(crl.Options{Set: set, Issuers: []*x509.Certificate{ca.Cert}})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := a.Apply(first, "bench"); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		res, err := a.Apply(next, "bench")
		if err != nil || res.Added != 100 || res.Removed != 0 || res.Sweep {
			b.Fatalf("%+v %v; want 100 added", res, err)
		}
	}
}

// BenchmarkLookup is a handshake's lookup through the Set with a million-entry CRL in it: a
// keyserial key of the CRL's CA key, missed (the common case) and hit, and a serial key,
// which the CRL's list is not asked about.
func BenchmarkLookup(b *testing.B) {
	ca := pkitest.NewCA(b)
	der := bigCRL(b, ca, 1_000_000, 1)
	set, _ := revoke.NewSet(revoke.SetOptions{})
	a, _ := crl.NewApplier(crl.Options{Set: set, Issuers: []*x509.Certificate{ca.Cert}})
	if _, err := a.Apply(der, "bench"); err != nil {
		b.Fatal(err)
	}
	c, _ := crl.Parse(der)
	var hits []revoke.Key
	c.Each(func(e *crl.Entry) error {
		if len(hits) < 1024 {
			hits = append(hits, revoke.KeySerialKey(ca.Cert.RawSubject, ca.Cert.RawSubjectPublicKeyInfo, new(big.Int).SetBytes(e.Serial)))
		}
		return nil
	})
	misses, serialMisses := make([]revoke.Key, 1024), make([]revoke.Key, 1024)
	for i := range misses {
		misses[i] = revoke.KeySerialKey(ca.Cert.RawSubject, ca.Cert.RawSubjectPublicKeyInfo, big.NewInt(int64(i)*7919+3))
		serialMisses[i] = revoke.SerialKey(ca.Cert.RawSubject, big.NewInt(int64(i)*7919+3))
	}
	for _, c := range []struct {
		name  string
		keys  []revoke.Key
		found bool
	}{{"miss", misses, false}, {"hit", hits, true}, {"serial-key-miss", serialMisses, false}} {
		b.Run(c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if set.Has(c.keys[i&1023]) != c.found {
					b.Fatal("wrong answer")
				}
			}
		})
	}
}

// BenchmarkHandshakeCheck is the listener's revocation check of a handshake whose client
// (not revoked) is under a CA with a million-entry CRL in force: its chain's keys derived
// (KeysOfChains) and looked up (AnyOf), and the lookups alone.
func BenchmarkHandshakeCheck(b *testing.B) {
	root := pkitest.NewCA(b)
	inter := root.MustIntermediate(b, "bench intermediate")
	set, _ := revoke.NewSet(revoke.SetOptions{})
	a, _ := crl.NewApplier(crl.Options{Set: set, Issuers: []*x509.Certificate{root.Cert, inter.Cert}})
	if _, err := a.Apply(bigCRL(b, inter, 1_000_000, 1), "bench"); err != nil {
		b.Fatal(err)
	}
	leaf := inter.MustIssue(b, pkitest.Opts{CommonName: "client", URIs: []string{"spiffe://bench/client"}})
	chains := [][]*x509.Certificate{append(leaf.Chain, root.Cert)}
	keys := revoke.KeysOfChains(chains)
	b.Run("keys+lookups", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, hit := set.AnyOf(revoke.KeysOfChains(chains)); hit {
				b.Fatal("revoked")
			}
		}
	})
	b.Run("lookups", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, hit := set.AnyOf(keys); hit {
				b.Fatal("revoked")
			}
		}
		b.ReportMetric(float64(len(keys)), "keys")
	})
}
