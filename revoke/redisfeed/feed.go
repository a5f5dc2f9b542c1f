package redisfeed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/guardian-mtls/guardian/clock"
	"github.com/guardian-mtls/guardian/internal/clip"
	"github.com/guardian-mtls/guardian/internal/ratelog"
	"github.com/guardian-mtls/guardian/revoke"
)

// FeedOptions configures a Feed.
type FeedOptions struct {
	// Block is how long one XREAD waits for records; it also bounds how stale a node can
	// be before it notices. 0 means 2s.
	Block time.Duration
	// Clock is the time source for staleness; nil means the real clock.
	Clock clock.Clock
	// OnCRL, if set, receives each CRL pushed through Redis (Store.PushCRL), by the hash of
	// its issuer, on the feed's goroutine: at start-up and every resync those not yet
	// delivered, then each push as its record arrives. It checks and applies the CRL
	// (crl.Applier.Apply); the feed knows nothing of CRLs.
	OnCRL   func(issuer string, der []byte)
	Logger  *slog.Logger
	Metrics prometheus.Registerer
}

// Status is a Feed's state, for /readyz, metrics and the CLI.
type Status struct {
	Applied   uint64    // the last version applied
	Epoch     string    // the Redis epoch the node follows
	LastHeard time.Time // last successful read from Redis
	Resyncs   uint64
	// Regressed is set when Redis came back with less than the node had seen; the node
	// kept its entries. Cleared by a reseed.
	Regressed bool
	Reason    string // why it regressed
	// Stuck says why the feed cannot follow Redis although Redis answers: resyncs that keep
	// failing, or keep being needed again before any record is read (Redis answering errors
	// about what it holds, a record the node cannot apply). Empty while the feed makes
	// progress, and while Redis is merely unreachable, which Staleness reports. A node is
	// not ready while it is set.
	Stuck string
}

// Feed keeps a Set in step with a Store's Redis.
type Feed struct {
	store *Store
	set   *revoke.Set
	opts  FeedOptions
	log   *slog.Logger
	// outside logs what anyone with write access to Redis can cause (a foreign or malformed
	// record): a line a minute per message, the rest counted in its "suppressed" attribute.
	outside *slog.Logger
	m       *feedMetrics

	mu        sync.Mutex // guards the status fields below
	applied   uint64
	epoch     string
	resyncs   uint64
	regressed bool
	reason    string
	stuck     string

	// Feed goroutine only:
	crlSeen map[string]uint64 // issuer → the push version delivered to OnCRL
	// cursor is the ID of the last stream entry read: entries others add to the stream are
	// read once and skipped, so a record's ID need not name its version.
	cursor string
	// seen is the version Redis reported at the last verify, and seenApplied what the node
	// had applied then: a node still short of seen a verify later, having applied nothing in
	// between, is reading a stream that no longer carries the records (see verify).
	seen, seenApplied uint64

	lastHeard atomic.Int64 // unix nanos
	synced    chan struct{}
	syncOnce  sync.Once
}

// NewFeed returns a Feed that applies store's changes to set. Run starts it.
func NewFeed(store *Store, set *revoke.Set, opts FeedOptions) (*Feed, error) {
	if opts.Block <= 0 {
		opts.Block = 2 * time.Second
	}
	opts.Clock = clock.Or(opts.Clock)
	f := &Feed{store: store, set: set, opts: opts, log: opts.Logger, synced: make(chan struct{}), crlSeen: map[string]uint64{},
		cursor: "0-0"}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	f.outside = ratelog.Logger(f.log, 1, outsideLogEvery)
	m, err := newFeedMetrics(opts.Metrics, f)
	if err != nil {
		return nil, err
	}
	f.m = m
	return f, nil
}

// Store returns the feed's store.
func (f *Feed) Store() *Store { return f.store }

// Synced is closed once the first snapshot has been applied.
func (f *Feed) Synced() <-chan struct{} { return f.synced }

// Status returns the feed's state.
func (f *Feed) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return Status{Applied: f.applied, Epoch: f.epoch, LastHeard: f.heard(), Resyncs: f.resyncs,
		Regressed: f.regressed, Reason: f.reason, Stuck: f.stuck}
}

// Staleness is how long ago the feed last heard from Redis; a feed that never has is
// infinitely stale.
func (f *Feed) Staleness() time.Duration {
	h := f.heard()
	if h.IsZero() {
		return time.Duration(1<<63 - 1)
	}
	return f.opts.Clock.Now().Sub(h)
}

// StaleAfter returns a function reporting whether the feed has been unheard for longer than
// max: listener.Config.Stale.
func (f *Feed) StaleAfter(max time.Duration) func() bool {
	return func() bool { return f.Staleness() > max }
}

func (f *Feed) heard() time.Time {
	n := f.lastHeard.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func (f *Feed) markHeard() { f.lastHeard.Store(f.opts.Clock.Now().UnixNano()) }

// Resync pacing: the first resync after progress runs at once; each further one before the
// feed reads the stream cleanly waits twice as long as the last, from resyncBackoffMin up to
// resyncBackoffMax. After stuckAfter such resyncs, the feed reports itself stuck.
const (
	resyncBackoffMin = 50 * time.Millisecond
	resyncBackoffMax = 5 * time.Second
	stuckAfter       = 3
	outsideLogEvery  = time.Minute
)

func resyncDelay(tries int) time.Duration {
	if tries <= 0 {
		return 0
	}
	d := resyncBackoffMin
	for i := 1; i < tries && d < resyncBackoffMax; i++ {
		d *= 2
	}
	return min(d, resyncBackoffMax)
}

// Run follows Redis until ctx ends. Errors from Redis are retried with backoff, never
// returned; Run returns ctx's error, once the read in progress ends: up to
// FeedOptions.Block after ctx does.
func (f *Feed) Run(ctx context.Context) error {
	needSync, why := true, "start"
	var lastVerify time.Time
	// tries counts the resyncs begun since the feed last made progress (read the stream up
	// to its end, or applied what it read, without needing another resync). A resync that
	// succeeds is no progress by itself: a stream the node cannot follow would otherwise
	// have it resync in a loop.
	tries := 0
	trouble := func(what string, err error) { f.trouble(tries, what, err) }
	for ctx.Err() == nil {
		if needSync {
			if d := resyncDelay(tries); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
					return ctx.Err()
				case <-t.C:
				}
			}
			tries++
			if err := f.resync(ctx, why); err != nil {
				if ctx.Err() != nil {
					break
				}
				f.m.resyncFailures.Inc()
				f.log.Warn("redis resync failed; retrying", "reason", why, "attempt", tries, "retry_in", resyncDelay(tries), "err", err)
				trouble("resync failed", err)
				continue
			}
			needSync = false
		}
		f.mu.Lock()
		from := f.applied
		f.mu.Unlock()
		// go-redis retries a command on a fresh connection by default, so a restart or a
		// failover can hide behind a quiet XREAD: check who we are talking to, once per
		// Block interval (an idle XREAD returns that often), never once per batch.
		if now := time.Now(); now.Sub(lastVerify) >= f.opts.Block {
			lastVerify = now
			if reason := f.verify(ctx, from); reason != "" {
				needSync, why = true, reason
				trouble(reason, nil)
				continue
			}
		}
		res, err := f.store.rdb.XRead(ctx, &redis.XReadArgs{
			Streams: []string{f.store.keys.Log, f.cursor},
			Block:   f.opts.Block, Count: 1000,
		}).Result()
		if errors.Is(err, redis.Nil) {
			f.markHeard()
			tries = f.progress(tries)
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			// A reconnect may land on another Redis (a restart, a failover): resync.
			f.log.Warn("redis read failed; will resync", "err", err)
			needSync, why = true, "reconnect"
			trouble("read "+f.store.keys.Log, err)
			continue
		}
		f.markHeard()
		for _, st := range res {
			if gap := f.applyMessages(ctx, st.Messages); gap != "" {
				needSync, why = true, gap
				break
			}
		}
		if needSync {
			trouble(why, nil)
		} else {
			tries = f.progress(tries)
		}
	}
	return ctx.Err()
}

// progress records that the feed is following Redis again: the resync backoff starts over
// and the feed is no longer stuck. It returns the new count of resyncs without progress.
func (f *Feed) progress(tries int) int {
	if tries == 0 {
		return 0
	}
	f.mu.Lock()
	was := f.stuck
	f.stuck = ""
	f.mu.Unlock()
	if was != "" {
		f.log.Info("the revocation feed follows redis again", "was", was)
	}
	return 0
}

// trouble records why the feed resyncs again (what, and err if an error caused it) after
// tries resyncs without progress. From stuckAfter on, the feed is stuck, unless Redis is
// merely unavailable: staleness reports that, and tolerates it for max_staleness.
func (f *Feed) trouble(tries int, what string, err error) {
	if tries < stuckAfter || (err != nil && unavailable(err)) {
		return
	}
	if err != nil {
		what += ": " + err.Error()
	}
	stuck := fmt.Sprintf("%d resyncs in a row without progress; last: %s", tries, clip.String(what, 300))
	f.mu.Lock()
	was := f.stuck
	f.stuck = stuck
	f.mu.Unlock()
	if was == "" {
		f.log.Error("the revocation feed cannot follow redis; resyncing with backoff", "reason", stuck)
	}
}

// unavailable reports whether err means Redis could not be reached or was not serving yet
// (a network error, a timeout, a server loading its data or failing over), as opposed to
// Redis answering an error about what it holds, or holding what the node cannot read, which
// recurs until someone fixes it.
func unavailable(err error) bool {
	var re redis.Error
	if errors.As(err, &re) {
		return redis.IsLoadingError(err) || redis.IsClusterDownError(err) || redis.IsTryAgainError(err) ||
			redis.IsMasterDownError(err) || redis.IsReadOnlyError(err) || redis.IsMaxClientsError(err)
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, redis.ErrClosed) || errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, redis.ErrPoolExhausted) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

// verify reports a resync reason if Redis is no longer the one the node synced from: its
// epoch changed (a restart without data, another instance) or its version went below what
// the node applied (a failover to a lagging replica). It also reports a node that has not
// reached the version Redis showed at the previous verify, a Block or more ago, and applied
// nothing since: the records are not where it reads (the stream was deleted or replaced
// and begins again below the node's position). applied is what the node has applied. A
// failed read says nothing here; the XREAD that follows fails too and triggers the resync.
func (f *Feed) verify(ctx context.Context, applied uint64) string {
	k := f.store.keys
	var epochCmd, versionCmd *redis.StringCmd
	_, err := f.store.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		epochCmd = p.Get(ctx, k.Epoch)
		versionCmd = p.Get(ctx, k.Version)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return ""
	}
	f.mu.Lock()
	epoch := f.epoch
	f.mu.Unlock()
	if epochCmd.Val() != epoch {
		return "epoch changed"
	}
	var v uint64
	fmt.Sscan(versionCmd.Val(), &v)
	if v < applied {
		return "version regressed"
	}
	behind := applied < f.seen && applied == f.seenApplied
	f.seen, f.seenApplied = v, applied
	if behind {
		return "stream behind version"
	}
	return ""
}

// applyMessages applies stream messages in order; it returns a resync reason if the
// messages do not continue from the applied version. Consecutive records of one kind are
// applied as one Set change, so a batch of revocations costs one eviction scan, not one each;
// a revoke and an unrevoke are never merged, so order between them holds.
func (f *Feed) applyMessages(ctx context.Context, msgs []redis.XMessage) string {
	f.mu.Lock()
	applied := f.applied
	f.mu.Unlock()
	var run []record
	var runOp string
	flush := func() {
		if len(run) == 0 {
			return
		}
		var added []revoke.Entry
		var removed []revoke.Key
		for _, r := range run {
			if r.op == OpRevoke {
				added = append(added, r.entry)
			} else {
				removed = append(removed, r.key)
			}
		}
		if _, err := f.set.Apply(revoke.SourceRedis, added, removed); err != nil { // cannot happen for parsed records
			f.malformed("stream", fmt.Sprint(run[0].version), err)
		}
		run = run[:0]
	}
	defer func() {
		flush()
		f.mu.Lock()
		f.applied = applied
		f.mu.Unlock()
		f.m.applied.Set(float64(applied))
	}()
	for _, msg := range msgs {
		f.cursor = msg.ID
		v, fromID, err := messageVersion(msg.ID, msg.Values)
		op, _ := msg.Values["op"].(string)
		if err == nil && fromID && v != applied+1 && !isOp(op) {
			// XADD * gives "<milliseconds>-0": a version only if it is the next one, or the
			// entry is one of guardian's records.
			err = fmt.Errorf("%w: no version field, op %q", errForeign, clip.String(op, 32))
		}
		if err != nil {
			f.foreign(msg.ID, err)
			continue
		}
		if v <= applied {
			// Records after the node's position were all written after its snapshot, so each
			// has a version above it. One at or below it is forged or replayed, and the real
			// record of that version may be the one the node would skip: resync.
			f.foreign(msg.ID, fmt.Errorf("version %d, when this node has applied %d", v, applied))
			return "version repeated"
		}
		if op == OpReseed {
			return "reseed"
		}
		if v != applied+1 {
			// The records in between were trimmed, or a script failed after INCR.
			return "version gap"
		}
		rec, err := parseRecord(v, msg.Values)
		switch {
		case err != nil:
			f.malformed("stream", msg.ID, err)
		case rec.op == OpCRL:
			flush()
			if err := f.deliverCRL(ctx, rec.issuer, v); err != nil {
				f.log.Warn("reading a pushed CRL failed; will resync", "issuer", rec.issuer, "err", err)
				return "crl read failed"
			}
		default:
			if rec.op != runOp {
				flush()
				runOp = rec.op
			}
			run = append(run, rec)
		}
		applied = v
	}
	return ""
}

// foreign counts a stream entry that is not one of guardian's records, or names a version
// that does not fit; the log gets a line a minute, not one per entry.
func (f *Feed) foreign(id string, err error) {
	f.m.foreign.Inc()
	f.outside.Warn("skipped a foreign stream entry: guardian did not write it",
		"stream", f.store.keys.Log, "id", clip.String(id, 64), "err", err)
}

func (f *Feed) malformed(where, what string, err error) {
	f.m.malformed.WithLabelValues(where).Inc()
	f.outside.Error("skipped a malformed revocation record", "where", where, "record", clip.String(what, 200), "err", err)
}

// deliverCRL reads the CRL pushed for issuer and hands it to OnCRL.
func (f *Feed) deliverCRL(ctx context.Context, issuer string, version uint64) error {
	if f.opts.OnCRL == nil || f.crlSeen[issuer] >= version {
		return nil
	}
	der, err := f.store.rdb.Get(ctx, f.store.keys.CRL(issuer)).Bytes()
	if errors.Is(err, redis.Nil) {
		f.outside.Warn("a pushed CRL is gone from redis", "issuer", issuer, "key", f.store.keys.CRL(issuer))
		return nil
	}
	if err != nil {
		return err
	}
	f.opts.OnCRL(issuer, der)
	f.crlSeen[issuer] = version
	return nil
}

// syncCRLs delivers the pushed CRLs this node has not had, or had in an older push.
func (f *Feed) syncCRLs(ctx context.Context) error {
	if f.opts.OnCRL == nil {
		return nil
	}
	pushed, err := f.store.rdb.HGetAll(ctx, f.store.keys.CRLs).Result()
	if err != nil {
		return fmt.Errorf("redisfeed: read %s: %w", f.store.keys.CRLs, err)
	}
	for issuer, vs := range pushed {
		v, err := strconv.ParseUint(vs, 10, 64)
		if err != nil || !isIssuerHash(issuer) {
			f.malformed("crls", issuer, fmt.Errorf("push version %q", clip.String(vs, 32)))
			continue
		}
		if f.crlSeen[issuer] != v {
			f.crlSeen[issuer] = 0 // a lower version after a Redis restart is still news
			if err := f.deliverCRL(ctx, issuer, v); err != nil {
				return fmt.Errorf("redisfeed: read the CRL of %s: %w", issuer, err)
			}
		}
	}
	return nil
}

// resync reads the version, the epoch and the whole hash in one transaction and brings the
// Set in line with them. It never removes an entry when Redis has regressed.
func (f *Feed) resync(ctx context.Context, why string) error {
	k := f.store.keys
	var epochCmd, versionCmd *redis.StringCmd
	var hashCmd *redis.MapStringStringCmd
	var topCmd *redis.XMessageSliceCmd
	_, err := f.store.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.SetNX(ctx, k.Epoch, newEpoch(), 0)
		epochCmd = p.Get(ctx, k.Epoch)
		versionCmd = p.Get(ctx, k.Version)
		hashCmd = p.HGetAll(ctx, k.Revoked)
		// The stream's last entry, in the same transaction: the node reads on from there, so
		// every record it reads was written after this snapshot.
		topCmd = p.XRevRangeN(ctx, k.Log, "+", "-", 1)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("redisfeed: snapshot: %w", err)
	}
	// The transaction's error is its first command's; a GET of a missing key is redis.Nil.
	if err := hashCmd.Err(); err != nil {
		return fmt.Errorf("redisfeed: snapshot: read %s: %w", k.Revoked, err)
	}
	if err := topCmd.Err(); err != nil {
		return fmt.Errorf("redisfeed: snapshot: read %s: %w", k.Log, err)
	}
	cursor := "0-0"
	if top := topCmd.Val(); len(top) > 0 {
		cursor = top[0].ID
	}
	epoch := epochCmd.Val()
	var version uint64
	if s := versionCmd.Val(); s != "" {
		if _, err := fmt.Sscan(s, &version); err != nil {
			return fmt.Errorf("redisfeed: %s is %q, not a number", k.Version, clip.String(s, 32))
		}
	}
	entries, bad := parseHash(hashCmd.Val())
	for field, err := range bad {
		f.malformed("hash", field, err)
	}
	f.markHeard()

	f.mu.Lock()
	prevEpoch, prevApplied, stillRegressed := f.epoch, f.applied, f.regressed
	f.mu.Unlock()
	regression := ""
	switch {
	case prevEpoch != "" && epoch != prevEpoch:
		regression = fmt.Sprintf("redis epoch changed from %s to %s: it restarted without its data or is another instance", prevEpoch, epoch)
	case version < prevApplied:
		regression = fmt.Sprintf("redis version %d is lower than the %d this node applied", version, prevApplied)
	}

	inRedis := make(map[revoke.Key]bool, len(entries))
	for _, e := range entries {
		inRedis[e.Key] = true
	}
	var removed []revoke.Key
	if regression == "" && !stillRegressed {
		for _, e := range f.set.Entries() {
			if e.Source == revoke.SourceRedis && !inRedis[e.Key] {
				removed = append(removed, e.Key)
			}
		}
	} else if regression != "" {
		var kept int
		for _, e := range f.set.Entries() {
			if e.Source == revoke.SourceRedis && !inRedis[e.Key] {
				kept++
			}
		}
		f.log.Error("redis has less than this node has seen; keeping every entry, unrevoking nothing. Check, then run `guardian reseed`",
			"reason", regression, "entries_kept_not_in_redis", kept)
		f.m.regressions.Inc()
	}
	if _, err := f.set.Apply(revoke.SourceRedis, entries, removed); err != nil {
		return fmt.Errorf("redisfeed: apply snapshot: %w", err)
	}
	// A regressed node recovers once Redis again holds every entry it kept (a reseed).
	recovered := false
	if stillRegressed && regression == "" {
		recovered = true
		for _, e := range f.set.Entries() {
			if e.Source == revoke.SourceRedis && !inRedis[e.Key] {
				recovered = false
				break
			}
		}
	}
	f.cursor, f.seen, f.seenApplied = cursor, 0, 0
	f.mu.Lock()
	f.applied, f.epoch = version, epoch
	f.resyncs++
	if regression != "" {
		f.regressed, f.reason = true, regression
	}
	if recovered {
		f.regressed, f.reason = false, ""
	}
	f.mu.Unlock()
	if recovered {
		f.log.Info("redis holds every entry this node kept again; regression cleared")
	}
	if err := f.syncCRLs(ctx); err != nil {
		return err
	}
	f.m.applied.Set(float64(version))
	f.m.resyncs.WithLabelValues(why).Inc()
	f.log.Info("resynced from redis", "reason", why, "version", version, "entries", len(entries), "removed", len(removed))
	f.syncOnce.Do(func() { close(f.synced) })
	return nil
}

// Missing returns the node's Redis-sourced entries that Redis lacks: what a reseed would
// write back.
func (f *Feed) Missing(ctx context.Context) ([]revoke.Entry, error) {
	in, _, err := f.store.Entries(ctx)
	if err != nil {
		return nil, err
	}
	have := make(map[revoke.Key]bool, len(in))
	for _, e := range in {
		have[e.Key] = true
	}
	var out []revoke.Entry
	for _, e := range f.set.Entries() {
		if e.Source == revoke.SourceRedis && !have[e.Key] {
			out = append(out, e)
		}
	}
	return out, nil
}

type feedMetrics struct {
	applied        prometheus.Gauge
	resyncs        *prometheus.CounterVec
	resyncFailures prometheus.Counter
	malformed      *prometheus.CounterVec
	foreign        prometheus.Counter
	regressions    prometheus.Counter
}

func newFeedMetrics(reg prometheus.Registerer, f *Feed) (*feedMetrics, error) {
	m := &feedMetrics{
		applied: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "guardian_feed_applied_version", Help: "The last Redis change version this node applied.",
		}),
		resyncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_feed_resyncs_total", Help: "Full resyncs from Redis, by reason.",
		}, []string{"reason"}),
		resyncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "guardian_feed_resync_failures_total", Help: "Resyncs from Redis that failed (each is retried, with backoff).",
		}),
		malformed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_feed_malformed_records_total", Help: "Records skipped because they did not parse, by where (hash, stream).",
		}, []string{"where"}),
		foreign: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "guardian_feed_foreign_entries_total", Help: "Stream entries skipped because guardian did not write them: no version, or one that does not fit.",
		}),
		regressions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "guardian_feed_regressions_total", Help: "Times Redis came back with less than this node had seen.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	staleness := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "guardian_revocation_staleness_seconds", Help: "Seconds since the node last heard from Redis.",
	}, func() float64 {
		h := f.heard()
		if h.IsZero() {
			return -1
		}
		return f.opts.Clock.Now().Sub(h).Seconds()
	})
	regressed := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "guardian_feed_regressed", Help: "1 while Redis holds less than this node has seen (until a reseed).",
	}, func() float64 {
		if f.Status().Regressed {
			return 1
		}
		return 0
	})
	stuck := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "guardian_feed_stuck", Help: "1 while the feed cannot follow Redis although Redis answers (see the feed's Status().Stuck).",
	}, func() float64 {
		if f.Status().Stuck != "" {
			return 1
		}
		return 0
	})
	for _, c := range []prometheus.Collector{m.applied, m.resyncs, m.resyncFailures, m.malformed, m.foreign, m.regressions, staleness, regressed, stuck} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("redisfeed: register metrics: %w", err)
		}
	}
	return m, nil
}
