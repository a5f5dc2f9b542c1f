package revoke

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"unicode/utf8"
)

// Kind names one way a certificate can be denied.
type Kind string

// The key kinds (docs/architecture.md, "Keys").
const (
	KindSerial Kind = "serial"
	// KindKeySerial names a certificate by its issuer's DN and public key and its serial:
	// what a CRL, which speaks for the one CA key that signed it, denies.
	KindKeySerial Kind = "keyserial"
	KindSHA256    Kind = "sha256"
	KindSPKI      Kind = "spki"
	KindURI       Kind = "uri"
	KindDNS       Kind = "dns"
	KindEmail     Kind = "email"
	KindSubject   Kind = "subject"
)

// AllKinds returns every key kind, in the order KeysOf emits them: a new slice on every
// call.
func AllKinds() []Kind {
	return []Kind{KindSerial, KindKeySerial, KindSHA256, KindSPKI, KindURI, KindDNS, KindEmail, KindSubject}
}

// MaxKeyLen bounds a key's length; longer input is refused rather than stored.
const MaxKeyLen = 4096

// ErrBadKey is wrapped by every error ParseKey returns.
var ErrBadKey = errors.New("revoke: bad key")

// ErrNoField is returned by KeyFor when a certificate lacks the field a kind needs.
var ErrNoField = errors.New("revoke: certificate has no such field")

// Key is a canonical, printable string that denies a certificate, e.g.
// "sha256:9f86…" or "uri:spiffe://prod/payments". Build one with ParseKey, KeyFor or
// KeysOf; two keys are the same denial exactly when their strings are equal.
type Key string

// Kind returns the key's kind, or "" for a key that was not built by this package.
func (k Key) Kind() Kind {
	i := strings.IndexByte(string(k), ':')
	if i < 0 {
		return ""
	}
	return Kind(k[:i])
}

// Value returns the part after the kind.
func (k Key) Value() string {
	i := strings.IndexByte(string(k), ':')
	return string(k[i+1:])
}

func (k Key) String() string { return string(k) }

func badKey(s, why string, args ...any) error {
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return fmt.Errorf("%w %q: %s", ErrBadKey, s, fmt.Sprintf(why, args...))
}

// ParseKey validates user input and returns its canonical form: lower-case hex without
// "0x" or leading zeros, lower-case DNS names and URI hosts, and subjects re-serialised in
// RFC 4514 form. It never accepts what it cannot canonicalise.
func ParseKey(s string) (Key, error) {
	if len(s) > MaxKeyLen {
		return "", badKey(s, "longer than %d bytes", MaxKeyLen)
	}
	if !printable(s) {
		return "", badKey(s, "not printable UTF-8; keys hold no control characters")
	}
	i := strings.IndexByte(s, ':')
	if i < 0 {
		return "", badKey(s, "want KIND:VALUE with KIND one of %s", kindList())
	}
	kind, v := Kind(strings.ToLower(strings.Trim(s[:i], " "))), strings.TrimLeft(s[i+1:], " ")
	if kind != KindSubject {
		v = strings.TrimRight(v, " ")
	}
	if v == "" {
		return "", badKey(s, "empty value")
	}
	switch kind {
	case KindSerial:
		j := strings.IndexByte(v, ':')
		if j < 0 {
			return "", badKey(s, "want serial:<sha256 of issuer DN, 64 hex>:<serial hex>")
		}
		issuer, err := hex32(v[:j])
		if err != nil {
			return "", badKey(s, "issuer hash: %v", err)
		}
		serial, err := serialHex(v[j+1:])
		if err != nil {
			return "", badKey(s, "serial: %v", err)
		}
		return Key("serial:" + issuer + ":" + serial), nil
	case KindKeySerial:
		parts := strings.SplitN(v, ":", 3)
		if len(parts) != 3 {
			return "", badKey(s, "want keyserial:<sha256 of issuer DN, 64 hex>:<sha256 of issuer SPKI, 64 hex>:<serial hex>")
		}
		issuer, err := hex32(parts[0])
		if err != nil {
			return "", badKey(s, "issuer hash: %v", err)
		}
		key, err := hex32(parts[1])
		if err != nil {
			return "", badKey(s, "issuer key hash: %v", err)
		}
		serial, err := serialHex(parts[2])
		if err != nil {
			return "", badKey(s, "serial: %v", err)
		}
		return Key("keyserial:" + issuer + ":" + key + ":" + serial), nil
	case KindSHA256, KindSPKI:
		h, err := hex32(v)
		if err != nil {
			return "", badKey(s, "%v", err)
		}
		return Key(string(kind) + ":" + h), nil
	case KindURI:
		u, err := canonURI(v)
		if err != nil {
			return "", badKey(s, "%v", err)
		}
		return Key("uri:" + u), nil
	case KindDNS:
		d, err := canonDNS(v)
		if err != nil {
			return "", badKey(s, "%v", err)
		}
		return Key("dns:" + d), nil
	case KindEmail:
		e, err := canonEmail(v)
		if err != nil {
			return "", badKey(s, "%v", err)
		}
		return Key("email:" + e), nil
	case KindSubject:
		dn, err := canonSubject(v)
		if err != nil {
			return "", badKey(s, "%v", err)
		}
		return Key("subject:" + dn), nil
	}
	return "", badKey(s, "unknown kind %q; want one of %s", kind, kindList())
}

// MustParseKey is ParseKey for constants in tests and examples; it panics on bad input.
func MustParseKey(s string) Key {
	k, err := ParseKey(s)
	if err != nil {
		panic(err)
	}
	return k
}

func kindList() string {
	var b strings.Builder
	for i, k := range AllKinds() {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(string(k))
	}
	return b.String()
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

func stripHexPrefix(s string) string {
	if len(s) >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
		return s[2:]
	}
	return s
}

// hex32 accepts a SHA-256 in hex, with optional colons (as openssl prints fingerprints).
func hex32(s string) (string, error) {
	s = strings.ReplaceAll(stripHexPrefix(s), ":", "")
	if len(s) != 64 || !isHex(s) {
		return "", fmt.Errorf("want 64 hex digits (a SHA-256), got %d characters", len(s))
	}
	return strings.ToLower(s), nil
}

func serialHex(s string) (string, error) {
	s = strings.ReplaceAll(stripHexPrefix(s), ":", "")
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	if s == "" || !isHex(s) {
		return "", errors.New("want hex digits")
	}
	if len(s) > 80 {
		return "", errors.New("longer than 40 bytes")
	}
	s = strings.TrimLeft(strings.ToLower(s), "0")
	if s == "" {
		return "0", nil
	}
	if neg {
		s = "-" + s
	}
	return s, nil
}

func serialString(n *big.Int) string {
	if n == nil {
		return "0"
	}
	return n.Text(16)
}

func canonURI(v string) (string, error) {
	u, err := url.Parse(v)
	if err != nil {
		return "", err
	}
	return uriString(u)
}

func uriString(u *url.URL) (string, error) {
	if u.Scheme == "" {
		return "", errors.New("URI has no scheme")
	}
	c := *u
	c.Scheme = strings.ToLower(c.Scheme)
	c.Host = strings.ToLower(c.Host)
	s := c.String()
	if strings.ContainsAny(s, " ") || !printable(s) {
		return "", errors.New("URI contains white space or control characters")
	}
	return s, nil
}

func canonDNS(v string) (string, error) {
	d := strings.TrimSuffix(strings.ToLower(v), ".")
	if d == "" || len(d) > 253 {
		return "", errors.New("DNS name is empty or longer than 253 bytes")
	}
	if d[0] == '.' || d[len(d)-1] == '.' || strings.Contains(d, "..") {
		return "", errors.New("DNS name has an empty label")
	}
	for i := 0; i < len(d); i++ {
		c := d[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '*' || c == '_') {
			return "", fmt.Errorf("DNS name has invalid character %q", c)
		}
	}
	return d, nil
}

func canonEmail(v string) (string, error) {
	at := strings.LastIndexByte(v, '@')
	if at <= 0 || at == len(v)-1 {
		return "", errors.New("want local@domain")
	}
	if strings.ContainsAny(v, " <>") || !printable(v) {
		return "", errors.New("email contains white space, control characters or angle brackets")
	}
	// RFC 5321: the local part is case-sensitive, the domain is not.
	return v[:at] + "@" + strings.ToLower(v[at+1:]), nil
}

// Hex-encoded SHA-256.
func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// SerialKey returns the serial key of the certificate with the given serial number issued
// by the CA whose subject DN (DER) is issuerDN.
func SerialKey(issuerDN []byte, serial *big.Int) Key {
	return SerialKeyOf(IssuerHash(issuerDN), serial)
}

// IssuerHash is the middle part of the serial keys of the CA whose subject DN (DER) is
// issuerDN: its SHA-256, in hex.
func IssuerHash(issuerDN []byte) string { return sum(issuerDN) }

// SerialKeyOf is SerialKey for an issuer whose IssuerHash is known.
func SerialKeyOf(issuerHash string, serial *big.Int) Key {
	return Key("serial:" + issuerHash + ":" + serialString(serial))
}

// SPKIHash is the SHA-256 (hex) of a SubjectPublicKeyInfo (DER): the value of the key's spki
// key, and the middle of the keyserial keys of the certificates it signed.
func SPKIHash(spki []byte) string { return sum(spki) }

// KeySerialKey returns the keyserial key of the certificate with the given serial number
// issued by the CA whose subject DN (DER) is issuerDN and whose public key is issuerSPKI
// (DER). Unlike a serial key, it never matches a certificate of another CA key with the same
// DN.
func KeySerialKey(issuerDN, issuerSPKI []byte, serial *big.Int) Key {
	return KeySerialKeyOf(IssuerHash(issuerDN), SPKIHash(issuerSPKI), serial)
}

// KeySerialKeyOf is KeySerialKey for an issuer whose IssuerHash and SPKIHash are known.
func KeySerialKeyOf(issuerHash, keyHash string, serial *big.Int) Key {
	return Key("keyserial:" + issuerHash + ":" + keyHash + ":" + serialString(serial))
}

// SerialKeyHex returns the serial key of the certificate whose issuer has subject DN (DER)
// issuerDN and whose serial number is serialHex, as a user types it (0x, colons and leading
// zeros allowed).
func SerialKeyHex(issuerDN []byte, serialHex string) (Key, error) {
	return ParseKey("serial:" + sum(issuerDN) + ":" + serialHex)
}

// KeyFor returns the key of one kind for cert. For uri, dns and email it uses the first
// SAN of that type; it returns an error wrapping ErrNoField when the certificate has none,
// and for keyserial, whose issuer key no certificate carries (KeysOf derives it from a chain).
func KeyFor(cert *x509.Certificate, kind Kind) (Key, error) {
	switch kind {
	case KindSerial:
		return SerialKey(cert.RawIssuer, cert.SerialNumber), nil
	case KindKeySerial:
		return "", fmt.Errorf("%w: a keyserial key needs the issuer's public key, which certificate %q does not carry; use KeySerialKey or KeysOf",
			ErrNoField, cert.Subject)
	case KindSHA256:
		return Key("sha256:" + sum(cert.Raw)), nil
	case KindSPKI:
		return Key("spki:" + sum(cert.RawSubjectPublicKeyInfo)), nil
	case KindURI:
		for _, u := range cert.URIs {
			if s, err := uriString(u); err == nil {
				return Key("uri:" + s), nil
			}
		}
		return "", fmt.Errorf("%w: no URI SAN in certificate %q", ErrNoField, cert.Subject)
	case KindDNS:
		for _, d := range cert.DNSNames {
			if s, err := canonDNS(d); err == nil {
				return Key("dns:" + s), nil
			}
		}
		return "", fmt.Errorf("%w: no DNS SAN in certificate %q", ErrNoField, cert.Subject)
	case KindEmail:
		for _, e := range cert.EmailAddresses {
			if s, err := canonEmail(e); err == nil {
				return Key("email:" + s), nil
			}
		}
		return "", fmt.Errorf("%w: no email SAN in certificate %q", ErrNoField, cert.Subject)
	case KindSubject:
		s, ok := subjectString(cert.RawSubject)
		if !ok {
			return "", fmt.Errorf("%w: empty subject in certificate with serial %s", ErrNoField, serialString(cert.SerialNumber))
		}
		return Key("subject:" + s), nil
	}
	return "", fmt.Errorf("%w %q: unknown kind", ErrBadKey, kind)
}

// subjectString renders a DER subject in RFC 4514 form, keeping multi-valued RDNs and order.
func subjectString(raw []byte) (string, bool) {
	var seq pkix.RDNSequence
	if rest, err := asn1.Unmarshal(raw, &seq); err != nil || len(rest) != 0 || len(seq) == 0 {
		return "", false
	}
	s := seq.String()
	return s, s != "" && printable(s)
}

// printable reports whether s can be a key: valid UTF-8 without control characters.
// Certificates can carry anything; a key that ParseKey would refuse is never produced.
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return false
		}
	}
	return true
}

// KeysOf returns every key a connection presenting chain can be hit by: the serial,
// keyserial, sha256 and spki keys of every certificate in the chain (leaf first, then each
// CA), and the leaf's uri, dns, email and subject keys. Duplicates are removed. A
// certificate has a keyserial key when its issuer is in the chain: the next certificate, or
// itself when it is the last and self-issued. CRLs and OCSP deny by keyserial key, so pass
// the verified chain (tls.ConnectionState.VerifiedChains, ConnInfo.Chains): a leaf alone
// matches none of their revocations.
func KeysOf(chain []*x509.Certificate) []Key {
	if len(chain) == 0 {
		return nil
	}
	var buf [8]string
	spki := buf[:0]
	for _, c := range chain {
		spki = append(spki, sum(c.RawSubjectPublicKeyInfo))
	}
	keys := make([]Key, 0, 4*len(chain)+4)
	for i, c := range chain {
		issuer, serial := sum(c.RawIssuer), serialString(c.SerialNumber)
		keys = append(keys, Key("serial:"+issuer+":"+serial))
		if j, ok := issuerIn(chain, i); ok {
			keys = append(keys, Key("keyserial:"+issuer+":"+spki[j]+":"+serial))
		}
		keys = append(keys, Key("sha256:"+sum(c.Raw)), Key("spki:"+spki[i]))
	}
	keys = append(keys, identityKeys(chain[0])...)
	return dedup(keys)
}

// issuerIn returns the index of the certificate that issued chain[i] in chain, leaf first:
// the next certificate, when its subject is chain[i]'s issuer, or chain[i] itself when it is
// the last and self-issued (a root). In a verified chain the next certificate's key signed
// chain[i]; in an unverified one it is only what the client claims. A last certificate that
// is not self-issued (an intermediate trusted as a root) has no issuer in the chain.
func issuerIn(chain []*x509.Certificate, i int) (int, bool) {
	c := chain[i]
	if i+1 < len(chain) {
		return i + 1, bytes.Equal(chain[i+1].RawSubject, c.RawIssuer)
	}
	return i, bytes.Equal(c.RawSubject, c.RawIssuer)
}

// KeysOfChains is KeysOf over the union of several verified chains (a cross-signed
// certificate verifies along more than one path; revoking a CA on any of them counts).
func KeysOfChains(chains [][]*x509.Certificate) []Key {
	switch len(chains) {
	case 0:
		return nil
	case 1:
		return KeysOf(chains[0])
	}
	var keys []Key
	for _, ch := range chains {
		keys = append(keys, KeysOf(ch)...)
	}
	return dedup(keys)
}

func identityKeys(leaf *x509.Certificate) []Key {
	var keys []Key
	for _, u := range leaf.URIs {
		if s, err := uriString(u); err == nil {
			keys = append(keys, Key("uri:"+s))
		}
	}
	for _, d := range leaf.DNSNames {
		if s, err := canonDNS(d); err == nil {
			keys = append(keys, Key("dns:"+s))
		}
	}
	for _, e := range leaf.EmailAddresses {
		if s, err := canonEmail(e); err == nil {
			keys = append(keys, Key("email:"+s))
		}
	}
	if s, ok := subjectString(leaf.RawSubject); ok {
		keys = append(keys, Key("subject:"+s))
	}
	return keys
}

func dedup(keys []Key) []Key {
	out := keys[:0]
outer:
	for i, k := range keys {
		for _, p := range keys[:i] {
			if p == k {
				continue outer
			}
		}
		out = append(out, k)
	}
	return out
}

// Matches reports whether any of chains can be hit by k, computing only what k's kind
// needs. It is the full check behind a hash hit in the connection registry.
func Matches(chains [][]*x509.Certificate, k Key) bool {
	for _, chain := range chains {
		if len(chain) == 0 {
			continue
		}
		switch k.Kind() {
		case KindKeySerial:
			for i, c := range chain {
				if !strings.HasSuffix(string(k), ":"+serialString(c.SerialNumber)) {
					continue
				}
				if j, ok := issuerIn(chain, i); ok && KeySerialKey(c.RawIssuer, chain[j].RawSubjectPublicKeyInfo, c.SerialNumber) == k {
					return true
				}
			}
		case KindSerial, KindSHA256, KindSPKI:
			for _, c := range chain {
				if got, _ := KeyFor(c, k.Kind()); got == k {
					return true
				}
			}
		default:
			for _, got := range identityKeys(chain[0]) {
				if got == k {
					return true
				}
			}
		}
	}
	return false
}
