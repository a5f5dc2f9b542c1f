package conntrack_test

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/conntrack"
)

// benchConn is a named fake: a net.Conn that holds no socket, so a benchmark can track a
// million of them in one process. Close does nothing.
type benchConn struct{ net.Conn }

func (benchConn) Close() error { return nil }

// keysFor gives conn i the key set of a realistic two-certificate chain: the leaf's serial,
// sha256 and spki, a URI and a subject, and the CA's three keys, shared by all conns.
func keysFor(i int) []string {
	h := func(tag string) string {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(i))
		s := sha256.Sum256(append([]byte(tag), b[:]...))
		return hex.EncodeToString(s[:])
	}
	return []string{
		"serial:" + caHash + ":" + h("serial")[:32], "sha256:" + h("sha"), "spki:" + h("spki"),
		fmt.Sprintf("uri:spiffe://prod/device/%d", i), fmt.Sprintf("subject:CN=device-%d,O=Acme", i),
		"serial:" + caHash + ":1", "sha256:" + caHash, "spki:" + caHash,
	}
}

var caHash = hex.EncodeToString(make([]byte, 32))

// keySets returns the key sets of conns 0..n-1.
func keySets(n int) [][]string {
	keys := make([][]string, n)
	for i := range keys {
		keys[i] = keysFor(i)
	}
	return keys
}

func fill(b *testing.B, r *conntrack.Registry, n int, keys [][]string) []*conntrack.Conn {
	conns := make([]*conntrack.Conn, n)
	exp := time.Now().Add(24 * time.Hour)
	for i := range conns {
		conns[i] = r.Wrap(benchConn{}, nil)
		if err := r.Track(conns[i], keys[i], exp.Add(time.Duration(i)*time.Millisecond)); err != nil {
			b.Fatal(err)
		}
	}
	return conns
}

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkTrack measures one Track plus its Close with n other conns tracked, and reports
// the registry's memory per tracked conn (every conn with its own certificate, the worst
// case: nothing is shared but the CA keys).
func BenchmarkTrack(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			keys := keySets(n + 1)
			r := newRegistry(b, conntrack.Options{})
			before := heap()
			conns := fill(b, r, n, keys)
			after := heap()
			exp := time.Now().Add(time.Hour)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c := r.Wrap(benchConn{}, nil)
				if err := r.Track(c, keys[n], exp); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			b.StopTimer()
			runtime.KeepAlive(conns)
			// The Conn structs are part of the cost; the fake net.Conn inside them is not.
			b.ReportMetric(float64(after-before)/float64(n), "B/conn")
		})
	}
}

// BenchmarkEvict measures Evict of one certificate's conn among n tracked conns: the scan,
// the close and the untrack, until the registry is back to n-1.
func BenchmarkEvict(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			keys := keySets(n)
			r := newRegistry(b, conntrack.Options{})
			fill(b, r, n, keys)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				j := i % n
				if got := r.Evict([]string{keys[j][1]}, conntrack.Cause{Reason: "bench"}); got != 1 {
					b.Fatalf("matched %d; want 1", got)
				}
				for r.Len() != n-1 {
					runtime.Gosched()
				}
				b.StopTimer()
				c := r.Wrap(benchConn{}, nil)
				if err := r.Track(c, keys[j], time.Time{}); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// BenchmarkEvictBatch revokes 1,000 certificates at once among n conns.
func BenchmarkEvictBatch(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			keys := keySets(n)
			r := newRegistry(b, conntrack.Options{})
			fill(b, r, n, keys)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				batch := make([]string, 1000)
				for j := range batch {
					batch[j] = keys[(i*1000+j)%n][0]
				}
				if got := r.Evict(batch, conntrack.Cause{Reason: "bench"}); got != 1000 {
					b.Fatalf("matched %d; want 1000", got)
				}
				for r.Len() != n-1000 {
					runtime.Gosched()
				}
				b.StopTimer()
				for j := 0; j < 1000; j++ {
					c := r.Wrap(benchConn{}, nil)
					if err := r.Track(c, keys[(i*1000+j)%n], time.Time{}); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
			}
		})
	}
}
