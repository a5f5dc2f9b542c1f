package crl

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"hash/maphash"
	"math/bits"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/guardian-mtls/guardian/revoke"
)

// Table is a CRL's revoked serials as a revoke.SerialList: the list of the CA key that
// signed the CRL. It keeps the CRL's DER and an open-addressed index of its entries'
// offsets — 8 bytes a slot, at most 75% full — so an entry costs its DER (about 40 bytes
// with a reason code) plus 11 to 21 bytes of index, and nothing is copied out of the CRL.
type Table struct {
	crl       *CRL
	issuer    string // SHA-256 of the issuer DN, hex
	issuerKey string // SHA-256 of the signer's SubjectPublicKeyInfo, hex; "" when unbound
	id        string
	source    string
	keyPrefix string // what an entry's key is before its serial
	seed      maphash.Seed
	// slots hold tag<<32 | offset+1 (0: empty); the tag is the high half of the serial's
	// hash, so a probe rarely parses an entry that is not the one it looks for.
	slots []uint64
	mask  uint64
	n     int
}

// NewTable indexes c's entries. It fails on a malformed entry and on a serial listed twice.
// The table is no CA key's list: its IssuerKey and ID are empty, so the Set refuses it, and
// its entries name serial keys (issuer DN and serial). The Applier, having checked c's
// signature, makes the table of the key that verified it.
func NewTable(c *CRL) (*Table, error) { return newTable(c, nil) }

// newTable is NewTable for the list of signer's key, or of none when signer is nil.
func newTable(c *CRL, signer *x509.Certificate) (*Table, error) {
	count, err := c.Count()
	if err != nil {
		return nil, err
	}
	if len(c.Raw) >= 1<<32 {
		return nil, fmt.Errorf("crl: %d bytes is more than a table can index", len(c.Raw))
	}
	t := &Table{crl: c, seed: maphash.MakeSeed()}
	t.issuer = revoke.IssuerHash(c.RawIssuer)
	t.keyPrefix = "serial:" + t.issuer + ":"
	if signer != nil {
		t.issuerKey = revoke.SPKIHash(signer.RawSubjectPublicKeyInfo)
		t.source, t.id = names(c, t.issuerKey)
		t.keyPrefix = "keyserial:" + t.issuer + ":" + t.issuerKey + ":"
	}
	size := uint64(1) << bits.Len64(uint64(count+count/3))
	t.slots = make([]uint64, max(size, 8))
	t.mask = uint64(len(t.slots) - 1)
	var scratch [maxSerialLen + 1]byte
	err = c.Each(func(e *Entry) error {
		hv := t.hash(e.Serial, e.Negative)
		tag := hv >> 32
		for i := hv & t.mask; ; i = (i + 1) & t.mask {
			v := t.slots[i]
			if v == 0 {
				t.slots[i] = tag<<32 | uint64(e.Offset+1)
				t.n++
				return nil
			}
			if v>>32 != tag {
				continue
			}
			if mag, neg, ok := c.serialAt(int(uint32(v))-1, scratch[:0]); ok && neg == e.Negative && bytes.Equal(mag, e.Serial) {
				return fmt.Errorf("crl: serial %s is listed twice", serialHex(e.Serial, e.Negative))
			}
		}
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// names are the source and list ID of the list c becomes when the key whose SPKIHash is
// issuerKey verified it: one list per issuer DN, key and scope, so that the CRLs of two keys
// of one DN (a look-alike CA, a key rollover) never replace or roll back each other.
func names(c *CRL, issuerKey string) (source, id string) {
	source = revoke.CRLSource(revoke.IssuerHash(c.RawIssuer), issuerKey)
	id = source
	if c.Scope != nil {
		sh := sha256.Sum256(c.Scope)
		id += "/" + hex.EncodeToString(sh[:8])
	}
	return source, id
}

func (t *Table) hash(mag []byte, neg bool) uint64 {
	h := maphash.Bytes(t.seed, mag)
	if neg {
		h = ^h
	}
	return h
}

// find returns the offset of the entry with this serial.
func (t *Table) find(mag []byte, neg bool) (int, bool) {
	hv := t.hash(mag, neg)
	tag := hv >> 32
	var scratch [maxSerialLen + 1]byte
	for i := hv & t.mask; ; i = (i + 1) & t.mask {
		v := t.slots[i]
		if v == 0 {
			return 0, false
		}
		if v>>32 != tag {
			continue
		}
		off := int(uint32(v)) - 1
		if m, n, ok := t.crl.serialAt(off, scratch[:0]); ok && n == neg && bytes.Equal(m, mag) {
			return off, true
		}
	}
}

// ID is the list's ID: the CRL's source, and its scope when it has one.
func (t *Table) ID() string { return t.id }

// Issuer is the SHA-256 (hex) of the CRL issuer's DN.
func (t *Table) Issuer() string { return t.issuer }

// IssuerKey is the SHA-256 (hex) of the SubjectPublicKeyInfo of the CA key that verified the
// CRL; "" for a table NewTable made.
func (t *Table) IssuerKey() string { return t.issuerKey }

// Source is "crl:<issuer>:<issuer key>".
func (t *Table) Source() string { return t.source }

// Len is the number of revoked serials.
func (t *Table) Len() int { return t.n }

// Lookup returns the entry of a serial given in a serial key's form.
func (t *Table) Lookup(serial string) (revoke.Entry, bool) {
	var buf [maxSerialLen]byte
	mag, neg, ok := decodeSerial(serial, buf[:])
	if !ok {
		return revoke.Entry{}, false
	}
	off, ok := t.find(mag, neg)
	if !ok {
		return revoke.Entry{}, false
	}
	var e Entry
	var scratch [maxSerialLen + 1]byte
	if t.crl.entryAt(off, &e, scratch[:0]) != nil {
		return revoke.Entry{}, false // cannot happen: NewTable parsed every entry
	}
	return t.entry(&e), true
}

func (t *Table) entry(e *Entry) revoke.Entry {
	return revoke.Entry{
		Key:       revoke.Key(t.keyPrefix + serialHex(e.Serial, e.Negative)),
		Reason:    e.Reason(),
		RevokedAt: e.RevokedAt,
		Source:    t.source,
	}
}

// decodeSerial parses canonical serial hex ("-"? lower-case hex, no leading zeros) into buf.
func decodeSerial(s string, buf []byte) (mag []byte, neg bool, ok bool) {
	if len(s) > 0 && s[0] == '-' {
		neg, s = true, s[1:]
	}
	if s == "" || len(s) > 2*len(buf) {
		return nil, false, false
	}
	if s == "0" {
		return buf[:0], neg, true
	}
	n := (len(s) + 1) / 2
	mag = buf[:n]
	i := 0
	if len(s)%2 == 1 {
		v, ok := unhex(s[0])
		if !ok {
			return nil, false, false
		}
		mag[0] = v
		s, i = s[1:], 1
	}
	for j := 0; j < len(s); j += 2 {
		hi, ok1 := unhex(s[j])
		lo, ok2 := unhex(s[j+1])
		if !ok1 || !ok2 {
			return nil, false, false
		}
		mag[i] = hi<<4 | lo
		i++
	}
	return mag, neg, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// serialHex is the serial in a serial key's form.
func serialHex(mag []byte, neg bool) string {
	if len(mag) == 0 {
		return "0"
	}
	s := hex.EncodeToString(mag)
	if s[0] == '0' {
		s = s[1:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// Diff returns what changed from old (nil: no list yet) to next, in the form SwapList
// takes. Entries in a common leading run of identical DER — a CRL to which the CA only
// appended — are skipped without a lookup.
func Diff(old, next *Table) revoke.ListDiff {
	var d revoke.ListDiff
	add := func(e *Entry) error {
		if len(d.Added) >= revoke.MaxListed {
			d.Added, d.Sweep = nil, true
			return errStop
		}
		d.Added = append(d.Added, next.entry(e))
		return nil
	}
	if old == nil {
		if next.Len() > revoke.MaxListed {
			d.Sweep = true
			return d
		}
		next.crl.Each(add)
		return d
	}
	skip := commonPrefix(old.crl.entries, next.crl.entries)
	next.crl.eachFrom(skip, func(e *Entry) error {
		if _, ok := old.find(e.Serial, e.Negative); !ok {
			return add(e)
		}
		return nil
	})
	old.crl.eachFrom(skip, func(e *Entry) error {
		if _, ok := next.find(e.Serial, e.Negative); !ok {
			if len(d.Removed) >= revoke.MaxListed {
				return errStop
			}
			d.Removed = append(d.Removed, old.entry(e).Key)
		}
		return nil
	})
	return d
}

var errStop = fmt.Errorf("crl: stop")

// commonPrefix returns the length of the run of whole entries, in bytes, that a and b (the
// contents of two revokedCertificates) share.
func commonPrefix(a, b []byte) int {
	n := 0
	sa, sb := cryptobyte.String(a), cryptobyte.String(b)
	for {
		var ea, eb cryptobyte.String
		if !sa.ReadASN1Element(&ea, cbasn1.SEQUENCE) || !sb.ReadASN1Element(&eb, cbasn1.SEQUENCE) || !bytes.Equal(ea, eb) {
			return n
		}
		n += len(ea)
	}
}

// eachFrom is Each over the entries after the first skip bytes of revokedCertificates.
func (c *CRL) eachFrom(skip int, fn func(*Entry) error) error {
	rest := *c
	rest.entries = c.entries[skip:]
	rest.entriesOff = c.entriesOff + skip
	return rest.Each(fn)
}
