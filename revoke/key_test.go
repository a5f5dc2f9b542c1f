package revoke_test

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guardian-mtls/guardian/internal/need"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

const h64 = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"

func TestParseKey(t *testing.T) {
	lower := strings.ToLower(h64)
	tests := []struct {
		name, in, want string
	}{
		{"sha256 upper", "sha256:" + h64, "sha256:" + lower},
		{"sha256 0x and colons", "SHA256:0x" + colons(h64), "sha256:" + lower},
		{"spki", "spki:" + lower, "spki:" + lower},
		{"serial leading zeros", "serial:" + h64 + ":000A0b", "serial:" + lower + ":a0b"},
		{"serial zero", "serial:" + lower + ":00", "serial:" + lower + ":0"},
		{"serial colons", "serial:" + lower + ":0a:0b", "serial:" + lower + ":a0b"},
		{"keyserial", "KeySerial:" + h64 + ":0x" + h64 + ":000A:0b", "keyserial:" + lower + ":" + lower + ":a0b"},
		{"uri spiffe", "uri:SPIFFE://Prod/Payments", "uri:spiffe://prod/Payments"},
		{"dns", "dns:API.Example.COM.", "dns:api.example.com"},
		{"email", "email:Alice@Example.COM", "email:Alice@example.com"},
		{"subject spaces", "subject: cn = Alice , o=Acme", "subject:CN=Alice,O=Acme"},
		{"subject multi-valued", "subject:CN=a+OU=b,O=c", "subject:CN=a+OU=b,O=c"},
		{"subject escaped comma", `subject:CN=Doe\, John,O=Acme`, `subject:CN=Doe\, John,O=Acme`},
		{"subject oid", "subject:2.5.4.3=bob", "subject:CN=bob"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := revoke.ParseKey(tt.in)
			if err != nil {
				t.Fatalf("ParseKey(%q): %v", tt.in, err)
			}
			if string(got) != tt.want {
				t.Fatalf("ParseKey(%q) = %q; want %q", tt.in, got, tt.want)
			}
			again, err := revoke.ParseKey(string(got))
			if err != nil || again != got {
				t.Fatalf("ParseKey(%q) = %q, %v; want it unchanged", got, again, err)
			}
		})
	}
}

func colons(h string) string {
	var b strings.Builder
	for i := 0; i < len(h); i += 2 {
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(h[i : i+2])
	}
	return b.String()
}

func TestParseKeyRefuses(t *testing.T) {
	tests := []struct{ name, in, mention string }{
		{"no kind", "deadbeef", "KIND:VALUE"},
		{"unknown kind", "md5:abcd", "unknown kind"},
		{"empty", "sha256:", "empty"},
		{"short hash", "sha256:abcd", "64 hex"},
		{"not hex", "spki:" + strings.Repeat("z", 64), "64 hex"},
		{"serial without issuer", "serial:abcd", "serial:<sha256"},
		{"serial bad hex", "serial:" + h64 + ":xyz", "hex"},
		{"keyserial without key", "keyserial:" + h64 + ":0a", "keyserial:<sha256"},
		{"keyserial short key", "keyserial:" + h64 + ":abcd:0a", "issuer key hash"},
		{"keyserial bad issuer", "keyserial:abcd:" + h64 + ":0a", "issuer hash"},
		{"keyserial bad serial", "keyserial:" + h64 + ":" + h64 + ":xyz", "serial"},
		{"uri no scheme", "uri:/just/a/path", "no scheme"},
		{"dns bad char", "dns:exa mple.com", "invalid character"},
		{"email no at", "email:alice", "local@domain"},
		{"subject no equals", "subject:Alice", "TYPE=VALUE"},
		{"subject unknown attr", "subject:FOO=bar", "attribute type"},
		{"too long", "uri:x://" + strings.Repeat("a", revoke.MaxKeyLen), "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := revoke.ParseKey(tt.in)
			if err == nil {
				t.Fatalf("ParseKey(%q) = %q; want an error", tt.in, k)
			}
			if !errors.Is(err, revoke.ErrBadKey) {
				t.Errorf("error %v does not wrap ErrBadKey", err)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Errorf("error %q does not mention %q", err, tt.mention)
			}
		})
	}
}

func TestKeysOfChain(t *testing.T) {
	root := pkitest.NewCA(t)
	inter := root.MustIntermediate(t, "inter")
	leaf := inter.MustIssue(t, pkitest.Opts{
		CommonName: "payments", Serial: big.NewInt(0x0102),
		URIs: []string{"spiffe://prod/payments"}, DNS: []string{"Pay.Example.com"}, Emails: []string{"ops@Example.com"},
	})
	chain := append(append([]*x509Cert{}, leaf.Chain...), root.Cert)
	keys := revoke.KeysOf(chain)

	want := map[revoke.Key]bool{}
	for i, c := range chain {
		want[revoke.Key("sha256:"+hexSum(c.Raw))] = true
		want[revoke.Key("spki:"+hexSum(c.RawSubjectPublicKeyInfo))] = true
		want[revoke.SerialKey(c.RawIssuer, c.SerialNumber)] = true
		// Each certificate's issuer key: the next one's, and the self-signed root's own.
		issuer := chain[min(i+1, len(chain)-1)]
		want[revoke.Key("keyserial:"+hexSum(c.RawIssuer)+":"+hexSum(issuer.RawSubjectPublicKeyInfo)+":"+c.SerialNumber.Text(16))] = true
	}
	want[revoke.Key("uri:spiffe://prod/payments")] = true
	want[revoke.Key("dns:pay.example.com")] = true
	want[revoke.Key("email:ops@example.com")] = true
	want[revoke.Key("subject:CN=payments,O=guardian test")] = true
	if len(keys) != len(want) {
		t.Fatalf("KeysOf returned %d keys %v; want %d", len(keys), keys, len(want))
	}
	for _, k := range keys {
		if !want[k] {
			t.Errorf("unexpected key %q", k)
		}
		if _, err := revoke.ParseKey(string(k)); err != nil {
			t.Errorf("KeysOf produced a key ParseKey refuses: %v", err)
		}
		if !revoke.Matches([][]*x509Cert{chain}, k) {
			t.Errorf("Matches(chain, %q) = false; want true", k)
		}
	}
	serial := revoke.SerialKey(inter.Cert.RawSubject, big.NewInt(0x102))
	if !strings.HasSuffix(string(serial), ":102") || !want[serial] {
		t.Errorf("leaf serial key %q not derived from the issuer's subject", serial)
	}
	other := root.MustIssue(t, pkitest.Opts{CommonName: "other"})
	for _, k := range revoke.KeysOf(other.Chain) {
		if k.Kind() == revoke.KindSHA256 || k.Kind() == revoke.KindSubject {
			if revoke.Matches([][]*x509Cert{chain}, k) {
				t.Errorf("Matches(chain, %q of another cert) = true", k)
			}
		}
	}
}

// A keyserial key names the issuer's key: a chain's certificate has one when its issuer is
// in the chain, and it never matches a certificate of another key with the same DN and
// serial.
func TestKeySerialKeys(t *testing.T) {
	ca1, ca2 := pkitest.NewCA(t), pkitest.NewCA(t) // one DN, two keys
	one := ca1.MustIssue(t, pkitest.Opts{CommonName: "one", Serial: big.NewInt(5)})
	two := ca2.MustIssue(t, pkitest.Opts{CommonName: "two", Serial: big.NewInt(5)})
	chain1 := []*x509Cert{one.Cert, ca1.Cert}
	chain2 := []*x509Cert{two.Cert, ca2.Cert}
	k1 := revoke.KeySerialKey(ca1.Cert.RawSubject, ca1.Cert.RawSubjectPublicKeyInfo, big.NewInt(5))
	if k, err := revoke.ParseKey(string(k1)); err != nil || k != k1 || k.Kind() != revoke.KindKeySerial {
		t.Fatalf("ParseKey(%q) = %q, %v; want it unchanged", k1, k, err)
	}
	has := func(keys []revoke.Key, k revoke.Key) bool {
		for _, x := range keys {
			if x == k {
				return true
			}
		}
		return false
	}
	if !has(revoke.KeysOf(chain1), k1) || !revoke.Matches([][]*x509Cert{chain1}, k1) {
		t.Errorf("CA1's certificate lacks or does not match its keyserial key %q", k1)
	}
	if has(revoke.KeysOf(chain2), k1) || revoke.Matches([][]*x509Cert{chain2}, k1) {
		t.Errorf("CA2's certificate with the same DN and serial has or matches CA1's keyserial key %q", k1)
	}
	if plain := revoke.SerialKey(ca1.Cert.RawSubject, big.NewInt(5)); !has(revoke.KeysOf(chain2), plain) {
		t.Errorf("the serial key %q, which names the DN only, is not a key of CA2's certificate", plain)
	}
	for _, c := range []struct {
		name  string
		chain []*x509Cert
	}{
		{"the leaf alone", []*x509Cert{one.Cert}},
		{"a next certificate that is not the issuer", []*x509Cert{one.Cert, pkitest.NewCA(t).MustIntermediate(t, "elsewhere").Cert}},
	} {
		for _, k := range revoke.KeysOf(c.chain) {
			if k.Kind() == revoke.KindKeySerial && strings.HasSuffix(string(k), ":5") {
				t.Errorf("%s: the leaf has keyserial key %q; its issuer's key is unknown", c.name, k)
			}
		}
	}
	if _, err := revoke.KeyFor(one.Cert, revoke.KindKeySerial); !errors.Is(err, revoke.ErrNoField) {
		t.Errorf("KeyFor(keyserial) = %v; want ErrNoField (a certificate does not carry its issuer's key)", err)
	}
}

func TestKeyForMissingField(t *testing.T) {
	leaf := pkitest.NewCA(t).MustIssue(t, pkitest.Opts{CommonName: "plain"})
	for _, kind := range []revoke.Kind{revoke.KindURI, revoke.KindDNS, revoke.KindEmail} {
		if k, err := revoke.KeyFor(leaf.Cert, kind); !errors.Is(err, revoke.ErrNoField) {
			t.Errorf("KeyFor(%s) = %q, %v; want ErrNoField", kind, k, err)
		}
	}
}

// The sha256 and spki keys equal what openssl prints for the same certificate.
func TestKeysMatchOpenSSL(t *testing.T) {
	need.Tool(t, "openssl")
	leaf := pkitest.NewCA(t).MustIssue(t, pkitest.Opts{CommonName: "o"})
	dir := t.TempDir()
	f := filepath.Join(dir, "c.pem")
	if err := os.WriteFile(f, leaf.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("openssl", "x509", "-in", f, "-noout", "-fingerprint", "-sha256").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v: %s", err, out)
	}
	fp := strings.TrimSpace(string(out[strings.IndexByte(string(out), '=')+1:]))
	k, err := revoke.ParseKey("sha256:" + fp)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := revoke.KeyFor(leaf.Cert, revoke.KindSHA256); k != want {
		t.Errorf("openssl fingerprint gives %q; KeyFor gives %q", k, want)
	}
	spki, err := exec.Command("sh", "-c", "openssl x509 -in "+f+" -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256 -r").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v: %s", err, spki)
	}
	k, err = revoke.ParseKey("spki:" + strings.Fields(string(spki))[0])
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := revoke.KeyFor(leaf.Cert, revoke.KindSPKI); k != want {
		t.Errorf("openssl SPKI digest gives %q; KeyFor gives %q", k, want)
	}
	subj, err := exec.Command("openssl", "x509", "-in", f, "-noout", "-subject", "-nameopt", "RFC2253").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v: %s", err, subj)
	}
	k, err = revoke.ParseKey("subject:" + strings.TrimSpace(strings.TrimPrefix(string(subj), "subject=")))
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := revoke.KeyFor(leaf.Cert, revoke.KindSubject); k != want {
		t.Errorf("openssl subject gives %q; KeyFor gives %q", k, want)
	}
}

func hexSum(b []byte) string { h := sha256.Sum256(b); return hex.EncodeToString(h[:]) }

func FuzzParseKey(f *testing.F) {
	for _, s := range []string{
		"sha256:" + h64, "serial:" + h64 + ":00ff", "uri:spiffe://a/b", "dns:a.b", "email:a@b",
		"subject:CN=a+OU=b,O=c", `subject:CN=\41\,b`, "subject:2.5.4.3=#0c0161", "spki:0x" + h64,
		"keyserial:" + h64 + ":" + h64 + ":0a:0b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := revoke.ParseKey(s)
		if err != nil {
			if !errors.Is(err, revoke.ErrBadKey) {
				t.Fatalf("error %v does not wrap ErrBadKey", err)
			}
			return
		}
		again, err := revoke.ParseKey(string(k))
		if err != nil {
			t.Fatalf("canonical %q refused: %v", k, err)
		}
		if again != k {
			t.Fatalf("not idempotent: %q -> %q -> %q", s, k, again)
		}
	})
}

// A serial typed by a user (0x, colons, leading zeros) gives the same key as the certificate.
func TestSerialKeyHex(t *testing.T) {
	ca := pkitest.NewCA(t)
	leaf := ca.MustIssue(t, pkitest.Opts{Serial: big.NewInt(0x0102)})
	want, _ := revoke.KeyFor(leaf.Cert, revoke.KindSerial)
	for _, in := range []string{"102", "0x0102", "01:02", "000102"} {
		got, err := revoke.SerialKeyHex(ca.Cert.RawSubject, in)
		if err != nil || got != want {
			t.Errorf("SerialKeyHex(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := revoke.SerialKeyHex(ca.Cert.RawSubject, "xyz"); err == nil {
		t.Error("SerialKeyHex accepted a non-hex serial")
	}
}

// BenchmarkKeysOfChains is the key derivation a handshake pays once: a leaf with a URI SAN
// under an intermediate and a root.
func BenchmarkKeysOfChains(b *testing.B) {
	root := pkitest.NewCA(b)
	inter := root.MustIntermediate(b, "bench intermediate")
	leaf := inter.MustIssue(b, pkitest.Opts{CommonName: "client", URIs: []string{"spiffe://bench/client"}})
	chains := [][]*x509.Certificate{append(leaf.Chain, root.Cert)}
	b.ReportAllocs()
	for b.Loop() {
		if len(revoke.KeysOfChains(chains)) == 0 {
			b.Fatal("no keys")
		}
	}
}
