package listener_test

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// benchServer serves TLS on loopback, either through guardian's listener (with a denylist
// of 100,000 entries) or through a bare crypto/tls listener with the same tls.Config
// fields. Each accepted conn completes its handshake and then blocks in Read, as an idle
// keep-alive conn does.
type benchServer struct {
	addr  string
	ca    *pkitest.CA
	set   *revoke.Set
	stop  func()
	mu    sync.Mutex
	conns []net.Conn
}

func startBench(b *testing.B, guarded bool) *benchServer {
	b.Helper()
	ca := pkitest.NewCA(b)
	srvCert := ca.MustIssue(b, pkitest.Opts{DNS: []string{"localhost"}})
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := &benchServer{addr: inner.Addr().String(), ca: ca}
	var ln net.Listener
	if guarded {
		set, _ := revoke.NewSet(revoke.SetOptions{})
		batch := make([]revoke.Entry, 0, 100_000)
		for i := 0; i < 100_000; i++ {
			var x [8]byte
			binary.BigEndian.PutUint64(x[:], uint64(i))
			h := sha256.Sum256(x[:])
			batch = append(batch, revoke.Entry{Key: revoke.Key("sha256:" + hex.EncodeToString(h[:]))})
		}
		set.Add(revoke.SourceAPI, batch...)
		s.set = set
		l, err := listener.New(inner, listener.Config{Set: set, Audiences: []listener.Audience{{
			Name: "bench", SNI: []string{"localhost"}, Certificates: []tls.Certificate{srvCert.TLS()},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
		}}})
		if err != nil {
			b.Fatal(err)
		}
		ln = l
		defer func() { s.stop = func() { s.closeAll(); l.Close() } }()
	} else {
		ln = tls.NewListener(inner, &tls.Config{
			Certificates: []tls.Certificate{srvCert.TLS()}, ClientAuth: tls.RequireAndVerifyClientCert,
			ClientCAs: ca.Pool(), NextProtos: []string{"h2", "http/1.1"}, MinVersion: tls.VersionTLS12,
		})
		defer func() { s.stop = func() { ln.Close(); s.closeAll() } }()
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			go func() {
				// Both servers handshake before reading (guardian already has).
				c.(*tls.Conn).Handshake()
				buf := make([]byte, 1)
				c.Read(buf)
			}()
		}
	}()
	return s
}

func (s *benchServer) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

func (s *benchServer) dial(b *testing.B, leaf *pkitest.Leaf) *tls.Conn {
	c, err := tls.Dial("tcp", s.addr, &tls.Config{RootCAs: s.ca.Pool(), ServerName: "localhost",
		Certificates: []tls.Certificate{leaf.TLS()}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkHandshake measures full mTLS handshakes (no resumption), client and server in
// this process, against a bare crypto/tls listener and guardian's. Compare the two ns/op.
func BenchmarkHandshake(b *testing.B) {
	for _, guarded := range []bool{false, true} {
		b.Run(map[bool]string{false: "bare", true: "guardian"}[guarded], func(b *testing.B) {
			s := startBench(b, guarded)
			defer s.stop()
			leaf := s.ca.MustIssue(b, pkitest.Opts{CommonName: "c", URIs: []string{"spiffe://bench/c"}})
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c := s.dial(b, leaf)
				c.Write([]byte{0}) // the server's read returns once the handshake is done
				c.Close()
			}
		})
	}
}

// BenchmarkIdleConnMemory holds 2,000 idle mTLS conns (each with its own certificate, the
// worst case for the registry) and reports the heap per conn, client and server halves
// together; the difference between bare and guardian is what guardian adds per conn.
func BenchmarkIdleConnMemory(b *testing.B) {
	const n = 2000
	ca := pkitest.NewCA(b)
	leaves := make([]*pkitest.Leaf, n)
	for i := range leaves {
		leaves[i] = ca.MustIssue(b, pkitest.Opts{CommonName: fmt.Sprintf("device-%d", i), URIs: []string{fmt.Sprintf("spiffe://bench/device/%d", i)}})
	}
	for _, guarded := range []bool{false, true} {
		b.Run(map[bool]string{false: "bare", true: "guardian"}[guarded], func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				s := startBench(b, guarded)
				// Re-issue under this server's CA, reusing the keys made above.
				local := make([]*pkitest.Leaf, n)
				for j := range local {
					local[j] = s.ca.MustIssue(b, pkitest.Opts{CommonName: leaves[j].Cert.Subject.CommonName, URIs: []string{leaves[j].Cert.URIs[0].String()}})
				}
				before := heapNow()
				clients := make([]*tls.Conn, n)
				for j := range clients {
					clients[j] = s.dial(b, local[j])
				}
				for { // wait until the server holds every conn
					s.mu.Lock()
					got := len(s.conns)
					s.mu.Unlock()
					if got == n {
						break
					}
					runtime.Gosched()
				}
				after := heapNow()
				b.ReportMetric(float64(after-before)/n, "heapB/conn")
				for _, c := range clients {
					c.Close()
				}
				s.stop()
			}
		})
	}
}

func heapNow() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkEvictionLatency measures, for one idle mTLS conn among 200 others, the time from
// Set.Add of its key to the client's blocked Read failing, on loopback. Setting up each
// conn is outside the timer; the p50 and p99 of the samples are reported.
func BenchmarkEvictionLatency(b *testing.B) {
	s := startBench(b, true)
	defer s.stop()
	set := s.set
	bystanders := make([]*tls.Conn, 200)
	for i := range bystanders {
		bystanders[i] = s.dial(b, s.ca.MustIssue(b, pkitest.Opts{CommonName: fmt.Sprintf("b%d", i)}))
	}
	leaves := make([]*pkitest.Leaf, 64)
	for i := range leaves {
		leaves[i] = s.ca.MustIssue(b, pkitest.Opts{CommonName: fmt.Sprintf("v%d", i)})
	}
	var samples []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		leaf := leaves[i%len(leaves)]
		key, _ := revoke.KeyFor(leaf.Cert, revoke.KindSHA256)
		set.Remove(revoke.SourceAPI, key)
		c := s.dial(b, leaf)
		c.Write([]byte{0}) // handshake done on both sides
		done := make(chan time.Time, 1)
		go func() {
			c.Read(make([]byte, 1))
			done <- time.Now()
		}()
		time.Sleep(time.Millisecond) // the reader is blocked
		b.StartTimer()
		start := time.Now()
		set.Add(revoke.SourceAPI, revoke.Entry{Key: key})
		end := <-done
		b.StopTimer()
		samples = append(samples, end.Sub(start))
		c.Close()
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(samples)
	b.ReportMetric(float64(samples[len(samples)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(samples[len(samples)*99/100].Microseconds()), "p99-µs")
	for _, c := range bystanders {
		c.SetReadDeadline(time.Now())
		if _, err := c.Read(make([]byte, 1)); err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			b.Fatalf("a bystander conn was closed: %v", err)
		}
		c.Close()
	}
}
