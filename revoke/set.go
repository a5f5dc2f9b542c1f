package revoke

import (
	"errors"
	"fmt"
	"hash/maphash"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Reason is an RFC 5280 CRLReason name, e.g. "keyCompromise".
type Reason string

// The RFC 5280 section 5.3.1 reason names.
var Reasons = []Reason{
	"unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
	"cessationOfOperation", "certificateHold", "removeFromCRL", "privilegeWithdrawn", "aACompromise",
}

// ParseReason accepts an RFC 5280 reason name in any case; "" means unspecified.
func ParseReason(s string) (Reason, error) {
	if s == "" {
		return "unspecified", nil
	}
	for _, r := range Reasons {
		if len(s) == len(r) && equalFold(s, string(r)) {
			return r, nil
		}
	}
	return "", fmt.Errorf("revoke: unknown reason %q; want an RFC 5280 name such as keyCompromise or superseded", s)
}

func equalFold(a, b string) bool {
	for i := 0; i < len(a); i++ {
		x, y := a[i]|0x20, b[i]|0x20
		if x != y {
			return false
		}
	}
	return true
}

// Entry records one revocation.
type Entry struct {
	Key       Key       `json:"key"`
	Reason    Reason    `json:"reason,omitempty"`
	RevokedAt time.Time `json:"revoked_at"`
	// Source says who revoked: "redis", "crl:<issuer>", "ocsp", "api".
	Source string `json:"source,omitempty"`
	// Expires, when set, is the time after which the entry may be dropped (the
	// certificates it denies have all expired).
	Expires time.Time `json:"expires,omitzero"`
}

// Change is one applied batch. Added holds entries whose keys were not in the Set before;
// Removed holds keys that were. Version increases by one per non-empty change.
type Change struct {
	Version uint64
	Added   []Entry
	Removed []Key
}

const setShards = 64

// Shards are keyed by the key's 64-bit hash, so that a miss never dereferences a stored
// key string; the rare entries whose hashes collide are chained through next.
type setShard struct {
	mu sync.RWMutex
	m  map[uint64]*node
	_  [40]byte // keep neighbouring shards' locks off one cache line
}

type node struct {
	Entry
	next *node
}

func (sh *setShard) get(h uint64, k Key) *node {
	n := sh.m[h]
	for n != nil && n.Key != k {
		n = n.next
	}
	return n
}

// put stores e and returns the entry it replaced, if any.
func (sh *setShard) put(h uint64, e Entry) (old Entry, existed bool) {
	if n := sh.get(h, e.Key); n != nil {
		old, n.Entry = n.Entry, e
		return old, true
	}
	sh.m[h] = &node{Entry: e, next: sh.m[h]}
	return Entry{}, false
}

func (sh *setShard) del(h uint64, k Key) (old Entry, existed bool) {
	var prev *node
	for n := sh.m[h]; n != nil; prev, n = n, n.next {
		if n.Key != k {
			continue
		}
		switch {
		case prev != nil:
			prev.next = n.next
		case n.next != nil:
			sh.m[h] = n.next
		default:
			delete(sh.m, h)
		}
		return n.Entry, true
	}
	return Entry{}, false
}

// Set is the in-memory denylist. Lookups take one shard's read lock; changes are
// serialised and delivered to subscribers in order. The zero Set is not usable; call NewSet.
type Set struct {
	seed   maphash.Seed
	shards [setShards]setShard

	filter atomic.Pointer[filter]

	wmu     sync.Mutex // serialises changes and their delivery
	removed int        // removals since the filter was built
	version uint64
	n       int
	bySrc   map[string]int
	subs    map[int]func(Change)
	nextSub int
	gauge   *prometheus.GaugeVec
}

// SetOptions configures a Set.
type SetOptions struct {
	// Metrics, if non-nil, receives guardian_revocations{source}.
	Metrics prometheus.Registerer
}

// NewSet returns an empty Set.
func NewSet(opts SetOptions) (*Set, error) {
	s := &Set{seed: maphash.MakeSeed(), bySrc: map[string]int{}, subs: map[int]func(Change){}}
	for i := range s.shards {
		s.shards[i].m = map[uint64]*node{}
	}
	s.filter.Store(newFilter(0))
	if opts.Metrics != nil {
		s.gauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "guardian_revocations",
			Help: "Entries in the revocation set, by source.",
		}, []string{"source"})
		if err := opts.Metrics.Register(s.gauge); err != nil {
			return nil, fmt.Errorf("revoke: register metrics: %w", err)
		}
	}
	return s, nil
}

func (s *Set) shard(k Key) (*setShard, uint64) {
	h := maphash.String(s.seed, string(k))
	return &s.shards[h%setShards], h
}

// Lookup returns the entry for k.
func (s *Set) Lookup(k Key) (Entry, bool) {
	sh, h := s.shard(k)
	if !s.filter.Load().mayHave(h) {
		return Entry{}, false
	}
	sh.mu.RLock()
	n := sh.get(h, k)
	var out Entry
	if n != nil {
		out = n.Entry
	}
	sh.mu.RUnlock()
	return out, n != nil
}

// Has reports whether k is revoked.
func (s *Set) Has(k Key) bool {
	sh, h := s.shard(k)
	if !s.filter.Load().mayHave(h) {
		return false
	}
	sh.mu.RLock()
	n := sh.get(h, k)
	sh.mu.RUnlock()
	return n != nil
}

// AnyOf returns the entry of the first of keys that is revoked.
func (s *Set) AnyOf(keys []Key) (Entry, bool) {
	for _, k := range keys {
		if e, ok := s.Lookup(k); ok {
			return e, true
		}
	}
	return Entry{}, false
}

// Len returns the number of entries.
func (s *Set) Len() int {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.n
}

// Version returns the number of non-empty changes applied so far.
func (s *Set) Version() uint64 {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.version
}

// Entries returns a copy of every entry, sorted by key.
func (s *Set) Entries() []Entry {
	var out []Entry
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for _, n := range sh.m {
			for ; n != nil; n = n.next {
				out = append(out, n.Entry)
			}
		}
		sh.mu.RUnlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// Subscribe registers fn to receive every later change, in order, synchronously on the
// goroutine that applied it: a revocation is in the Set before fn hears of it. fn must be
// quick and must not change the Set. The returned function unsubscribes.
func (s *Set) Subscribe(fn func(Change)) (cancel func()) {
	s.wmu.Lock()
	id := s.nextSub
	s.nextSub++
	s.subs[id] = fn
	s.wmu.Unlock()
	return func() {
		s.wmu.Lock()
		delete(s.subs, id)
		s.wmu.Unlock()
	}
}

// Add revokes entries. See Apply.
func (s *Set) Add(entries ...Entry) (Change, error) { return s.Apply(entries, nil) }

// Remove unrevokes keys. See Apply.
func (s *Set) Remove(keys ...Key) (Change, error) { return s.Apply(nil, keys) }

// Apply adds entries and removes keys in one change. Every key must be canonical (as
// ParseKey returns it); if any is not, nothing is applied. An entry whose key is already
// present replaces the stored entry without being reported as added again.
func (s *Set) Apply(added []Entry, removed []Key) (Change, error) {
	var errs []error
	for _, e := range added {
		if err := checkCanonical(e.Key); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range removed {
		if err := checkCanonical(k); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return Change{}, errors.Join(errs...)
	}

	s.wmu.Lock()
	defer s.wmu.Unlock()
	var ch Change
	for _, e := range added {
		if e.Reason == "" {
			e.Reason = "unspecified"
		}
		sh, h := s.shard(e.Key)
		// The bit goes in before the entry: a reader that finds the entry's bit missing
		// is one that began before this change.
		s.filter.Load().add(h)
		sh.mu.Lock()
		old, existed := sh.put(h, e)
		sh.mu.Unlock()
		if existed {
			s.bySrc[old.Source]--
		} else {
			s.n++
			ch.Added = append(ch.Added, e)
		}
		s.bySrc[e.Source]++
	}
	for _, k := range removed {
		sh, h := s.shard(k)
		sh.mu.Lock()
		old, existed := sh.del(h, k)
		sh.mu.Unlock()
		if existed {
			s.n--
			s.removed++
			s.bySrc[old.Source]--
			ch.Removed = append(ch.Removed, k)
		}
	}
	if len(ch.Added) == 0 && len(ch.Removed) == 0 {
		ch.Version = s.version
		return ch, nil
	}
	s.version++
	ch.Version = s.version
	if f := s.filter.Load(); s.n > f.cap || (s.removed > 1024 && s.removed > s.n) {
		s.rebuildFilter()
	}
	s.updateGauge()
	for _, fn := range s.subscribers() {
		fn(ch)
	}
	return ch, nil
}

// Prune removes entries whose Expires is set and not after now.
func (s *Set) Prune(now time.Time) (Change, error) {
	var dead []Key
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for _, n := range sh.m {
			for ; n != nil; n = n.next {
				if !n.Expires.IsZero() && !n.Expires.After(now) {
					dead = append(dead, n.Key)
				}
			}
		}
		sh.mu.RUnlock()
	}
	if len(dead) == 0 {
		return Change{}, nil
	}
	return s.Apply(nil, dead)
}

func (s *Set) subscribers() []func(Change) {
	ids := make([]int, 0, len(s.subs))
	for id := range s.subs {
		ids = append(ids, id)
	}
	sort.Ints(ids)
	out := make([]func(Change), len(ids))
	for i, id := range ids {
		out[i] = s.subs[id]
	}
	return out
}

func (s *Set) updateGauge() {
	for src, n := range s.bySrc {
		if n == 0 {
			delete(s.bySrc, src)
			if s.gauge != nil {
				s.gauge.DeleteLabelValues(src)
			}
			continue
		}
		if s.gauge != nil {
			s.gauge.WithLabelValues(src).Set(float64(n))
		}
	}
}

func checkCanonical(k Key) error {
	c, err := ParseKey(string(k))
	if err != nil {
		return err
	}
	if c != k {
		return fmt.Errorf("%w %q: not canonical; use %q", ErrBadKey, k, c)
	}
	return nil
}

// rebuildFilter sizes a new filter for twice the current entries and swaps it in. Called
// with wmu held, so no entry is added while the maps are read.
func (s *Set) rebuildFilter() {
	f := newFilter(2 * s.n)
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for h := range sh.m {
			f.add(h)
		}
		sh.mu.RUnlock()
	}
	s.filter.Store(f)
	s.removed = 0
}
