package conntrack_test

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/conntrack"
	"github.com/guardian-mtls/guardian/internal/fakeclock"
	"github.com/guardian-mtls/guardian/internal/metrictest"
)

func newRegistry(t testing.TB, opts conntrack.Options) *conntrack.Registry {
	t.Helper()
	r, err := conntrack.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// pair is a real loopback TCP connection: server is tracked, client is the peer.
type pair struct {
	server *conntrack.Conn
	client net.Conn
}

func dialPairs(t *testing.T, r *conntrack.Registry, n int) []pair {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	out := make([]pair, n)
	for i := range out {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		out[i] = pair{server: r.Wrap(s, i), client: c}
		t.Cleanup(func() { c.Close(); s.Close() })
	}
	return out
}

// peerClosed polls (generous deadline) until the client sees its conn end.
func peerClosed(t *testing.T, c net.Conn, within time.Duration) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return err != nil
}

func mustTrack(t testing.TB, r *conntrack.Registry, c *conntrack.Conn, keys []string, notAfter time.Time) {
	t.Helper()
	if err := r.Track(c, keys, notAfter); err != nil {
		t.Fatalf("Track(%q): %v", keys, err)
	}
}

func stillOpen(t *testing.T, c net.Conn) bool {
	t.Helper()
	return !peerClosed(t, c, 50*time.Millisecond)
}

func TestEvictClosesOnlyMatches(t *testing.T) {
	reg := prometheus.NewRegistry()
	var evicted []conntrack.Eviction
	var mu sync.Mutex
	r := newRegistry(t, conntrack.Options{Metrics: reg, OnEvict: func(e conntrack.Eviction) {
		mu.Lock()
		evicted = append(evicted, e)
		mu.Unlock()
	}})
	ps := dialPairs(t, r, 4)
	// Two conns of cert A (sharing the CA key "ca"), one of cert B under the same CA,
	// one of cert C under another CA.
	keys := [][]string{{"leaf:a", "ca:1"}, {"leaf:a", "ca:1"}, {"leaf:b", "ca:1"}, {"leaf:c", "ca:2"}}
	for i, p := range ps {
		if err := r.Track(p.server, keys[i], time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	if got := r.Len(); got != 4 {
		t.Fatalf("Len = %d; want 4", got)
	}
	if n := r.Evict([]string{"leaf:a"}, conntrack.Cause{Reason: conntrack.ReasonRevoked}); n != 2 {
		t.Fatalf("Evict(leaf:a) matched %d; want 2", n)
	}
	for i := 0; i < 2; i++ {
		if !peerClosed(t, ps[i].client, 5*time.Second) {
			t.Fatalf("conn %d of the revoked key is still open", i)
		}
	}
	for i := 2; i < 4; i++ {
		if !stillOpen(t, ps[i].client) {
			t.Fatalf("conn %d of another key was closed", i)
		}
	}
	waitFor(t, func() bool { return r.Len() == 2 })
	// A CA key hits every conn under it, and only those.
	r.Evict([]string{"ca:1", "nothing"}, conntrack.Cause{Reason: conntrack.ReasonRevoked})
	if !peerClosed(t, ps[2].client, 5*time.Second) || !stillOpen(t, ps[3].client) {
		t.Fatal("CA eviction hit the wrong conns")
	}
	waitFor(t, func() bool { return r.Len() == 1 })
	if v := metrictest.Value(t, reg, "guardian_evictions_total", "reason", "revoked"); v != 3 {
		t.Errorf("guardian_evictions_total{reason=revoked} = %v; want 3", v)
	}
	if v := metrictest.Value(t, reg, "guardian_connections_active"); v != 1 {
		t.Errorf("guardian_connections_active = %v; want 1", v)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(evicted) != 3 || evicted[0].Key != "leaf:a" || evicted[2].Key != "ca:1" {
		t.Errorf("OnEvict saw %+v", evicted)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// A hash hit is checked with Confirm before its conn is closed. Conn 0 holds "a" and "x",
// and its index holds "x" under the hash of "b", as if the two collided; conn 1 holds "b".
// Evicting "b" hits both (by one key's plain comparison, and through the bitmap of several).
// With Confirm, conn 0 is rejected (a false match, counted) and stays, still found by its
// own key; without it, the collision closes conn 0 too, so the collision is real and the
// first case fails if Confirm is not consulted.
func TestConfirmRejectsHashHit(t *testing.T) {
	for _, evict := range [][]string{{"b"}, {"b", "unrelated"}} {
		for _, confirm := range []bool{true, false} {
			t.Run(fmt.Sprintf("keys=%d/confirm=%v", len(evict), confirm), func(t *testing.T) {
				reg := prometheus.NewRegistry()
				opts := conntrack.Options{Metrics: reg}
				if confirm {
					opts.Confirm = func(c *conntrack.Conn, key string) bool { return slices.Contains(c.Owner().([]string), key) }
				}
				r := newRegistry(t, opts)
				ps := dialPairs(t, r, 2)
				keys := [][]string{{"a", "x"}, {"b"}}
				for i, p := range ps {
					p.server.SetOwner(keys[i])
					if err := r.Track(p.server, keys[i], time.Time{}); err != nil {
						t.Fatal(err)
					}
				}
				if !conntrack.CollideKey(r, ps[0].server, "x", "b") {
					t.Fatal("conn 0 holds no hash of x")
				}
				if n := r.Evict(evict, conntrack.Cause{Reason: conntrack.ReasonRevoked}); n != 2 {
					t.Fatalf("Evict(%q) matched %d conns; want 2, the holder of b and the collision", evict, n)
				}
				if !peerClosed(t, ps[1].client, 5*time.Second) {
					t.Fatal("the conn that holds b was not evicted")
				}
				falseMatches := func() float64 {
					return metrictest.Value(t, reg, "guardian_eviction_hash_false_matches_total")
				}
				if !confirm {
					if !peerClosed(t, ps[0].client, 5*time.Second) {
						t.Fatal("without Confirm, the colliding conn was not evicted: no collision was made")
					}
					if v := falseMatches(); v != 0 {
						t.Errorf("false matches = %v without Confirm; want 0", v)
					}
					return
				}
				// Conn 0's eviction is settled once it is counted as a false match, or once
				// the registry has let it go.
				waitFor(t, func() bool { return falseMatches() == 1 || r.Len() == 0 })
				if v := falseMatches(); v != 1 || r.Len() != 1 {
					t.Fatalf("false matches = %v, %d conns tracked; want 1 and 1: Confirm was not consulted", v, r.Len())
				}
				if !stillOpen(t, ps[0].client) {
					t.Fatal("the conn whose Confirm said no was closed")
				}
				if n := r.Evict([]string{"a"}, conntrack.Cause{Reason: conntrack.ReasonRevoked}); n != 1 || !peerClosed(t, ps[0].client, 5*time.Second) {
					t.Fatalf("Evict(a) matched %d; want conn 0 found and closed by its own key", n)
				}
			})
		}
	}
}

func TestCloseUntracksAndTrackAfterClose(t *testing.T) {
	r := newRegistry(t, conntrack.Options{})
	ps := dialPairs(t, r, 3)
	for _, p := range ps[:2] {
		if err := r.Track(p.server, []string{"k"}, time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	ps[0].server.Close()
	ps[0].server.Close() // idempotent
	if r.Len() != 1 {
		t.Fatalf("Len after Close = %d; want 1", r.Len())
	}
	ps[2].server.Close()
	if err := r.Track(ps[2].server, []string{"k"}, time.Time{}); !errors.Is(err, conntrack.ErrClosed) {
		t.Fatalf("Track of a closed conn: %v; want ErrClosed", err)
	}
	if r.Len() != 1 {
		t.Fatalf("Len = %d; want 1", r.Len())
	}
}

func TestExpiry(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := fakeclock.New(start)
	reg := prometheus.NewRegistry()
	r := newRegistry(t, conntrack.Options{Clock: clk, Metrics: reg})
	ps := dialPairs(t, r, 3)
	mustTrack(t, r, ps[0].server, []string{"a"}, start.Add(time.Hour))
	mustTrack(t, r, ps[1].server, []string{"b"}, start.Add(2*time.Hour))
	mustTrack(t, r, ps[2].server, []string{"c"}, time.Time{}) // never expires
	clk.Advance(time.Hour)                                    // valid through NotAfter inclusive
	if !stillOpen(t, ps[0].client) {
		t.Fatal("conn evicted at NotAfter; it is valid through NotAfter")
	}
	clk.Advance(time.Second)
	if !peerClosed(t, ps[0].client, 5*time.Second) {
		t.Fatal("conn not evicted after its NotAfter")
	}
	if !stillOpen(t, ps[1].client) {
		t.Fatal("conn expiring later was evicted early")
	}
	clk.Advance(10 * time.Hour)
	if !peerClosed(t, ps[1].client, 5*time.Second) {
		t.Fatal("second conn not evicted after its NotAfter")
	}
	if !stillOpen(t, ps[2].client) {
		t.Fatal("conn without expiry was evicted")
	}
	waitFor(t, func() bool { return metrictest.Value(t, reg, "guardian_evictions_total", "reason", "expired") == 2 })
}

// A conn tracked with an expiry earlier than the scheduler's next wake re-arms it.
func TestExpiryEarlierThanScheduled(t *testing.T) {
	start := time.Now()
	clk := fakeclock.New(start)
	r := newRegistry(t, conntrack.Options{Clock: clk})
	ps := dialPairs(t, r, 2)
	mustTrack(t, r, ps[0].server, []string{"late"}, start.Add(24*time.Hour))
	time.Sleep(10 * time.Millisecond) // let the scheduler arm its timer for the late one
	mustTrack(t, r, ps[1].server, []string{"early"}, start.Add(time.Minute))
	// The scheduler may still be re-arming; advance in steps until it has acted.
	deadline := time.Now().Add(10 * time.Second)
	for stillOpen(t, ps[1].client) {
		if time.Now().After(deadline) {
			t.Fatal("early-expiring conn never evicted")
		}
		clk.Advance(time.Minute)
	}
	if !stillOpen(t, ps[0].client) {
		t.Fatal("late-expiring conn evicted")
	}
}

// Many goroutines track, close and evict at once; afterwards no tracked conn holds an
// evicted key, and the count of tracked conns is exact.
func TestConcurrentTrackCloseEvict(t *testing.T) {
	r := newRegistry(t, conntrack.Options{})
	var revoked sync.Map
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				a, b := net.Pipe()
				b.Close()
				c := r.Wrap(a, nil)
				k := fmt.Sprintf("k%d", i%50)
				if err := r.Track(c, []string{k, "shared"}, time.Time{}); err != nil {
					t.Error(err)
				}
				if _, ok := revoked.Load(k); ok {
					c.Close() // what the listener's re-check does
				}
				if i%3 == 0 {
					c.Close()
				}
				if i%97 == 0 {
					kk := fmt.Sprintf("k%d", (i*w)%50)
					revoked.Store(kk, true)
					r.Evict([]string{kk}, conntrack.Cause{Reason: conntrack.ReasonRevoked})
				}
			}
		}(w)
	}
	wg.Wait()
	waitFor(t, func() bool {
		// Evict once more for every revoked key: nothing may still match.
		n := 0
		revoked.Range(func(k, _ any) bool {
			n += r.Evict([]string{k.(string)}, conntrack.Cause{Reason: conntrack.ReasonRevoked})
			return true
		})
		return n == 0
	})
	remaining := r.Len()
	total := 0
	r.Range(func(*conntrack.Conn) bool { total++; return true })
	if total != remaining {
		t.Fatalf("Range saw %d conns, Len says %d", total, remaining)
	}
	r.EvictAll(conntrack.Cause{Reason: conntrack.ReasonShutdown})
	waitFor(t, func() bool { return r.Len() == 0 })
}

// After heavy churn forces compaction, every surviving conn is still found by its own key
// and by nothing else, and closed conns are found by nothing.
func TestCompactionKeepsIndexExact(t *testing.T) {
	var mu sync.Mutex
	closedBy := map[int]string{}
	r := newRegistry(t, conntrack.Options{OnEvict: func(e conntrack.Eviction) {
		mu.Lock()
		closedBy[e.Conn.Owner().(int)] = e.Key
		mu.Unlock()
	}})
	const n = 6000
	conns := make([]*conntrack.Conn, n)
	for i := range conns {
		a, b := net.Pipe()
		t.Cleanup(func() { b.Close() })
		conns[i] = r.Wrap(a, i)
		keys := []string{fmt.Sprintf("own:%d", i), "shared"}
		if i%2 == 0 {
			keys = append(keys, "even", fmt.Sprintf("extra:%d", i)) // blocks of two sizes
		}
		if err := r.Track(conns[i], keys, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range conns {
		if i%5 != 0 {
			conns[i].Close()
		}
	}
	if r.Len() != n/5 {
		t.Fatalf("Len = %d; want %d", r.Len(), n/5)
	}
	for i := 0; i < n; i++ {
		got := r.Evict([]string{fmt.Sprintf("own:%d", i)}, conntrack.Cause{Reason: conntrack.ReasonRevoked})
		want := 0
		if i%5 == 0 {
			want = 1
		}
		if got != want {
			t.Fatalf("Evict(own:%d) matched %d; want %d", i, got, want)
		}
	}
	waitFor(t, func() bool { return r.Len() == 0 })
	mu.Lock()
	defer mu.Unlock()
	for i, k := range closedBy {
		if k != fmt.Sprintf("own:%d", i) {
			t.Fatalf("conn %d evicted by %q", i, k)
		}
	}
}
