package revoke_test

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/revoke"
)

func newSet(t testing.TB, reg prometheus.Registerer) *revoke.Set {
	t.Helper()
	s, err := revoke.NewSet(revoke.SetOptions{Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func synthKey(i int) revoke.Key {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(i))
	h := sha256.Sum256(b[:])
	return revoke.Key("sha256:" + hex.EncodeToString(h[:]))
}

func TestSetAddRemoveNotify(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := newSet(t, reg)
	var got []revoke.Change
	cancel := s.Subscribe(func(c revoke.Change) { got = append(got, c) })

	a, b := synthKey(1), synthKey(2)
	if _, err := s.Add(revoke.SourceAPI, revoke.Entry{Key: a}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Add(revoke.SourceRedis, revoke.Entry{Key: b, Reason: "keyCompromise"}); err != nil {
		t.Fatal(err)
	}
	if !s.Has(a) || !s.Has(b) || s.Len() != 2 {
		t.Fatalf("after Add: Has(a)=%v Has(b)=%v Len=%d", s.Has(a), s.Has(b), s.Len())
	}
	if e, _ := s.Lookup(a); e.Reason != "unspecified" {
		t.Errorf("default reason = %q; want unspecified", e.Reason)
	}
	// Re-adding an existing key updates it but is not reported as added.
	if c, _ := s.Add(revoke.SourceAPI, revoke.Entry{Key: a, Reason: "superseded"}); len(c.Added) != 0 {
		t.Errorf("re-add reported %v as added", c.Added)
	}
	if _, err := s.Remove(revoke.SourceAPI, a); err != nil {
		t.Fatal(err)
	}
	if s.Has(a) {
		t.Fatal("a still revoked after Remove")
	}
	if c, _ := s.Remove(revoke.SourceAPI, a); len(c.Removed) != 0 {
		t.Errorf("removing an absent key reported %v", c.Removed)
	}
	if len(got) != 3 || got[0].Version != 1 || got[2].Version != 3 || len(got[0].Added) != 1 || len(got[1].Added) != 1 || got[2].Removed[0] != a {
		t.Fatalf("notifications = %+v; want v1 and v2 adding a key each, then v3 removing a", got)
	}
	if v := metrictest.Value(t, reg, "guardian_revocations", "source", "redis"); v != 1 {
		t.Errorf("guardian_revocations{source=redis} = %v; want 1", v)
	}
	cancel()
	s.Add(revoke.SourceAPI, revoke.Entry{Key: synthKey(3)})
	if len(got) != 3 {
		t.Errorf("cancelled subscriber still notified")
	}
}

func TestSetRefusesWholeBatchOnBadKey(t *testing.T) {
	s := newSet(t, nil)
	_, err := s.Apply(revoke.SourceAPI, []revoke.Entry{{Key: synthKey(1)}, {Key: "sha256:ABC"}}, []revoke.Key{"nonsense"})
	if err == nil {
		t.Fatal("Apply with bad keys succeeded")
	}
	if !strings.Contains(err.Error(), "sha256:ABC") || !strings.Contains(err.Error(), "nonsense") {
		t.Errorf("error %q does not name both bad keys", err)
	}
	if s.Len() != 0 || s.Version() != 0 {
		t.Fatalf("half-applied: Len=%d Version=%d", s.Len(), s.Version())
	}
	upper := revoke.Key("dns:API.example.com")
	if _, err := s.Add(revoke.SourceAPI, revoke.Entry{Key: upper}); err == nil || !strings.Contains(err.Error(), "not canonical") {
		t.Errorf("non-canonical key accepted or unclear error: %v", err)
	}
}

func TestSetPrune(t *testing.T) {
	s := newSet(t, nil)
	now := time.Now()
	s.Add(revoke.SourceAPI, revoke.Entry{Key: synthKey(1), Expires: now.Add(-time.Second)}, revoke.Entry{Key: synthKey(2), Expires: now.Add(time.Hour)}, revoke.Entry{Key: synthKey(3)})
	// Redis's claim on key 4 has expired, OCSP's has not: the key stays revoked.
	s.Add(revoke.SourceRedis, revoke.Entry{Key: synthKey(4), Expires: now.Add(-time.Second)})
	s.Add(revoke.SourceOCSP, revoke.Entry{Key: synthKey(4)})
	c := s.Prune(now)
	if len(c.Removed) != 1 || c.Removed[0] != synthKey(1) || s.Len() != 3 || !s.Has(synthKey(4)) {
		t.Fatalf("Prune removed %v, Len=%d, Has(4)=%v; want only key 1 gone, 3 claims left, key 4 still revoked", c.Removed, s.Len(), s.Has(synthKey(4)))
	}
	if e, _ := s.Lookup(synthKey(4)); e.Source != revoke.SourceOCSP {
		t.Errorf("key 4's remaining claim is %q's; want ocsp's", e.Source)
	}
}

// Concurrent writers and readers: every change is delivered exactly once, in version order,
// and a subscriber always finds an added key already in the Set.
func TestSetConcurrentOrdered(t *testing.T) {
	s := newSet(t, nil)
	var mu sync.Mutex
	var versions []uint64
	var notInSet int
	s.Subscribe(func(c revoke.Change) {
		for _, e := range c.Added {
			if !s.Has(e.Key) {
				notInSet++
			}
		}
		mu.Lock()
		versions = append(versions, c.Version)
		mu.Unlock()
	})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(2)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				k := synthKey(w*1000 + i)
				s.Add(revoke.SourceAPI, revoke.Entry{Key: k})
				if i%3 == 0 {
					s.Remove(revoke.SourceAPI, k)
				}
			}
		}(w)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				s.Has(synthKey(w*1000 + i%200))
			}
		}(w)
	}
	wg.Wait()
	want := 8*200 + 8*67
	if len(versions) != want {
		t.Fatalf("got %d notifications; want %d", len(versions), want)
	}
	for i, v := range versions {
		if v != uint64(i+1) {
			t.Fatalf("notification %d has version %d; want %d", i, v, i+1)
		}
	}
	if notInSet != 0 {
		t.Fatalf("%d added keys were not yet in the Set when their change was delivered", notInSet)
	}
	if s.Len() != 8*200-8*67 {
		t.Fatalf("Len = %d; want %d", s.Len(), 8*200-8*67)
	}
}

// BenchmarkSetLookup measures one lookup on one goroutine. A handshake's check is almost
// always a miss (a key that is not revoked); hits are measured separately.
func BenchmarkSetLookup(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		s := newSet(b, nil)
		batch := make([]revoke.Entry, 0, 10_000)
		for i := 0; i < n; i++ {
			batch = append(batch, revoke.Entry{Key: synthKey(i)})
			if len(batch) == cap(batch) {
				s.Add(revoke.SourceAPI, batch...)
				batch = batch[:0]
			}
		}
		// A handshake looks up keys it has just computed, so the probes are few and cached.
		hits, misses := make([]revoke.Key, 1<<10), make([]revoke.Key, 1<<10)
		for i := range hits {
			hits[i] = synthKey(i * 7919 % n)
			misses[i] = synthKey(n + i)
		}
		for _, c := range []struct {
			name  string
			probe []revoke.Key
			want  bool
		}{{"miss", misses, false}, {"hit", hits, true}} {
			b.Run(fmt.Sprintf("entries=%d/%s", n, c.name), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if s.Has(c.probe[i&(1<<10-1)]) != c.want {
						b.Fatal("wrong answer")
					}
				}
			})
			b.Run(fmt.Sprintf("entries=%d/%s-parallel", n, c.name), func(b *testing.B) {
				b.RunParallel(func(pb *testing.PB) {
					i := 0
					for pb.Next() {
						s.Has(c.probe[i&(1<<10-1)])
						i++
					}
				})
			})
		}
	}
}

// Growth and mass removal rebuild the lookup filter; answers stay exact throughout.
func TestSetExactAcrossFilterRebuilds(t *testing.T) {
	s := newSet(t, nil)
	const n = 20_000
	for i := 0; i < n; i += 500 {
		batch := make([]revoke.Entry, 0, 500)
		for j := i; j < i+500; j++ {
			batch = append(batch, revoke.Entry{Key: synthKey(j)})
		}
		if _, err := s.Add(revoke.SourceAPI, batch...); err != nil {
			t.Fatal(err)
		}
	}
	var gone []revoke.Key
	for i := 0; i < n; i += 2 {
		gone = append(gone, synthKey(i))
	}
	if _, err := s.Remove(revoke.SourceAPI, gone...); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n+1000; i++ {
		want := i < n && i%2 == 1
		if got := s.Has(synthKey(i)); got != want {
			t.Fatalf("Has(key %d) = %v; want %v", i, got, want)
		}
	}
}

// A key is revoked while any source claims it: an unrevoke through one source never lifts
// another's revocation, and only the last claim's removal is reported.
func TestSetClaimsPerSource(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := newSet(t, reg)
	var got []revoke.Change
	s.Subscribe(func(c revoke.Change) { got = append(got, c) })
	k := synthKey(7)
	if c, _ := s.Add(revoke.SourceRedis, revoke.Entry{Key: k, Reason: "keyCompromise"}); len(c.Added) != 1 {
		t.Fatalf("first claim: Added = %v; want the key", c.Added)
	}
	if c, _ := s.Add(revoke.SourceOCSP, revoke.Entry{Key: k}); len(c.Added) != 0 {
		t.Errorf("second source's claim reported as newly revoked: %v", c.Added)
	}
	if c, _ := s.Remove(revoke.SourceRedis, k); len(c.Removed) != 0 || !s.Has(k) {
		t.Fatalf("after redis unrevoked: Removed=%v Has=%v; want no removal, still revoked (ocsp claims it)", c.Removed, s.Has(k))
	}
	if e, _ := s.Lookup(k); e.Source != revoke.SourceOCSP {
		t.Errorf("Lookup source = %q; want ocsp", e.Source)
	}
	if v := metrictest.Value(t, reg, "guardian_revocations", "source", "ocsp"); v != 1 {
		t.Errorf("guardian_revocations{source=ocsp} = %v; want 1", v)
	}
	// A source can only drop its own claim.
	if c, _ := s.Remove(revoke.SourceRedis, k); len(c.Removed) != 0 || !s.Has(k) {
		t.Fatalf("redis removing a claim it does not hold changed the Set: %+v", c)
	}
	if c, _ := s.Remove(revoke.SourceOCSP, k); len(c.Removed) != 1 || s.Has(k) {
		t.Fatalf("last claim removed: Removed=%v Has=%v; want the key removed", c.Removed, s.Has(k))
	}
	if s.Len() != 0 || len(s.Entries()) != 0 {
		t.Errorf("Len=%d Entries=%v; want empty", s.Len(), s.Entries())
	}
	if _, err := s.Add("", revoke.Entry{Key: k}); err == nil {
		t.Error("a claim without a source was accepted")
	}
}
