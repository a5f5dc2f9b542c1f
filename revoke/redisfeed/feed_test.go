package redisfeed_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/internal/redistest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

func key(i int) revoke.Key {
	h := sha256.Sum256([]byte(fmt.Sprint(i)))
	return revoke.Key("sha256:" + hex.EncodeToString(h[:]))
}

func client(t testing.TB, srv *redistest.Server) redis.UniversalClient {
	t.Helper()
	// Default retries, as in production: the feed must notice a restart even when go-redis
	// hides the reconnect behind a retried command.
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), DialTimeout: time.Second})
	t.Cleanup(func() { c.Close() })
	return c
}

// node is one guardian node's revocation state: a Set kept in step by a running Feed.
type node struct {
	set     *revoke.Set
	feed    *redisfeed.Feed
	metrics *prometheus.Registry
	cancel  context.CancelFunc
	done    chan struct{}
}

func startNode(t testing.TB, srv *redistest.Server, prefix string) *node {
	t.Helper()
	n := &node{metrics: prometheus.NewRegistry()}
	n.set, _ = revoke.NewSet(revoke.SetOptions{Metrics: n.metrics})
	var err error
	n.feed, err = redisfeed.NewFeed(redisfeed.NewStore(client(t, srv), prefix, 0), n.set,
		redisfeed.FeedOptions{Block: 200 * time.Millisecond, Metrics: n.metrics})
	if err != nil {
		t.Fatal(err)
	}
	n.run(t)
	return n
}

func (n *node) run(t testing.TB) {
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan struct{})
	go func() { n.feed.Run(ctx); close(n.done) }()
	t.Cleanup(n.stop)
	select {
	case <-n.feed.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("feed did not sync within 10s")
	}
}

func (n *node) stop() {
	n.cancel()
	<-n.done
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 15s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func revokeN(t testing.TB, st *redisfeed.Store, keys ...revoke.Key) uint64 {
	t.Helper()
	var v uint64
	for _, k := range keys {
		var err error
		v, err = st.Revoke(context.Background(), revoke.Entry{Key: k, Reason: "keyCompromise", RevokedAt: time.Now().UTC()})
		if err != nil {
			t.Fatal(err)
		}
	}
	return v
}

func TestRevokeAndUnrevokeReachTheSet(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	st := redisfeed.NewStore(client(t, srv), "", 0)
	revokeN(t, st, key(1)) // before the node starts: arrives in the snapshot
	n := startNode(t, srv, "")
	if !n.set.Has(key(1)) {
		t.Fatal("snapshot entry missing")
	}
	v := revokeN(t, st, key(2))
	eventually(t, "streamed revoke applied", func() bool { return n.set.Has(key(2)) })
	if e, _ := n.set.Lookup(key(2)); e.Source != "redis" || e.Reason != "keyCompromise" {
		t.Errorf("entry = %+v; want source redis, reason keyCompromise", e)
	}
	v2, changed, err := st.Unrevoke(context.Background(), key(1))
	if err != nil || !changed || v2 != v+1 {
		t.Fatalf("Unrevoke: v=%d changed=%v err=%v; want v=%d changed", v2, changed, err, v+1)
	}
	eventually(t, "unrevoke applied", func() bool { return !n.set.Has(key(1)) })
	if _, changed, _ := st.Unrevoke(context.Background(), key(1)); changed {
		t.Fatal("unrevoking an absent key reported a change")
	}
	eventually(t, "applied version", func() bool { return n.feed.Status().Applied == v2 })
	if _, err := st.Revoke(context.Background(), revoke.Entry{Key: "sha256:NOPE"}); err == nil {
		t.Fatal("Store accepted a malformed key")
	}
}

// Two fleets with different prefixes share one Redis without seeing each other.
func TestPrefixesIsolateFleets(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	a, b := startNode(t, srv, "fleet-a"), startNode(t, srv, "fleet-b")
	revokeN(t, redisfeed.NewStore(client(t, srv), "fleet-a", 0), key(1))
	eventually(t, "fleet-a applied", func() bool { return a.set.Has(key(1)) })
	time.Sleep(300 * time.Millisecond)
	if b.set.Has(key(1)) {
		t.Fatal("fleet-b saw fleet-a's revocation")
	}
}

// SIGKILL Redis (with persistence), restart it, and write revocations from a second client
// right after the restart, before the node has reconnected: the node catches up.
func TestRedisKilledAndRestartedCatchUp(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Persist: true})
	n := startNode(t, srv, "")
	writer := redisfeed.NewStore(client(t, srv), "", 0)
	revokeN(t, writer, key(1))
	eventually(t, "first revoke", func() bool { return n.set.Has(key(1)) })

	srv.Restart() // SIGKILL, then start on the same port and data
	fresh := redisfeed.NewStore(client(t, srv), "", 0)
	revokeN(t, fresh, key(2), key(3))
	if _, _, err := fresh.Unrevoke(context.Background(), key(1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "caught up after restart", func() bool {
		return n.set.Has(key(2)) && n.set.Has(key(3)) && !n.set.Has(key(1))
	})
	if st := n.feed.Status(); st.Regressed {
		t.Fatalf("a persistent Redis restart was reported as a regression: %s", st.Reason)
	}
	revokeN(t, fresh, key(4))
	eventually(t, "streaming again", func() bool { return n.set.Has(key(4)) })
	// Whether the node resynced or simply read on (go-redis may retry the blocked XREAD on
	// the restarted server, whose persisted stream continues), nothing may be missed:
	// asserted above.
}

// A version gap (a record missing between two the node reads) forces a resync that
// converges; so does a stream trimmed past the node's position, unrevokes included.
func TestGapAndTrimForceConvergingResync(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := client(t, srv)
	st := redisfeed.NewStore(rdb, "", 50)
	revokeN(t, st, key(1), key(2))
	n := startNode(t, srv, "")

	// A gap: the version moves without a record (as when a script fails after INCR).
	if err := rdb.Incr(context.Background(), st.Keys().Version).Err(); err != nil {
		t.Fatal(err)
	}
	revokeN(t, st, key(3))
	eventually(t, "gap resync", func() bool { return n.set.Has(key(3)) })
	if v := metrictest.Value(t, n.metrics, "guardian_feed_resyncs_total", "reason", "version gap"); v != 1 {
		t.Errorf("resyncs{reason=version gap} = %v; want 1", v)
	}

	// Trim: the node is away while 600 changes go by on a stream capped near 50.
	n.stop()
	if _, _, err := st.Unrevoke(context.Background(), key(1)); err != nil {
		t.Fatal(err)
	}
	for i := 100; i < 400; i++ {
		revokeN(t, st, key(i))
		if i%2 == 0 {
			st.Unrevoke(context.Background(), key(i))
		}
	}
	if l, _ := rdb.XLen(context.Background(), st.Keys().Log).Result(); l > 300 {
		t.Fatalf("stream not trimmed: %d records", l)
	}
	n.run(t)
	want, _, err := st.Entries(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "converged with the hash", func() bool { return sameKeys(n.set.Entries(), want) })
	if n.set.Has(key(1)) || n.set.Has(key(100)) || !n.set.Has(key(101)) {
		t.Fatal("unrevokes made while away were not applied")
	}
}

func sameKeys(a, b []revoke.Entry) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[revoke.Key]bool{}
	for _, e := range a {
		m[e.Key] = true
	}
	for _, e := range b {
		if !m[e.Key] {
			return false
		}
	}
	return true
}

// Redis restarted without persistence comes back empty: the node keeps every entry,
// reports the regression, and still applies what is written afterwards.
func TestRedisRestartedEmptyKeepsEntries(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Persist: false})
	n := startNode(t, srv, "")
	st := redisfeed.NewStore(client(t, srv), "", 0)
	revokeN(t, st, key(1), key(2))
	eventually(t, "applied", func() bool { return n.set.Has(key(2)) })

	srv.Restart()
	eventually(t, "regression reported", func() bool { return n.feed.Status().Regressed })
	if !n.set.Has(key(1)) || !n.set.Has(key(2)) {
		t.Fatal("the node unrevoked entries that an empty Redis no longer has")
	}
	if !strings.Contains(n.feed.Status().Reason, "epoch") {
		t.Errorf("reason %q does not explain the regression", n.feed.Status().Reason)
	}
	if v := metrictest.Value(t, n.metrics, "guardian_feed_regressed"); v != 1 {
		t.Errorf("guardian_feed_regressed = %v; want 1", v)
	}
	fresh := redisfeed.NewStore(client(t, srv), "", 0)
	revokeN(t, fresh, key(3))
	eventually(t, "new revocation after the regression", func() bool { return n.set.Has(key(3)) })
	// A later reconnect to the same (now empty but for key 3) Redis must not unrevoke either.
	srv.Restart()
	revokeN(t, redisfeed.NewStore(client(t, srv), "", 0), key(4))
	eventually(t, "after a second restart", func() bool { return n.set.Has(key(4)) })
	for i := 1; i <= 3; i++ {
		if !n.set.Has(key(i)) {
			t.Fatalf("key %d unrevoked by a later resync while regressed", i)
		}
	}

	// The operator checks what the node would write back, then reseeds.
	missing, err := n.feed.Missing(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != 3 { // keys 1 and 2 from before, key 3 from before the second restart
		t.Fatalf("Missing = %d entries; want 3: %v", len(missing), missing)
	}
	other := startNode(t, srv, "") // a second node, following the empty Redis
	st2 := redisfeed.NewStore(client(t, srv), "", 0)
	written, v, err := st2.Reseed(context.Background(), missing, n.feed.Status().Applied)
	if err != nil || written != 3 {
		t.Fatalf("Reseed: written=%d err=%v; want 3", written, err)
	}
	eventually(t, "regression cleared after the reseed", func() bool { return !n.feed.Status().Regressed })
	eventually(t, "the other node learns the reseeded entries", func() bool {
		return other.set.Has(key(1)) && other.set.Has(key(2)) && other.set.Has(key(3)) && other.set.Has(key(4))
	})
	if n.feed.Status().Applied < v {
		t.Errorf("applied %d after reseed to version %d", n.feed.Status().Applied, v)
	}
	// Redis's own entries were never overwritten, and normal service resumes.
	revokeN(t, st2, key(5))
	eventually(t, "streaming after reseed", func() bool { return n.set.Has(key(5)) && other.set.Has(key(5)) })
}

// Malformed records in the stream and the hash are skipped, counted and logged; the feed
// keeps running and the Set never sees them.
func TestMalformedRecordsSkipped(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := client(t, srv)
	st := redisfeed.NewStore(rdb, "", 0)
	k := st.Keys()
	ctx := context.Background()
	// Bad hash fields before the node starts (seen by the snapshot).
	rdb.HSet(ctx, k.Revoked, "sha256:zz", `{"key":"sha256:zz"}`)
	rdb.HSet(ctx, k.Revoked, string(key(9)), `not json`)
	rdb.HSet(ctx, k.Revoked, string(key(8)), fmt.Sprintf(`{"key":%q}`, key(7))) // key mismatch
	rdb.HSet(ctx, k.Revoked, string(key(6)), `{"key":"`+string(key(6))+`","reason":"`+strings.Repeat("x", 20000)+`"}`)
	n := startNode(t, srv, "")
	if n.set.Len() != 0 {
		t.Fatalf("malformed hash entries reached the Set: %v", n.set.Entries())
	}
	if v := metrictest.Value(t, n.metrics, "guardian_feed_malformed_records_total", "where", "hash"); v != 4 {
		t.Errorf("malformed{hash} = %v; want 4", v)
	}
	// Bad stream records, each with its own version so the stream stays continuous.
	bad := []map[string]any{
		{"op": "frobnicate", "key": string(key(1))},
		{"op": "revoke", "key": string(key(2)), "entry": "{"},
		{"op": "revoke", "key": "dns:Not..Canonical", "entry": `{"key":"dns:x"}`},
		{"op": "unrevoke", "key": "nonsense"},
	}
	for _, vals := range bad {
		v, err := rdb.Incr(ctx, k.Version).Result()
		if err != nil {
			t.Fatal(err)
		}
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: k.Log, ID: fmt.Sprintf("%d-0", v), Values: vals}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	revokeN(t, st, key(5))
	eventually(t, "the good record after the bad ones", func() bool { return n.set.Has(key(5)) })
	if n.set.Len() != 1 {
		t.Fatalf("Set holds %v; want only the good entry", n.set.Entries())
	}
	if v := metrictest.Value(t, n.metrics, "guardian_feed_malformed_records_total", "where", "stream"); v != 4 {
		t.Errorf("malformed{stream} = %v; want 4", v)
	}
	if v := metrictest.Value(t, n.metrics, "guardian_feed_resyncs_total"); v != 1 {
		t.Errorf("resyncs = %v; want only the initial one (bad records are not gaps)", v)
	}
}

func TestStaleness(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	n := startNode(t, srv, "")
	if s := n.feed.Staleness(); s > 2*time.Second {
		t.Fatalf("staleness %v right after sync", s)
	}
	srv.Kill()
	time.Sleep(time.Second)
	if s := n.feed.Staleness(); s < 500*time.Millisecond {
		t.Fatalf("staleness %v with Redis down for 1s; want it growing", s)
	}
	srv.Start()
	eventually(t, "fresh again", func() bool { return n.feed.Staleness() < 500*time.Millisecond })
}

// A batch of revocations landing together is applied as one Set change (one eviction scan);
// a revoke, unrevoke, revoke of one key inside one batch keeps its order.
func TestBatchAppliedAsOneChangeInOrder(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := client(t, srv)
	st := redisfeed.NewStore(rdb, "", 0)
	n := startNode(t, srv, "")
	var changes, added int
	var mu sync.Mutex
	n.set.Subscribe(func(c revoke.Change) {
		mu.Lock()
		changes++
		added += len(c.Added)
		mu.Unlock()
	})
	batch := make([]revoke.Entry, 200)
	for i := range batch {
		batch[i] = revoke.Entry{Key: key(1000 + i)}
	}
	v, err := st.RevokeMany(context.Background(), batch)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "batch applied", func() bool { return n.feed.Status().Applied == v })
	mu.Lock()
	if added != 200 || changes != 1 {
		t.Errorf("200 revocations arrived as %d Set changes (%d added); want 1", changes, added)
	}
	mu.Unlock()

	// revoke k, unrevoke k, revoke k again, all in one transaction: k ends revoked.
	k := key(5000)
	e, _ := json.Marshal(revoke.Entry{Key: k})
	_, err = rdb.TxPipelined(context.Background(), func(p redis.Pipeliner) error {
		for _, op := range []string{"revoke", "unrevoke", "revoke", "unrevoke", "revoke"} {
			p.Eval(context.Background(), redisfeed.ChangeScriptSource(), []string{st.Keys().Revoked, st.Keys().Version, st.Keys().Log, st.Keys().Epoch}, op, string(k), string(e), 1000, "x")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := rdb.Get(context.Background(), st.Keys().Version).Uint64()
	eventually(t, "interleaved batch applied", func() bool { return n.feed.Status().Applied == want })
	if !n.set.Has(k) {
		t.Fatal("revoke/unrevoke/revoke in one batch left the key unrevoked: order lost")
	}
}
