package redisfeed_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
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

// syncBuffer is a log sink that tests read while the feed writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// count returns how many log lines contain substr.
func (s *syncBuffer) count(substr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), substr)
}

// startLoggedNode is startNode with the feed's log kept for the test to read.
func startLoggedNode(t *testing.T, srv *redistest.Server) (*node, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	n := &node{metrics: prometheus.NewRegistry()}
	n.set, _ = revoke.NewSet(revoke.SetOptions{})
	var err error
	n.feed, err = redisfeed.NewFeed(redisfeed.NewStore(client(t, srv), "", 0), n.set, redisfeed.FeedOptions{
		Block: 200 * time.Millisecond, Metrics: n.metrics, Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	n.run(t)
	return n, logs
}

// resyncAttempts is every resync the feed began, whether it succeeded or failed.
func resyncAttempts(t *testing.T, n *node) float64 {
	t.Helper()
	return metrictest.Value(t, n.metrics, "guardian_feed_resyncs_total") +
		metrictest.Value(t, n.metrics, "guardian_feed_resync_failures_total")
}

func xadd(t *testing.T, rdb redis.UniversalClient, stream, id string, values ...any) {
	t.Helper()
	if err := rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, ID: id, Values: values}).Err(); err != nil {
		t.Fatalf("XADD %s %s: %v", stream, id, err)
	}
}

// An entry guardian did not write — an operator's XADD, another tool, an attacker with
// write access to the stream — sits in the log: at an auto ID (above every "<version>-0"),
// far in the future, shaped like guardian's records, or at the last ID a stream can hold.
// Every way of writing a change still works, and a running node and one started afterwards
// apply them all.
func TestForeignEntriesDoNotStopRevocations(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := client(t, srv)
	st := redisfeed.NewStore(rdb, "", 0)
	ctx := context.Background()
	log := st.Keys().Log
	revokeN(t, st, key(1))
	n := startNode(t, srv, "")

	lookalike, _ := json.Marshal(revoke.Entry{Key: key(99)})
	foreign := []struct {
		name   string
		id     string
		values []any
	}{
		{"auto ID", "*", []any{"x", "y"}},
		{"far in the future", "9999999999999-0", []any{"x", "y"}},
		{"shaped like a record, without a version", "*", []any{"op", "revoke", "key", string(key(99)), "entry", string(lookalike)}},
		{"the last possible ID", "18446744073709551615-18446744073709551615", []any{"x", "y"}},
	}
	for i, fe := range foreign {
		xadd(t, rdb, log, fe.id, fe.values...)
		base := 100 * (i + 1)
		if _, err := st.Revoke(ctx, revoke.Entry{Key: key(base)}); err != nil {
			t.Fatalf("after a foreign entry (%s), Revoke: %v", fe.name, err)
		}
		if _, _, err := st.Unrevoke(ctx, key(1)); err != nil && i == 0 {
			t.Fatalf("after a foreign entry (%s), Unrevoke: %v", fe.name, err)
		}
		if _, err := st.RevokeMany(ctx, []revoke.Entry{{Key: key(base + 1)}, {Key: key(base + 2)}}); err != nil {
			t.Fatalf("after a foreign entry (%s), RevokeMany: %v", fe.name, err)
		}
		if _, err := st.PushCRL(ctx, strings.Repeat("ab", 32), []byte("der")); err != nil {
			t.Fatalf("after a foreign entry (%s), PushCRL: %v", fe.name, err)
		}
		if _, _, err := st.Reseed(ctx, nil, 0); err != nil {
			t.Fatalf("after a foreign entry (%s), Reseed: %v", fe.name, err)
		}
		last, err := st.Revoke(ctx, revoke.Entry{Key: key(base + 3)})
		if err != nil {
			t.Fatalf("after a foreign entry (%s), the second Revoke: %v", fe.name, err)
		}
		eventually(t, "the node applies the changes written after a foreign entry ("+fe.name+")", func() bool {
			return n.set.Has(key(base)) && n.set.Has(key(base+1)) && n.set.Has(key(base+2)) && n.set.Has(key(base+3)) &&
				!n.set.Has(key(1)) && n.feed.Status().Applied == last
		})
	}
	if n.set.Has(key(99)) {
		t.Fatal("a foreign entry shaped like a revocation revoked its key")
	}
	late := startNode(t, srv, "")
	v := revokeN(t, st, key(2))
	for name, nd := range map[string]*node{"running": n, "started late": late} {
		eventually(t, "the "+name+" node applies a revocation", func() bool {
			return nd.set.Has(key(2)) && nd.feed.Status().Applied == v
		})
		want, _, err := st.Entries(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !sameKeys(nd.set.Entries(), want) {
			t.Fatalf("the %s node holds %d entries; Redis %d", name, len(nd.set.Entries()), len(want))
		}
	}
}

// A node reading foreign entries counts each once, logs them without a line per entry,
// skips them, and neither resyncs over them nor stops applying what follows.
func TestForeignEntriesCountedAndSkipped(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := client(t, srv)
	st := redisfeed.NewStore(rdb, "", 0)
	n, logs := startLoggedNode(t, srv)
	ctx := context.Background()
	log := st.Keys().Log

	const many = 100
	_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := 0; i < many; i++ {
			p.XAdd(ctx, &redis.XAddArgs{Stream: log, Values: []any{"x", i}})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "foreign entries counted", func() bool {
		return metrictest.Value(t, n.metrics, "guardian_feed_foreign_entries_total") == many
	})
	v := revokeN(t, st, key(1))
	eventually(t, "a revocation after the foreign entries", func() bool { return n.set.Has(key(1)) })
	time.Sleep(2 * time.Second) // the node reads on over the foreign entries
	if got := metrictest.Value(t, n.metrics, "guardian_feed_foreign_entries_total"); got != many {
		t.Errorf("foreign entries counted %v times; want %d (once each)", got, many)
	}
	if got := resyncAttempts(t, n); got > 2 {
		t.Errorf("%v resyncs over %d foreign entries; want the start-up one (foreign entries are no gap)", got, many)
	}
	if got := logs.count("foreign"); got < 1 || got > 2 {
		t.Errorf("%d log lines about %d foreign entries; want one, rate-limited", got, many)
	}
	if got := n.feed.Status().Applied; got != v {
		t.Errorf("applied %d; want %d", got, v)
	}

	// An entry that names a version this node has already applied: forged or replayed. It is
	// counted and never applied; the node resyncs once (the real record of that version may
	// be the one it skips) and goes on.
	before := resyncAttempts(t, n)
	e, _ := json.Marshal(revoke.Entry{Key: key(2)})
	xadd(t, rdb, log, "*", "v", fmt.Sprint(v), "op", "revoke", "key", string(key(2)), "entry", string(e))
	eventually(t, "the replayed version counted", func() bool {
		return metrictest.Value(t, n.metrics, "guardian_feed_foreign_entries_total") == many+1
	})
	v = revokeN(t, st, key(3))
	eventually(t, "a revocation after the replayed version", func() bool {
		return n.set.Has(key(3)) && n.feed.Status().Applied == v
	})
	time.Sleep(time.Second)
	if n.set.Has(key(2)) {
		t.Error("a replayed version's revocation reached the Set")
	}
	if got := resyncAttempts(t, n) - before; got > 2 {
		t.Errorf("%v resyncs after one replayed version; want at most one", got)
	}

	// The stealthy variant: a forged record takes the next version just ahead of the real
	// change (both land in one transaction, so the node reads them together and Redis's
	// version matches what the node applied). The real revocation is not lost.
	k := st.Keys()
	forged, _ := json.Marshal(revoke.Entry{Key: key(4)})
	genuine, _ := json.Marshal(revoke.Entry{Key: key(5)})
	if _, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.XAdd(ctx, &redis.XAddArgs{Stream: k.Log, Values: []any{"v", fmt.Sprint(v + 1), "op", "revoke", "key", string(key(4)), "entry", string(forged)}})
		p.Eval(ctx, redisfeed.ChangeScriptSource(), []string{k.Revoked, k.Version, k.Log, k.Epoch}, "revoke", string(key(5)), string(genuine), 1000, "x")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the real revocation behind a forged record of its version", func() bool {
		return n.set.Has(key(5)) && !n.set.Has(key(4)) && n.feed.Status().Applied == v+1
	})
}

// A node that cannot follow the stream (here: the log key holds a string, so every XREAD
// fails while every snapshot could succeed) retries its resync with a growing backoff, not
// in a loop; the next change written through a Store replaces the broken key, and the node
// follows again.
func TestResyncBacksOff(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := client(t, srv)
	st := redisfeed.NewStore(rdb, "", 0)
	n := startNode(t, srv, "")
	ctx := context.Background()
	revokeN(t, st, key(1))
	eventually(t, "applied", func() bool { return n.set.Has(key(1)) })

	before := resyncAttempts(t, n)
	if _, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, st.Keys().Log)
		p.Set(ctx, st.Keys().Log, "not a stream", 0)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	attempts := resyncAttempts(t, n) - before
	if attempts < 2 {
		t.Fatalf("%v resync attempts in 3 s with an unreadable stream; the test's premise (a persistent failure) is broken", attempts)
	}
	if attempts > 10 {
		t.Fatalf("%v resync attempts in 3 s with an unreadable stream; want a backoff (at most ~10)", attempts)
	}
	v, err := st.Revoke(ctx, revoke.Entry{Key: key(2)})
	if err != nil {
		t.Fatalf("Revoke with a log key that is not a stream: %v", err)
	}
	eventually(t, "the node follows the stream again", func() bool {
		return n.set.Has(key(2)) && n.feed.Status().Applied == v
	})
}

// A node that cannot follow Redis although Redis answers says so in Status().Stuck (and
// guardian_feed_stuck), for /readyz; it clears once the cause is fixed. A Redis that is
// merely unreachable is staleness, not stuck.
func TestStuckFeedReported(t *testing.T) {
	ctx := context.Background()
	stuck := func(t *testing.T, n *node, want string) {
		t.Helper()
		eventually(t, "stuck reported", func() bool { return strings.Contains(n.feed.Status().Stuck, want) })
		if v := metrictest.Value(t, n.metrics, "guardian_feed_stuck"); v != 1 {
			t.Errorf("guardian_feed_stuck = %v while stuck; want 1", v)
		}
	}
	cleared := func(t *testing.T, n *node) {
		t.Helper()
		eventually(t, "stuck cleared", func() bool { return n.feed.Status().Stuck == "" })
		if v := metrictest.Value(t, n.metrics, "guardian_feed_stuck"); v != 0 {
			t.Errorf("guardian_feed_stuck = %v once cleared; want 0", v)
		}
	}

	t.Run("version key not a number", func(t *testing.T) {
		srv := redistest.Start(t, redistest.Options{})
		rdb := client(t, srv)
		st := redisfeed.NewStore(rdb, "", 0)
		n := startNode(t, srv, "")
		v := revokeN(t, st, key(1))
		eventually(t, "applied", func() bool { return n.feed.Status().Applied == v })
		if n.feed.Status().Stuck != "" {
			t.Fatalf("a healthy feed reports itself stuck: %s", n.feed.Status().Stuck)
		}
		rdb.Set(ctx, st.Keys().Version, "banana", 0)
		stuck(t, n, "not a number")
		rdb.Set(ctx, st.Keys().Version, v, 0)
		cleared(t, n)
		v = revokeN(t, st, key(2))
		eventually(t, "a revocation after the fix", func() bool { return n.set.Has(key(2)) && n.feed.Status().Applied == v })
	})

	t.Run("a pushed CRL that cannot be read", func(t *testing.T) {
		srv := redistest.Start(t, redistest.Options{})
		rdb := client(t, srv)
		st := redisfeed.NewStore(rdb, "", 0)
		var mu sync.Mutex
		var got [][]byte
		n := &node{metrics: prometheus.NewRegistry()}
		n.set, _ = revoke.NewSet(revoke.SetOptions{})
		var err error
		n.feed, err = redisfeed.NewFeed(st, n.set, redisfeed.FeedOptions{Block: 200 * time.Millisecond, Metrics: n.metrics,
			OnCRL: func(_ string, der []byte) { mu.Lock(); got = append(got, der); mu.Unlock() }})
		if err != nil {
			t.Fatal(err)
		}
		n.run(t)
		// A record that passes the stream (its version is the next one) but cannot be applied:
		// the CRL it announces is under a key that holds a hash.
		issuer := strings.Repeat("cd", 32)
		k := st.Keys()
		v, err := rdb.Incr(ctx, k.Version).Result()
		if err != nil {
			t.Fatal(err)
		}
		rdb.HSet(ctx, k.CRL(issuer), "not", "a CRL")
		rdb.HSet(ctx, k.CRLs, issuer, v)
		xadd(t, rdb, k.Log, fmt.Sprintf("%d-0", v), "v", fmt.Sprint(v), "op", "crl", "key", issuer)
		stuck(t, n, "WRONGTYPE")
		if _, err := st.PushCRL(ctx, issuer, []byte("der")); err != nil {
			t.Fatal(err)
		}
		cleared(t, n)
		mu.Lock()
		defer mu.Unlock()
		if len(got) != 1 || string(got[0]) != "der" {
			t.Fatalf("OnCRL got %q; want the CRL pushed to fix it", got)
		}
	})

	t.Run("redis unreachable is staleness", func(t *testing.T) {
		srv := redistest.Start(t, redistest.Options{Persist: true})
		// No retries inside go-redis: each resync fails as soon as the dial is refused.
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), DialTimeout: 300 * time.Millisecond, MaxRetries: -1})
		t.Cleanup(func() { rdb.Close() })
		n := startNodeWith(t, rdb)
		srv.Kill()
		eventually(t, "resyncs failing", func() bool {
			return metrictest.Value(t, n.metrics, "guardian_feed_resync_failures_total") >= 4
		})
		if s := n.feed.Status().Stuck; s != "" {
			t.Errorf("an unreachable Redis reported as stuck (%s); staleness reports it", s)
		}
		if s := n.feed.Staleness(); s < 200*time.Millisecond {
			t.Errorf("staleness %s after four failed resyncs", s)
		}
		srv.Start()
		eventually(t, "fresh again", func() bool { return n.feed.Staleness() < time.Second })
		if s := n.feed.Status().Stuck; s != "" {
			t.Errorf("stuck after Redis came back: %s", s)
		}
	})
}

// previousChangeScript is the change script of the release before records carried a v
// field (its ID alone named the version), as a node of that release still runs it during a
// rolling upgrade.
const previousChangeScript = `
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  epoch = ARGV[5]
  redis.call('SET', KEYS[4], epoch)
end
if ARGV[1] == 'unrevoke' and redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then
  return {tonumber(redis.call('GET', KEYS[2]) or '0'), 0, epoch}
end
local v = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], v .. '-0', 'op', ARGV[1], 'key', ARGV[2], 'entry', ARGV[3])
if ARGV[1] == 'revoke' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
else
  redis.call('HDEL', KEYS[1], ARGV[2])
end
return {v, 1, epoch}
`

// A rolling upgrade: writers of both releases take turns. Every write succeeds, a node of
// this release applies them all, and every record keeps the ID "<version>-0" that nodes of
// the previous release read their version from.
func TestRollingUpgradeMixesReleases(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := client(t, srv)
	st := redisfeed.NewStore(rdb, "", 0)
	n := startNode(t, srv, "")
	ctx := context.Background()
	k := st.Keys()
	var last uint64
	for i := 0; i < 10; i++ {
		if i%2 == 0 {
			last = revokeN(t, st, key(i))
			continue
		}
		e, _ := json.Marshal(revoke.Entry{Key: key(i)})
		res, err := rdb.Eval(ctx, previousChangeScript, []string{k.Revoked, k.Version, k.Log, k.Epoch},
			"revoke", string(key(i)), string(e), 1000, "x").Slice()
		if err != nil {
			t.Fatalf("the previous release's change script after this one's: %v", err)
		}
		last = uint64(res[0].(int64))
	}
	eventually(t, "every write of either release applied", func() bool {
		for i := 0; i < 10; i++ {
			if !n.set.Has(key(i)) {
				return false
			}
		}
		return n.feed.Status().Applied == last
	})
	msgs, err := rdb.XRange(ctx, k.Log, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs {
		if want := fmt.Sprintf("%d-0", i+1); m.ID != want {
			t.Errorf("record %d has ID %s; want %s, which the previous release reads", i+1, m.ID, want)
		}
		if v, ok := m.Values["v"]; ok && v != fmt.Sprint(i+1) {
			t.Errorf("record %s has v=%v", m.ID, v)
		}
	}
	if len(msgs) != 10 {
		t.Fatalf("%d records; want 10", len(msgs))
	}
	if got := metrictest.Value(t, n.metrics, "guardian_feed_foreign_entries_total"); got != 0 {
		t.Errorf("%v records of the previous release counted as foreign", got)
	}
}
