package revoke

import (
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"sort"
)

// A SerialList is a read-only set of the serials one CA key revoked, as a CRL that key
// signed lists them. The Set consults it for the keyserial keys of that DN and key (never
// for serial keys, which name a DN only) without holding an Entry per serial, so a
// million-entry CRL costs what the list's own representation costs.
type SerialList interface {
	// ID names the list; the Set holds one list per ID.
	ID() string
	// Issuer is the SHA-256 (hex) of the issuer's subject DN (IssuerHash).
	Issuer() string
	// IssuerKey is the SHA-256 (hex) of the public key that signed the list (SPKIHash).
	IssuerKey() string
	// Source is the source its entries report, e.g. CRLSource(Issuer(), IssuerKey()).
	Source() string
	// Len is the number of serials.
	Len() int
	// Lookup returns the entry of a serial in canonical form: lower-case hex without
	// leading zeros, as in a serial key.
	Lookup(serialHex string) (Entry, bool)
}

// ListDiff is what changed between two versions of a list, as the list's owner computed it.
type ListDiff struct {
	// Added are the entries of serials the new list has and the old did not, at most
	// MaxListed of them; when there were more, Sweep is set and Added is empty.
	Added []Entry
	Sweep bool
	// Removed are the serial keys the old list had and the new does not (at most MaxListed).
	Removed []Key
}

// ErrListMoved is returned by SwapList when the Set's list under that ID is not the one
// the caller diffed against.
var ErrListMoved = errors.New("revoke: the list was replaced meanwhile")

// listIndex is an immutable snapshot of the Set's lists.
type listIndex struct {
	byKey map[string][]SerialList // by IssuerKey
	byID  map[string]SerialList
	n     int
}

func (x *listIndex) lookup(k Key) (Entry, bool) {
	if x == nil {
		return Entry{}, false
	}
	s := string(k)
	// keyserial:<64 hex>:<64 hex>:<serial>
	if len(s) < 141 || s[:10] != "keyserial:" || s[74] != ':' || s[139] != ':' {
		return Entry{}, false
	}
	for _, l := range x.byKey[s[75:139]] {
		if l.Issuer() != s[10:74] {
			continue
		}
		if e, ok := l.Lookup(s[140:]); ok {
			e.Key = k
			return e, true
		}
	}
	return Entry{}, false
}

func (x *listIndex) len() int {
	if x == nil {
		return 0
	}
	return x.n
}

func (x *listIndex) all() []SerialList {
	if x == nil {
		return nil
	}
	out := make([]SerialList, 0, len(x.byID))
	for _, l := range x.byID {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID() < out[j].ID() })
	return out
}

// with returns a copy of x in which id holds next (or nothing, when next is nil).
func (x *listIndex) with(id string, next SerialList) *listIndex {
	y := &listIndex{byKey: map[string][]SerialList{}, byID: map[string]SerialList{}}
	if x != nil {
		y.byID = maps.Clone(x.byID)
	}
	delete(y.byID, id)
	if next != nil {
		y.byID[id] = next
	}
	for _, l := range y.byID {
		y.byKey[l.IssuerKey()] = append(y.byKey[l.IssuerKey()], l)
		y.n += l.Len()
	}
	return y
}

// Lists returns the serial lists the Set holds, sorted by ID.
func (s *Set) Lists() []SerialList { return s.lists.Load().all() }

// List returns the list held under id, or nil.
func (s *Set) List(id string) SerialList {
	x := s.lists.Load()
	if x == nil {
		return nil
	}
	return x.byID[id]
}

// SwapList replaces the list old (nil: none yet) under next's ID with next, or drops old
// when next is nil, as one change whose Added and Removed come from diff, less the keys that
// another source or list still revokes. The swap is refused with ErrListMoved when the Set
// does not hold old under that ID: another update got there first, and the caller's diff
// is against the wrong list. Subscribers hear of the change after lookups see next.
func (s *Set) SwapList(old, next SerialList, diff ListDiff) (Change, error) {
	var id string
	switch {
	case next != nil:
		id = next.ID()
		if old != nil && old.ID() != id {
			return Change{}, fmt.Errorf("revoke: swapping list %q for a list with ID %q", old.ID(), id)
		}
		if len(next.Issuer()) != 64 || !isHex(next.Issuer()) {
			return Change{}, fmt.Errorf("revoke: list %q: issuer %q is not a SHA-256 in hex", id, next.Issuer())
		}
		if len(next.IssuerKey()) != 64 || !isHex(next.IssuerKey()) {
			return Change{}, fmt.Errorf("revoke: list %q: issuer key %q is not a SHA-256 in hex", id, next.IssuerKey())
		}
	case old != nil:
		id = old.ID()
	default:
		return Change{}, errors.New("revoke: SwapList with neither an old nor a new list")
	}
	var errs []error
	for _, e := range diff.Added {
		if err := checkCanonical(e.Key); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range diff.Removed {
		if err := checkCanonical(k); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return Change{}, errors.Join(errs...)
	}

	s.wmu.Lock()
	defer s.wmu.Unlock()
	cur := s.lists.Load()
	var held SerialList
	if cur != nil {
		held = cur.byID[id]
	}
	if held != old {
		return Change{}, fmt.Errorf("%w: %s", ErrListMoved, id)
	}
	ch := Change{Sweep: diff.Sweep}
	for _, e := range diff.Added {
		if !s.has(e.Key) {
			if next != nil {
				e.Source = next.Source()
			}
			ch.Added = append(ch.Added, e)
		}
	}
	s.lists.Store(cur.with(id, next))
	for _, k := range diff.Removed {
		if !s.has(k) {
			ch.Removed = append(ch.Removed, k)
		}
	}
	s.publishLocked(&ch)
	return ch, nil
}

// has is Has for a caller holding wmu (which Has does not take).
func (s *Set) has(k Key) bool { _, ok := s.Lookup(k); return ok }

// A Sweeper checks live conns' chains against the Set, for a subscriber that got a Change
// with Sweep set: the serial and keyserial keys of each chain's certificates, which is where
// a serial list can hit them. It remembers the hashes of the issuers it has met, so checking
// many conns under a few CAs costs a few map lookups a certificate. Not safe for concurrent
// use; make one per sweep.
type Sweeper struct {
	set  *Set
	dns  map[string]string // issuer DN (DER) → IssuerHash
	keys map[string]string // SubjectPublicKeyInfo (DER) → SPKIHash
}

// Sweeper returns a Sweeper over s.
func (s *Set) Sweeper() *Sweeper {
	return &Sweeper{set: s, dns: map[string]string{}, keys: map[string]string{}}
}

// Revoked returns the first serial or keyserial key of chains that the Set revokes.
func (w *Sweeper) Revoked(chains [][]*x509.Certificate) (Key, bool) {
	for _, chain := range chains {
		for i, c := range chain {
			dn := w.hash(w.dns, c.RawIssuer)
			serial := serialString(c.SerialNumber)
			if k := Key("serial:" + dn + ":" + serial); w.set.Has(k) {
				return k, true
			}
			if j, ok := issuerIn(chain, i); ok {
				if k := Key("keyserial:" + dn + ":" + w.hash(w.keys, chain[j].RawSubjectPublicKeyInfo) + ":" + serial); w.set.Has(k) {
					return k, true
				}
			}
		}
	}
	return "", false
}

func (w *Sweeper) hash(cache map[string]string, der []byte) string {
	if h, ok := cache[string(der)]; ok {
		return h
	}
	h := sum(der)
	cache[string(der)] = h
	return h
}
