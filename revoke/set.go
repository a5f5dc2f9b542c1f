package revoke

import (
	"errors"
	"fmt"
	"hash/maphash"
	"maps"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Entry records one revocation.
type Entry struct {
	Key       Key       `json:"key"`
	Reason    Reason    `json:"reason,omitempty"`
	RevokedAt time.Time `json:"revoked_at"`
	// Source is the source that claims the key: "redis", "embedded", "api" (a node's
	// memory store), "ocsp", or "crl:<issuer hash>:<issuer key hash>". Set.Apply fills it in.
	Source string `json:"source,omitempty"`
	// Expires, when set, is the time after which the entry may be dropped (the
	// certificates it denies have all expired).
	Expires time.Time `json:"expires,omitzero"`
}

// Change is one applied batch. Added holds entries whose keys were not revoked before;
// Removed holds keys that no source revokes any more. Version increases by one per
// non-empty change.
type Change struct {
	Version uint64
	Added   []Entry
	Removed []Key
	// Sweep is set when the change revoked more than MaxListed keys of a serial list (a
	// CRL's first load can revoke a million), which Added then leaves out: a subscriber that
	// closes conns must re-check every live conn's chains against the Set (Set.Sweeper).
	// Removed lists at most MaxListed keys.
	Sweep bool
}

// MaxListed bounds how many keys a Change lists when a serial list (a CRL) is swapped.
const MaxListed = 4096

// Source names for the Set's claims. A key is revoked while any source claims it, so an
// unrevoke through one source never lifts another's revocation.
const (
	SourceRedis    = "redis"
	SourceEmbedded = "embedded"
	SourceAPI      = "api"
	SourceOCSP     = "ocsp"
)

// CRLSource is the source name of the CRLs that the CA key whose SubjectPublicKeyInfo
// hashes to keyHash (SPKIHash) signed as the issuer whose subject DN hashes to issuerHash
// (IssuerHash): "crl:<issuerHash>:<keyHash>". Two keys of one DN are two sources.
func CRLSource(issuerHash, keyHash string) string { return "crl:" + issuerHash + ":" + keyHash }

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

// put stores e as its source's claim on its key. replaced reports that the source already
// claimed the key; had, that some source did.
func (sh *setShard) put(h uint64, e Entry) (replaced, had bool) {
	for n := sh.m[h]; n != nil; n = n.next {
		if n.Key != e.Key {
			continue
		}
		had = true
		if n.Source == e.Source {
			n.Entry = e
			return true, true
		}
	}
	sh.m[h] = &node{Entry: e, next: sh.m[h]}
	return false, had
}

// del drops src's claim on k. still reports that another source claims k.
func (sh *setShard) del(h uint64, k Key, src string) (removed, still bool) {
	var prev *node
	for n := sh.m[h]; n != nil; {
		next := n.next
		if n.Key == k && n.Source == src && !removed {
			removed = true
			switch {
			case prev != nil:
				prev.next = next
			case next != nil:
				sh.m[h] = next
			default:
				delete(sh.m, h)
			}
			n = next
			continue
		}
		if n.Key == k {
			still = true
		}
		prev, n = n, next
	}
	return removed, still
}

// Set is the in-memory denylist. Each source (Redis, the embedded store, OCSP, a CRL)
// holds its own claims; a key is revoked while any source claims it. Lookups take one
// shard's read lock; changes are serialised and delivered to subscribers in order. The zero
// Set is not usable; call NewSet.
type Set struct {
	seed   maphash.Seed
	shards [setShards]setShard

	filter atomic.Pointer[filter]
	// lists holds the serial lists (CRLs) by issuer hash; replaced whole on every change,
	// so lookups read it without a lock.
	lists atomic.Pointer[listIndex]

	wmu     sync.Mutex // serialises changes and their delivery
	removed int        // removals since the filter was built
	version uint64
	n       int            // claims held in the shard maps
	bySrc   map[string]int // claims in the shard maps, by source
	// gaugeSrc is what the gauge last showed, lists included, so a list that is gone
	// loses its label.
	gaugeSrc map[string]int
	subs     map[int]func(Change)
	nextSub  int
	gauge    *prometheus.GaugeVec
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

// Lookup returns an entry for k: the newest claim, or a serial list's entry.
func (s *Set) Lookup(k Key) (Entry, bool) {
	sh, h := s.shard(k)
	if s.filter.Load().mayHave(h) {
		sh.mu.RLock()
		n := sh.get(h, k)
		var out Entry
		if n != nil {
			out = n.Entry
		}
		sh.mu.RUnlock()
		if n != nil {
			return out, true
		}
	}
	return s.lists.Load().lookup(k)
}

// Has reports whether k is revoked. It is Lookup without building the entry: a handshake's
// lookups are almost all misses, and a miss costs one filter probe.
func (s *Set) Has(k Key) bool {
	sh, h := s.shard(k)
	if s.filter.Load().mayHave(h) {
		sh.mu.RLock()
		n := sh.get(h, k)
		sh.mu.RUnlock()
		if n != nil {
			return true
		}
	}
	if x := s.lists.Load(); x != nil {
		_, ok := x.lookup(k)
		return ok
	}
	return false
}

// AnyOf returns the entry of the first of keys that is revoked.
func (s *Set) AnyOf(keys []Key) (Entry, bool) {
	for _, k := range keys {
		if !s.Has(k) {
			continue
		}
		if e, ok := s.Lookup(k); ok { // unless it was lifted in between
			return e, true
		}
	}
	return Entry{}, false
}

// Len returns the number of claims: entries of every source plus the serials of every
// list. A key that two sources revoke counts twice.
func (s *Set) Len() int {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.n + s.lists.Load().len()
}

// Version returns the number of non-empty changes applied so far.
func (s *Set) Version() uint64 {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.version
}

// Entries returns a copy of every claim outside the serial lists, sorted by key, then
// source. Lists returns the lists.
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
	sort.Slice(out, func(i, j int) bool {
		if out[i].Key != out[j].Key {
			return out[i].Key < out[j].Key
		}
		return out[i].Source < out[j].Source
	})
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

// Add revokes entries as src's claims. See Apply.
func (s *Set) Add(src string, entries ...Entry) (Change, error) { return s.Apply(src, entries, nil) }

// Remove drops src's claims on keys. See Apply.
func (s *Set) Remove(src string, keys ...Key) (Change, error) { return s.Apply(src, nil, keys) }

// Apply adds entries as src's claims (their Source becomes src) and drops src's claims on
// removed, in one change. A key leaves the Set only when no source claims it any more.
// Every key must be canonical (as ParseKey returns it); if any is not, nothing is applied.
// An entry that src already claims replaces the stored one without being reported again.
func (s *Set) Apply(src string, added []Entry, removed []Key) (Change, error) {
	var errs []error
	if src == "" || !printable(src) {
		errs = append(errs, fmt.Errorf("revoke: bad source %q", src))
	}
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
	claims := make([]claim, len(removed))
	for i, k := range removed {
		claims[i] = claim{k, src}
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.applyLocked(src, added, claims), nil
}

type claim struct {
	key Key
	src string
}

func (s *Set) applyLocked(src string, added []Entry, removed []claim) Change {
	var ch Change
	lists := s.lists.Load()
	for _, e := range added {
		e.Source = src
		if e.Reason == "" {
			e.Reason = ReasonUnspecified
		}
		sh, h := s.shard(e.Key)
		// The bit goes in before the entry: a reader that finds the entry's bit missing
		// is one that began before this change.
		s.filter.Load().add(h)
		sh.mu.Lock()
		replaced, had := sh.put(h, e)
		sh.mu.Unlock()
		if replaced {
			continue
		}
		s.n++
		s.bySrc[src]++
		if _, listed := lists.lookup(e.Key); !had && !listed {
			ch.Added = append(ch.Added, e)
		}
	}
	for _, c := range removed {
		sh, h := s.shard(c.key)
		sh.mu.Lock()
		ok, still := sh.del(h, c.key, c.src)
		sh.mu.Unlock()
		if !ok {
			continue
		}
		s.n--
		s.removed++
		s.bySrc[c.src]--
		if _, listed := lists.lookup(c.key); !still && !listed {
			ch.Removed = append(ch.Removed, c.key)
		}
	}
	s.publishLocked(&ch)
	return ch
}

// publishLocked numbers a non-empty change and hands it to the subscribers.
// The gauge follows every change of claims, also one that revoked or lifted no key.
func (s *Set) publishLocked(ch *Change) {
	s.updateGauge()
	if len(ch.Added) == 0 && len(ch.Removed) == 0 && !ch.Sweep {
		ch.Version = s.version
		return
	}
	s.version++
	ch.Version = s.version
	if f := s.filter.Load(); s.n > f.cap || (s.removed > 1024 && s.removed > s.n) {
		s.rebuildFilter()
	}
	for _, fn := range s.subscribers() {
		fn(*ch)
	}
}

// Prune drops claims whose Expires is set and not after now.
func (s *Set) Prune(now time.Time) Change {
	var dead []claim
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for _, n := range sh.m {
			for ; n != nil; n = n.next {
				if !n.Expires.IsZero() && !n.Expires.After(now) {
					dead = append(dead, claim{n.Key, n.Source})
				}
			}
		}
		sh.mu.RUnlock()
	}
	if len(dead) == 0 {
		return Change{}
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.applyLocked("", nil, dead)
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
	counts := maps.Clone(s.bySrc)
	for _, l := range s.lists.Load().all() {
		counts[l.Source()] += l.Len()
	}
	for src, n := range counts {
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
	for src := range s.gaugeSrc {
		if _, ok := counts[src]; !ok && s.gauge != nil {
			s.gauge.DeleteLabelValues(src)
		}
	}
	s.gaugeSrc = counts
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
