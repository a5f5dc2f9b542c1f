package crl

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/guardian-mtls/guardian/revoke"
)

// ErrMalformed is wrapped by every error Parse and Each return for bad DER.
var ErrMalformed = errors.New("crl: malformed CRL")

// CRL is a parsed X.509 CRL, not yet trusted: CheckSignatureFrom tells whether its issuer
// signed it. The revoked entries stay in Raw and are read on demand by Each, so parsing a
// CRL allocates nothing per entry.
type CRL struct {
	Raw                []byte // the whole CRL, DER
	RawTBS             []byte // the signed part
	RawIssuer          []byte // the issuer's Name, DER
	SignatureAlgorithm x509.SignatureAlgorithm
	Signature          []byte
	ThisUpdate         time.Time
	NextUpdate         time.Time // zero when absent
	Number             *big.Int  // the cRLNumber extension; nil when absent
	AuthorityKeyID     []byte
	// Scope is the issuingDistributionPoint extension's value, or nil. One issuer's CRLs
	// with different scopes are separate lists.
	Scope []byte

	entries    []byte // contents of revokedCertificates
	entriesOff int    // offset of entries in Raw
}

// Entry is one revoked certificate as Each yields it. Serial aliases the CRL's bytes (or
// a scratch buffer, for a negative serial) and is valid only during the callback.
type Entry struct {
	// Serial is the magnitude of the serial number, big-endian without leading zeros (empty
	// for zero); Negative is its sign.
	Serial   []byte
	Negative bool
	// RevokedAt is the revocationDate.
	RevokedAt time.Time
	// ReasonCode is the entry's CRLReason code as it carries it, or -1 when it carries none.
	// A code RFC 5280 does not define (7, above 10) is kept: Reason names it unspecified,
	// as an OCSP answer's is (revoke.ReasonFromCode).
	ReasonCode int
	// Offset is where the entry starts in the CRL's Raw.
	Offset int
}

// Reason returns the entry's reason name; "unspecified" when it has none.
func (e *Entry) Reason() revoke.Reason { return revoke.ReasonFromCode(e.ReasonCode) }

// maxSerialLen is the longest serial, in bytes, that a serial key can carry.
const maxSerialLen = 40

// Object identifiers, as the bytes of their DER contents.
var (
	oidCRLNumber      = []byte{0x55, 0x1d, 0x14} // 2.5.29.20
	oidReasonCode     = []byte{0x55, 0x1d, 0x15} // 2.5.29.21
	oidInvalidityDate = []byte{0x55, 0x1d, 0x18} // 2.5.29.24
	oidDeltaIndicator = []byte{0x55, 0x1d, 0x1b} // 2.5.29.27
	oidIssuingDP      = []byte{0x55, 0x1d, 0x1c} // 2.5.29.28
	oidCertIssuer     = []byte{0x55, 0x1d, 0x1d} // 2.5.29.29
	oidAuthorityKeyID = []byte{0x55, 0x1d, 0x23} // 2.5.29.35
	oidFreshestCRL    = []byte{0x55, 0x1d, 0x2e} // 2.5.29.46
	oidAuthorityInfo  = []byte{0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x01}
)

func malformed(what string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(what, args...))
}

// Parse parses a CRL in DER or PEM ("X509 CRL"). It reads everything but the revoked
// entries, which Each reads; it refuses what guardian cannot apply as a complete list: delta
// CRLs, indirect CRLs, CRLs partitioned by reason, and unknown critical extensions.
func Parse(b []byte) (*CRL, error) {
	if bytes.HasPrefix(bytes.TrimLeft(b, " \t\r\n"), []byte("-----BEGIN")) {
		blk, _ := pem.Decode(b)
		if blk == nil {
			return nil, malformed("PEM without a complete block")
		}
		if blk.Type != "X509 CRL" {
			return nil, malformed("PEM block is %q, not \"X509 CRL\"", blk.Type)
		}
		b = blk.Bytes
	}
	c := &CRL{Raw: b}
	input := cryptobyte.String(b)
	var outer cryptobyte.String
	if !input.ReadASN1(&outer, cbasn1.SEQUENCE) {
		return nil, malformed("not a DER SEQUENCE (truncated or not a CRL)")
	}
	if !input.Empty() {
		return nil, malformed("%d bytes of trailing data", len(input))
	}
	var tbs, sigAlg cryptobyte.String
	if !outer.ReadASN1Element(&tbs, cbasn1.SEQUENCE) {
		return nil, malformed("tbsCertList")
	}
	c.RawTBS = tbs
	if !outer.ReadASN1Element(&sigAlg, cbasn1.SEQUENCE) {
		return nil, malformed("signatureAlgorithm")
	}
	var sig []byte
	var sigBits cryptobyte.String
	if !outer.ReadASN1(&sigBits, cbasn1.BIT_STRING) || len(sigBits) == 0 || sigBits[0] != 0 || !outer.Empty() {
		return nil, malformed("signature")
	}
	sig = sigBits[1:]
	c.Signature = sig
	c.SignatureAlgorithm = signatureAlgorithm(sigAlg)

	var body cryptobyte.String
	if !tbs.ReadASN1(&body, cbasn1.SEQUENCE) {
		return nil, malformed("tbsCertList")
	}
	if body.PeekASN1Tag(cbasn1.INTEGER) {
		var v int
		if !body.ReadASN1Integer(&v) {
			return nil, malformed("version")
		}
		if v != 1 {
			return nil, malformed("version %d; want 2 (or absent, for version 1)", v+1)
		}
	}
	var innerAlg cryptobyte.String
	if !body.ReadASN1Element(&innerAlg, cbasn1.SEQUENCE) {
		return nil, malformed("tbsCertList signature")
	}
	if !bytes.Equal(innerAlg, sigAlg) {
		return nil, malformed("the signature algorithm inside the signed part differs from the outer one")
	}
	var issuer cryptobyte.String
	if !body.ReadASN1Element(&issuer, cbasn1.SEQUENCE) {
		return nil, malformed("issuer")
	}
	c.RawIssuer = issuer
	var err error
	if c.ThisUpdate, err = readTime(&body); err != nil {
		return nil, malformed("thisUpdate: %v", err)
	}
	if body.PeekASN1Tag(cbasn1.UTCTime) || body.PeekASN1Tag(cbasn1.GeneralizedTime) {
		if c.NextUpdate, err = readTime(&body); err != nil {
			return nil, malformed("nextUpdate: %v", err)
		}
	}
	if body.PeekASN1Tag(cbasn1.SEQUENCE) {
		var revoked cryptobyte.String
		if !body.ReadASN1(&revoked, cbasn1.SEQUENCE) {
			return nil, malformed("revokedCertificates")
		}
		c.entries = revoked
		// cryptobyte reads by reslicing, so a field shares b's backing array to its end.
		c.entriesOff = cap(b) - cap(revoked)
	}
	extTag := cbasn1.Tag(0).ContextSpecific().Constructed()
	if body.PeekASN1Tag(extTag) {
		var explicit, exts cryptobyte.String
		if !body.ReadASN1(&explicit, extTag) || !explicit.ReadASN1(&exts, cbasn1.SEQUENCE) || !explicit.Empty() {
			return nil, malformed("crlExtensions")
		}
		if err := c.readExtensions(exts); err != nil {
			return nil, err
		}
	}
	if !body.Empty() {
		return nil, malformed("unexpected data after the CRL's fields")
	}
	return c, nil
}

// readExtension reads one Extension: its OID's contents, criticality and value.
func readExtension(s *cryptobyte.String) (oid []byte, critical bool, value cryptobyte.String, ok bool) {
	var ext cryptobyte.String
	var o cryptobyte.String
	if !s.ReadASN1(&ext, cbasn1.SEQUENCE) || !ext.ReadASN1(&o, cbasn1.OBJECT_IDENTIFIER) {
		return nil, false, nil, false
	}
	if ext.PeekASN1Tag(cbasn1.BOOLEAN) && !ext.ReadASN1Boolean(&critical) {
		return nil, false, nil, false
	}
	if !ext.ReadASN1(&value, cbasn1.OCTET_STRING) || !ext.Empty() {
		return nil, false, nil, false
	}
	return o, critical, value, true
}

func (c *CRL) readExtensions(exts cryptobyte.String) error {
	seen := map[string]bool{}
	for !exts.Empty() {
		oid, critical, val, ok := readExtension(&exts)
		if !ok {
			return malformed("crlExtensions: an extension")
		}
		if seen[string(oid)] {
			return malformed("crlExtensions: extension %s appears twice", oidString(oid))
		}
		seen[string(oid)] = true
		switch {
		case bytes.Equal(oid, oidCRLNumber):
			n := new(big.Int)
			if !val.ReadASN1Integer(n) || !val.Empty() || n.Sign() < 0 {
				return malformed("cRLNumber")
			}
			c.Number = n
		case bytes.Equal(oid, oidAuthorityKeyID):
			var aki, id cryptobyte.String
			if !val.ReadASN1(&aki, cbasn1.SEQUENCE) {
				return malformed("authorityKeyIdentifier")
			}
			if aki.PeekASN1Tag(cbasn1.Tag(0).ContextSpecific()) {
				if !aki.ReadASN1(&id, cbasn1.Tag(0).ContextSpecific()) {
					return malformed("authorityKeyIdentifier")
				}
				c.AuthorityKeyID = id
			}
		case bytes.Equal(oid, oidDeltaIndicator):
			return errors.New("crl: a delta CRL; guardian applies complete CRLs only: configure the issuer's full CRL")
		case bytes.Equal(oid, oidIssuingDP):
			if err := checkIssuingDP(val); err != nil {
				return err
			}
			c.Scope = val
		case bytes.Equal(oid, oidFreshestCRL), bytes.Equal(oid, oidAuthorityInfo):
		default:
			if critical {
				return fmt.Errorf("crl: unknown critical extension %s; RFC 5280 forbids using such a CRL", oidString(oid))
			}
		}
	}
	return nil
}

// checkIssuingDP refuses the scopes that cannot be applied as one issuer's complete list.
func checkIssuingDP(val cryptobyte.String) error {
	var idp cryptobyte.String
	if !val.ReadASN1(&idp, cbasn1.SEQUENCE) || !val.Empty() {
		return malformed("issuingDistributionPoint")
	}
	for !idp.Empty() {
		var field cryptobyte.String
		var tag cbasn1.Tag
		if !idp.ReadAnyASN1(&field, &tag) {
			return malformed("issuingDistributionPoint")
		}
		isTrue := len(field) == 1 && field[0] != 0
		switch tag {
		case cbasn1.Tag(3).ContextSpecific(), cbasn1.Tag(3).ContextSpecific().Constructed():
			return errors.New("crl: a CRL partitioned by reason (onlySomeReasons); guardian applies complete CRLs only")
		case cbasn1.Tag(4).ContextSpecific():
			if isTrue {
				return errors.New("crl: an indirect CRL; guardian applies CRLs that their issuer signed for its own certificates")
			}
		case cbasn1.Tag(5).ContextSpecific():
			if isTrue {
				return errors.New("crl: a CRL of attribute certificates, which never authenticate a TLS client")
			}
		}
	}
	return nil
}

// Each calls fn for every revoked entry, in the CRL's order, and stops at fn's first error
// or at the first malformed entry. Entries whose reason is removeFromCRL, which revoke
// nothing, are skipped.
func (c *CRL) Each(fn func(*Entry) error) error {
	s := cryptobyte.String(c.entries)
	var e Entry
	var scratch [maxSerialLen + 1]byte
	for i := 0; !s.Empty(); i++ {
		e.Offset = c.entriesOff + len(c.entries) - len(s)
		var elem cryptobyte.String
		if !s.ReadASN1Element(&elem, cbasn1.SEQUENCE) {
			return malformed("revoked entry %d: not a DER SEQUENCE", i)
		}
		if err := parseEntry(elem, &e, scratch[:0]); err != nil {
			return fmt.Errorf("%w (revoked entry %d)", err, i)
		}
		if !revoke.ReasonCodeRevokes(e.ReasonCode) {
			continue // removeFromCRL: a released hold
		}
		if err := fn(&e); err != nil {
			return err
		}
	}
	return nil
}

// Count returns the number of revoked entries, removeFromCRL ones included, without
// parsing them.
func (c *CRL) Count() (int, error) {
	s := cryptobyte.String(c.entries)
	n := 0
	for !s.Empty() {
		if !s.SkipASN1(cbasn1.SEQUENCE) {
			return n, malformed("revoked entry %d: not a DER SEQUENCE", n)
		}
		n++
	}
	return n, nil
}

// entryAt parses the entry that starts at off in the CRL's Raw.
func (c *CRL) entryAt(off int, e *Entry, scratch []byte) error {
	s := cryptobyte.String(c.Raw[off:])
	var elem cryptobyte.String
	if !s.ReadASN1Element(&elem, cbasn1.SEQUENCE) {
		return malformed("entry at offset %d", off)
	}
	e.Offset = off
	return parseEntry(elem, e, scratch)
}

// serialAt returns the serial of the entry at off, without the rest of it.
func (c *CRL) serialAt(off int, scratch []byte) (mag []byte, neg bool, ok bool) {
	s := cryptobyte.String(c.Raw[off:])
	var rc, serial cryptobyte.String
	if !s.ReadASN1(&rc, cbasn1.SEQUENCE) || !rc.ReadASN1(&serial, cbasn1.INTEGER) {
		return nil, false, false
	}
	mag, neg, err := magnitude(serial, scratch)
	return mag, neg, err == nil
}

func parseEntry(elem cryptobyte.String, e *Entry, scratch []byte) error {
	var rc, serial cryptobyte.String
	if !elem.ReadASN1(&rc, cbasn1.SEQUENCE) || !rc.ReadASN1(&serial, cbasn1.INTEGER) {
		return malformed("serial number")
	}
	var err error
	if e.Serial, e.Negative, err = magnitude(serial, scratch); err != nil {
		return err
	}
	if e.RevokedAt, err = readTime(&rc); err != nil {
		return malformed("revocationDate: %v", err)
	}
	e.ReasonCode = -1
	if rc.Empty() {
		return nil
	}
	var exts cryptobyte.String
	if !rc.ReadASN1(&exts, cbasn1.SEQUENCE) || !rc.Empty() {
		return malformed("crlEntryExtensions")
	}
	var seenReason, seenInvalidity bool
	for !exts.Empty() {
		oid, critical, val, ok := readExtension(&exts)
		if !ok {
			return malformed("crlEntryExtensions: an extension")
		}
		switch {
		case bytes.Equal(oid, oidReasonCode):
			// Any ENUMERATED is read, as crypto/x509 and an OCSP answer read it: an entry
			// with a code RFC 5280 does not define still revokes its certificate (as
			// unspecified) rather than making the whole CRL refused.
			var code int
			if seenReason || !val.ReadASN1Enum(&code) || !val.Empty() {
				return malformed("reasonCode")
			}
			seenReason = true
			e.ReasonCode = code
		case bytes.Equal(oid, oidInvalidityDate):
			if seenInvalidity {
				return malformed("invalidityDate appears twice")
			}
			seenInvalidity = true
		case bytes.Equal(oid, oidCertIssuer):
			return errors.New("crl: an entry names another certificate issuer (an indirect CRL); guardian applies CRLs that their issuer signed for its own certificates")
		default:
			if critical {
				return fmt.Errorf("crl: unknown critical entry extension %s; RFC 5280 forbids using such a CRL", oidString(oid))
			}
		}
	}
	return nil
}

// magnitude returns the absolute value of a DER INTEGER's contents without leading zero
// bytes. Non-minimal encodings (extra leading 0x00), which some CAs emit, are accepted.
func magnitude(b []byte, scratch []byte) ([]byte, bool, error) {
	if len(b) == 0 {
		return nil, false, malformed("empty serial number")
	}
	if b[0]&0x80 == 0 {
		for len(b) > 0 && b[0] == 0 {
			b = b[1:]
		}
		if len(b) > maxSerialLen {
			return nil, false, fmt.Errorf("crl: a serial number of %d bytes; guardian handles at most %d", len(b), maxSerialLen)
		}
		return b, false, nil
	}
	// Negative, which RFC 5280 forbids and some CAs did anyway: two's complement.
	n := new(big.Int).SetBytes(b)
	n.Sub(n, new(big.Int).Lsh(big.NewInt(1), uint(8*len(b))))
	m := n.Abs(n).Bytes()
	if len(m) > maxSerialLen {
		return nil, false, fmt.Errorf("crl: a serial number of %d bytes; guardian handles at most %d", len(m), maxSerialLen)
	}
	return append(scratch[:0], m...), true, nil
}

// readTime reads a UTCTime or GeneralizedTime in the DER form RFC 5280 requires
// (YYMMDDHHMMSSZ, YYYYMMDDHHMMSSZ), without time.Parse: a million entries each carry one.
func readTime(s *cryptobyte.String) (time.Time, error) {
	var v cryptobyte.String
	var tag cbasn1.Tag
	if !s.ReadAnyASN1(&v, &tag) {
		return time.Time{}, errors.New("missing")
	}
	var year int
	switch {
	case tag == cbasn1.UTCTime && len(v) == 13:
		yy, ok := two(v[0:2])
		if !ok {
			return time.Time{}, errors.New("bad UTCTime")
		}
		year = 1900 + yy
		if yy < 50 {
			year = 2000 + yy
		}
		v = v[2:]
	case tag == cbasn1.GeneralizedTime && len(v) == 15:
		hi, ok1 := two(v[0:2])
		lo, ok2 := two(v[2:4])
		if !ok1 || !ok2 {
			return time.Time{}, errors.New("bad GeneralizedTime")
		}
		year = hi*100 + lo
		v = v[4:]
	default:
		return time.Time{}, fmt.Errorf("not a DER UTCTime or GeneralizedTime (tag %d, %d bytes)", tag, len(v))
	}
	mo, ok1 := two(v[0:2])
	d, ok2 := two(v[2:4])
	h, ok3 := two(v[4:6])
	mi, ok4 := two(v[6:8])
	sec, ok5 := two(v[8:10])
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || v[10] != 'Z' ||
		mo < 1 || mo > 12 || d < 1 || d > daysIn(mo, year) || h > 23 || mi > 59 || sec > 59 {
		return time.Time{}, fmt.Errorf("bad time %q", string(v))
	}
	return time.Date(year, time.Month(mo), d, h, mi, sec, 0, time.UTC), nil
}

func two(b []byte) (int, bool) {
	if b[0] < '0' || b[0] > '9' || b[1] < '0' || b[1] > '9' {
		return 0, false
	}
	return int(b[0]-'0')*10 + int(b[1]-'0'), true
}

func daysIn(month, year int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

func oidString(der []byte) string {
	if len(der) < 128 {
		elem := cryptobyte.String(append([]byte{0x06, byte(len(der))}, der...))
		var oid asn1.ObjectIdentifier
		if elem.ReadASN1ObjectIdentifier(&oid) {
			return oid.String()
		}
	}
	return fmt.Sprintf("%x", der)
}
