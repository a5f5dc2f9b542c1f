package conntrack

import (
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/clock"
	"github.com/guardian-mtls/guardian/internal/promreg"
)

// Reasons a conn is evicted.
const (
	ReasonRevoked  = "revoked"
	ReasonExpired  = "expired"
	ReasonPolicy   = "policy"
	ReasonShutdown = "shutdown"
	// ReasonManual is a conn closed on its own, by an operator or a caller, without
	// revoking its certificate (EvictConn).
	ReasonManual = "manual"
	// ReasonLifetime is a conn older than its audience's max_conn_lifetime.
	ReasonLifetime = "lifetime"
)

// Cause says why conns are evicted.
type Cause struct {
	Reason string
	// Since is when the event that causes the eviction happened (a revocation's arrival);
	// eviction latency is measured from it. Zero means the Evict call.
	Since time.Time
}

// Eviction describes one evicted conn, for Options.OnEvict.
type Eviction struct {
	Conn    *Conn
	Reason  string
	Key     string        // the key that hit; "" for expiry and EvictAll
	Latency time.Duration // from Cause.Since to the raw conn's close
}

// Options configures a Registry. The zero value is usable.
type Options struct {
	// Confirm checks that c really holds key after a hash hit. Nil trusts the 63-bit hash.
	Confirm func(c *Conn, key string) bool
	// OnEvict is called once per evicted conn, after its raw conn is closed, from a worker.
	OnEvict func(Eviction)
	// OnClose, if set, is called once per wrapped conn when it is first closed, by its
	// owner or by an eviction, tracked or not, outside the registry's locks. The listener
	// keeps its admission counts with it.
	OnClose func(*Conn)
	// Clock decides expiry; nil means the real clock.
	Clock clock.Clock
	// Workers bounds the goroutines that close evicted conns; 0 means 4×GOMAXPROCS.
	Workers int
	// Metrics, if non-nil, receives the registry's metrics.
	Metrics prometheus.Registerer
}

const numShards = 64

// In a shard's keys array each tracked conn owns a block: a header word with hdrBit set,
// holding the conn's slot and key count, followed by its key hashes, which never have
// hdrBit set. A dead block is all zeros.
const hdrBit = 1 << 63

func header(slot, n int) uint64 { return hdrBit | uint64(n)<<32 | uint64(uint32(slot)) }

type shard struct {
	mu    sync.Mutex
	conns []*Conn
	keys  []uint64
	dead  int
	heap  expiryHeap
	_     [32]byte
}

// Registry tracks live conns. Create one with New.
type Registry struct {
	opts   Options
	clock  clock.Clock
	seed   maphash.Seed
	shards [numShards]shard
	next   atomic.Uint32
	active atomic.Int64

	// Eviction work queue, drained by a fixed set of workers.
	qmu     sync.Mutex
	qcond   *sync.Cond
	queue   []victim
	closing bool
	wg      sync.WaitGroup

	// Expiry scheduler.
	nextWake atomic.Int64
	poke     chan struct{}
	stop     chan struct{}
	stopOnce sync.Once

	m *metrics
}

type victim struct {
	c     *Conn
	key   string
	cause Cause
	at    time.Time // when Evict found it, the fallback for Cause.Since
}

// New starts a Registry: its eviction workers and its expiry scheduler. Close stops them.
func New(opts Options) (*Registry, error) {
	r := &Registry{opts: opts, clock: opts.Clock, seed: maphash.MakeSeed(),
		poke: make(chan struct{}, 1), stop: make(chan struct{})}
	r.clock = clock.Or(r.clock)
	m, err := newMetrics(opts.Metrics)
	if err != nil {
		return nil, err
	}
	r.m = m
	r.qcond = sync.NewCond(&r.qmu)
	n := opts.Workers
	if n <= 0 {
		n = 4 * runtime.GOMAXPROCS(0)
	}
	r.wg.Add(n + 1)
	for i := 0; i < n; i++ {
		go r.worker()
	}
	r.nextWake.Store(math.MaxInt64)
	go r.scheduler()
	return r, nil
}

// Close stops the workers and the scheduler after the queued evictions are done. It does
// not close tracked conns; use EvictAll for that.
func (r *Registry) Close() error {
	r.stopOnce.Do(func() {
		close(r.stop)
		r.qmu.Lock()
		r.closing = true
		r.qcond.Broadcast()
		r.qmu.Unlock()
	})
	r.wg.Wait()
	return nil
}

// Conn is a raw conn watched by a Registry. Its Close untracks it. Read, Write and the
// rest go straight to the wrapped conn.
type Conn struct {
	net.Conn
	reg      *Registry
	owner    any
	since    int64 // unix nanos of Track
	state    atomic.Uint32
	shard    uint16
	slot     int32 // index in shard.conns
	off      int32 // index of its header in shard.keys
	heapIdx  int32 // index in shard.heap, -1 if not scheduled
	notAfter int64 // unix nanos, 0 if none
}

const (
	stateNew uint32 = iota
	stateTracked
	stateClosed
)

// Wrap returns nc as a Conn of r, not yet tracked. owner is the caller's data for the
// conn (the listener keeps the TLS state there); Owner returns it.
func (r *Registry) Wrap(nc net.Conn, owner any) *Conn {
	return &Conn{Conn: nc, reg: r, owner: owner, shard: uint16(r.next.Add(1) % numShards), slot: -1, heapIdx: -1}
}

// Owner returns the value given to Wrap.
func (c *Conn) Owner() any { return c.owner }

// SetOwner replaces the owner; call it before Track.
func (c *Conn) SetOwner(v any) { c.owner = v }

// Since returns when the conn was tracked, or the zero time.
func (c *Conn) Since() time.Time {
	if c.since == 0 {
		return time.Time{}
	}
	return time.Unix(0, c.since)
}

// Closed reports whether the conn has been closed or evicted.
func (c *Conn) Closed() bool { return c.state.Load() == stateClosed }

// Close closes the raw conn and untracks it. It is safe to call more than once.
func (c *Conn) Close() error {
	switch c.state.Swap(stateClosed) {
	case stateClosed:
		return c.Conn.Close()
	case stateTracked:
		c.reg.untrack(c)
	}
	err := c.Conn.Close()
	if f := c.reg.opts.OnClose; f != nil {
		f(c)
	}
	return err
}

// ErrClosed is returned by Track for a conn that was closed before it could be tracked.
var ErrClosed = errors.New("conntrack: conn already closed")

func (r *Registry) hash(k string) uint64 {
	h := maphash.String(r.seed, k) &^ hdrBit
	if h == 0 {
		h = 1
	}
	return h
}

// Track indexes c under keys and, if notAfter is not zero, schedules its eviction for the
// moment after notAfter. A conn that is already closed is not tracked (ErrClosed).
func (r *Registry) Track(c *Conn, keys []string, notAfter time.Time) error {
	if c.reg != r {
		return errors.New("conntrack: conn belongs to another registry")
	}
	var hs [16]uint64
	h := hs[:0]
	for _, k := range keys {
		h = append(h, r.hash(k))
	}
	now := r.clock.Now()
	sh := &r.shards[c.shard]
	sh.mu.Lock()
	if !c.state.CompareAndSwap(stateNew, stateTracked) {
		sh.mu.Unlock()
		return ErrClosed
	}
	c.since = now.UnixNano()
	c.slot = int32(len(sh.conns))
	sh.conns = append(sh.conns, c)
	c.off = int32(len(sh.keys))
	sh.keys = append(sh.keys, header(int(c.slot), len(h)))
	sh.keys = append(sh.keys, h...)
	wake := int64(0)
	if !notAfter.IsZero() {
		// RFC 5280: a certificate is valid through NotAfter inclusive.
		c.notAfter = notAfter.UnixNano() + 1
		sh.heap.push(c)
		wake = c.notAfter
	}
	sh.mu.Unlock()
	r.active.Add(1)
	r.m.active.Inc()
	r.m.tracked.Inc()
	if wake != 0 && wake < r.nextWake.Load() {
		r.wakeScheduler()
	}
	return nil
}

func (r *Registry) untrack(c *Conn) {
	sh := &r.shards[c.shard]
	sh.mu.Lock()
	r.removeLocked(sh, c)
	sh.mu.Unlock()
	r.active.Add(-1)
	r.m.active.Dec()
}

func (r *Registry) removeLocked(sh *shard, c *Conn) {
	off := int(c.off)
	n := int((sh.keys[off] >> 32) & 0x7fffffff)
	clear(sh.keys[off : off+1+n])
	sh.dead += 1 + n
	last := sh.conns[len(sh.conns)-1]
	if last != c {
		last.slot = c.slot
		sh.conns[c.slot] = last
		sh.keys[last.off] = header(int(last.slot), int((sh.keys[last.off]>>32)&0x7fffffff))
	}
	sh.conns[len(sh.conns)-1] = nil
	sh.conns = sh.conns[:len(sh.conns)-1]
	if c.heapIdx >= 0 {
		sh.heap.remove(c)
	}
	if sh.dead > 256 && 4*sh.dead > len(sh.keys) {
		sh.compact()
	}
}

// compact slides live blocks down over dead ones, in place, rewriting offsets; amortised
// O(1) per untrack. Each block's header names its conn, so no other order is needed.
func (sh *shard) compact() {
	ks := sh.keys
	w := 0
	for r := 0; r < len(ks); {
		v := ks[r]
		if v == 0 {
			r++
			continue
		}
		n := int((v >> 32) & 0x7fffffff)
		sh.conns[uint32(v)].off = int32(w)
		copy(ks[w:], ks[r:r+1+n])
		w += 1 + n
		r += 1 + n
	}
	clear(ks[w:])
	sh.keys = ks[:w]
	sh.dead = 0
}

// Len returns the number of tracked conns.
func (r *Registry) Len() int { return int(r.active.Load()) }

// Range calls fn for each tracked conn until fn returns false. fn runs without locks held.
func (r *Registry) Range(fn func(*Conn) bool) {
	var buf []*Conn
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		buf = append(buf[:0], sh.conns...)
		sh.mu.Unlock()
		for _, c := range buf {
			if !fn(c) {
				return
			}
		}
	}
}

// Evict closes every tracked conn indexed under any of keys and returns how many conns
// matched a key's hash (each is then confirmed before it is closed). It never blocks on a
// socket: the closes happen on the registry's workers.
func (r *Registry) Evict(keys []string, cause Cause) int {
	if len(keys) == 0 {
		return 0
	}
	now := time.Now()
	m := newMatcher(r, keys)
	var found []victim
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		found = sh.scan(m, cause, now, found)
		sh.mu.Unlock()
	}
	r.enqueue(found)
	return len(found)
}

// matcher finds which of the evicted keys a hash is. One key is a plain comparison; more
// go through a 64 Kbit bitmap (8 KiB, stays in L1) that rejects almost every slot before
// the map is consulted.
type matcher struct {
	keys   []string
	one    uint64
	bitmap *[1024]uint64
	index  map[uint64]int
}

func newMatcher(r *Registry, keys []string) *matcher {
	m := &matcher{keys: keys}
	if len(keys) == 1 {
		m.one = r.hash(keys[0])
		return m
	}
	m.bitmap = new([1024]uint64)
	m.index = make(map[uint64]int, len(keys))
	for i, k := range keys {
		h := r.hash(k)
		m.index[h] = i
		m.bitmap[(h>>6)&1023] |= 1 << (h & 63)
	}
	return m
}

// scan appends one victim per conn with a matching key hash.
func (sh *shard) scan(m *matcher, cause Cause, now time.Time, out []victim) []victim {
	ks := sh.keys
	for i := 0; i < len(ks); i++ {
		v := ks[i]
		ki := 0
		if m.bitmap == nil {
			// Headers have hdrBit set and dead slots are zero, so neither equals a hash.
			if v != m.one {
				continue
			}
		} else {
			if m.bitmap[(v>>6)&1023]&(1<<(v&63)) == 0 || v&hdrBit != 0 {
				continue
			}
			j, ok := m.index[v]
			if !ok {
				continue
			}
			ki = j
		}
		hdr := i - 1
		for ks[hdr]&hdrBit == 0 {
			hdr--
		}
		c := sh.conns[uint32(ks[hdr])]
		out = append(out, victim{c: c, key: m.keys[ki], cause: cause, at: now})
		i = hdr + int((ks[hdr]>>32)&0x7fffffff) // skip the rest of this conn's block
	}
	return out
}

// EvictMatching closes every tracked conn for which match returns a key, the one that hit
// it (Confirm then checks it, as for Evict). match runs without locks held, on the
// caller's goroutine; the closes happen on the workers. It is for changes too large to
// list their keys: O(conns), whatever the number of keys.
func (r *Registry) EvictMatching(match func(*Conn) (key string, ok bool), cause Cause) int {
	now := time.Now()
	var found []victim
	r.Range(func(c *Conn) bool {
		if key, ok := match(c); ok {
			found = append(found, victim{c: c, key: key, cause: cause, at: now})
		}
		return true
	})
	r.enqueue(found)
	return len(found)
}

// EvictConn closes c, if it is tracked, as an eviction: OnEvict is told, with cause's
// reason. It reports whether c was tracked.
func (r *Registry) EvictConn(c *Conn, cause Cause) bool {
	if c.reg != r || c.state.Load() != stateTracked {
		return false
	}
	r.enqueue([]victim{{c: c, cause: cause, at: time.Now()}})
	return true
}

// EvictAll closes every tracked conn.
func (r *Registry) EvictAll(cause Cause) int {
	now := time.Now()
	var found []victim
	r.Range(func(c *Conn) bool {
		found = append(found, victim{c: c, cause: cause, at: now})
		return true
	})
	r.enqueue(found)
	return len(found)
}

func (r *Registry) enqueue(vs []victim) {
	if len(vs) == 0 {
		return
	}
	r.qmu.Lock()
	r.queue = append(r.queue, vs...)
	if len(vs) == 1 {
		r.qcond.Signal()
	} else {
		r.qcond.Broadcast()
	}
	r.qmu.Unlock()
}

func (r *Registry) worker() {
	defer r.wg.Done()
	const batch = 32
	var local []victim
	for {
		r.qmu.Lock()
		for len(r.queue) == 0 && !r.closing {
			r.qcond.Wait()
		}
		if len(r.queue) == 0 {
			r.qmu.Unlock()
			return
		}
		n := min(batch, len(r.queue))
		local = append(local[:0], r.queue[:n]...)
		clear(r.queue[:n])
		r.queue = r.queue[n:]
		if len(r.queue) == 0 {
			r.queue = nil
		}
		r.qmu.Unlock()
		for _, v := range local {
			r.evictOne(v)
		}
		clear(local)
	}
}

func (r *Registry) evictOne(v victim) {
	c := v.c
	if c.state.Load() != stateTracked {
		return
	}
	if v.key != "" && r.opts.Confirm != nil && !r.opts.Confirm(c, v.key) {
		r.m.falseMatches.Inc()
		return
	}
	if c.state.Swap(stateClosed) != stateTracked {
		return // closed meanwhile by its owner or another eviction
	}
	tc, ok := c.Conn.(*net.TCPConn)
	if w, wraps := c.Conn.(interface{ TCPConn() (*net.TCPConn, bool) }); wraps {
		tc, ok = w.TCPConn() // a PROXY protocol conn (go-proxyproto) over TCP
	}
	if ok {
		// RST at the final close rather than a lingering FIN: no TIME_WAIT is left behind,
		// and one packet per conn. (A shutdown(2) first, to tell the peer before Go's Close
		// waits for the conn's blocked reader, cost a syscall and a FIN per conn and made a
		// 10,000-conn eviction slower: BENCHMARKS.md, eviction-bulk.)
		tc.SetLinger(0)
	}
	r.untrack(c)
	c.Conn.Close()
	if r.opts.OnClose != nil {
		r.opts.OnClose(c)
	}
	since := v.cause.Since
	if since.IsZero() {
		since = v.at
	}
	lat := time.Since(since)
	r.m.evictions.WithLabelValues(v.cause.Reason).Inc()
	r.m.latency.Observe(lat.Seconds())
	if r.opts.OnEvict != nil {
		r.opts.OnEvict(Eviction{Conn: c, Reason: v.cause.Reason, Key: v.key, Latency: lat})
	}
}

func (r *Registry) wakeScheduler() {
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

// scheduler evicts conns at their expiry. While it scans it advertises a wake time of
// MinInt64, so a conn tracked during the scan always pokes it again.
func (r *Registry) scheduler() {
	defer r.wg.Done()
	for {
		r.nextWake.Store(math.MinInt64)
		now := r.clock.Now()
		nowNs := now.UnixNano()
		next := int64(math.MaxInt64)
		var expired []victim
		for i := range r.shards {
			sh := &r.shards[i]
			sh.mu.Lock()
			for len(sh.heap) > 0 && sh.heap[0].notAfter <= nowNs {
				c := sh.heap.pop()
				expired = append(expired, victim{c: c, cause: Cause{Reason: ReasonExpired, Since: time.Unix(0, c.notAfter)}, at: now})
			}
			if len(sh.heap) > 0 && sh.heap[0].notAfter < next {
				next = sh.heap[0].notAfter
			}
			sh.mu.Unlock()
		}
		r.enqueue(expired)
		r.nextWake.Store(next)
		var stopTimer func() bool
		if next != math.MaxInt64 {
			stopTimer = r.clock.AfterFunc(time.Duration(next-nowNs), r.wakeScheduler)
			// The clock may have moved between reading it and arming the timer, which then
			// counts from the later time: look again, so a deadline already passed is not
			// left to a timer that fires late (or, on a test's clock, never).
			if r.clock.Now().UnixNano() >= next {
				r.wakeScheduler()
			}
		}
		select {
		case <-r.poke:
		case <-r.stop:
			if stopTimer != nil {
				stopTimer()
			}
			return
		}
		if stopTimer != nil {
			stopTimer()
		}
	}
}

type expiryHeap []*Conn

func (h *expiryHeap) push(c *Conn) {
	c.heapIdx = int32(len(*h))
	*h = append(*h, c)
	h.up(int(c.heapIdx))
}

func (h *expiryHeap) pop() *Conn {
	c := (*h)[0]
	h.remove(c)
	return c
}

func (h *expiryHeap) remove(c *Conn) {
	s := *h
	i, last := int(c.heapIdx), len(s)-1
	if i != last {
		s[i] = s[last]
		s[i].heapIdx = int32(i)
	}
	s[last] = nil
	*h = s[:last]
	c.heapIdx = -1
	if i < last {
		if !h.down(i) {
			h.up(i)
		}
	}
}

func (h expiryHeap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if h[p].notAfter <= h[i].notAfter {
			return
		}
		h.swap(i, p)
		i = p
	}
}

func (h expiryHeap) down(i int) bool {
	start := i
	for {
		l := 2*i + 1
		if l >= len(h) {
			break
		}
		m := l
		if r := l + 1; r < len(h) && h[r].notAfter < h[l].notAfter {
			m = r
		}
		if h[i].notAfter <= h[m].notAfter {
			break
		}
		h.swap(i, m)
		i = m
	}
	return i > start
}

func (h expiryHeap) swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIdx = int32(i)
	h[j].heapIdx = int32(j)
}

type metrics struct {
	active       prometheus.Gauge
	tracked      prometheus.Counter
	evictions    *prometheus.CounterVec
	latency      prometheus.Histogram
	falseMatches prometheus.Counter
}

// newMetrics registers the registry's metrics on reg, or takes the ones registered there
// already: registries sharing a Registerer count into the same metrics.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "guardian_connections_active", Help: "Conns tracked now.",
		}),
		tracked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "guardian_connections_tracked_total", Help: "Conns tracked since start.",
		}),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_evictions_total", Help: "Conns closed by eviction, by reason.",
		}, []string{"reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "guardian_eviction_latency_seconds",
			Help:    "From the event that caused an eviction (a revocation's arrival, an expiry) to the raw conn's close.",
			Buckets: []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1},
		}),
		falseMatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "guardian_eviction_hash_false_matches_total", Help: "Key-hash hits that the full key check rejected.",
		}),
	}
	var err error
	register := func(c prometheus.Collector) prometheus.Collector {
		if err == nil {
			c, err = promreg.Register(reg, c)
		}
		return c
	}
	m.active = register(m.active).(prometheus.Gauge)
	m.tracked = register(m.tracked).(prometheus.Counter)
	m.evictions = register(m.evictions).(*prometheus.CounterVec)
	m.latency = register(m.latency).(prometheus.Histogram)
	m.falseMatches = register(m.falseMatches).(prometheus.Counter)
	if err != nil {
		return nil, fmt.Errorf("conntrack: register metrics: %w", err)
	}
	return m, nil
}
