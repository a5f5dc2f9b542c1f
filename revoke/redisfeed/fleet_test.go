package redisfeed_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/idleserver"
	"github.com/guardian-mtls/guardian/internal/redistest"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// guardedNode is a node with a revocation-aware listener whose Set follows Redis. Its
// accepted conns are held open by a reader goroutine until the listener closes them.
type guardedNode struct {
	*node
	addr string
}

func startGuarded(t testing.TB, srv *redistest.Server, ca *pkitest.CA, server *pkitest.Leaf) *guardedNode {
	t.Helper()
	n := startNode(t, srv, "")
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := listener.New(inner, listener.Config{Set: n.set, Audiences: []listener.Audience{{
		Name: "fleet", SNI: []string{"localhost"}, Certificates: []tls.Certificate{server.TLS()},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		l.Shutdown(ctx) // the conns the test left open, too
	})
	go idleserver.Serve(l)
	return &guardedNode{node: n, addr: inner.Addr().String()}
}

func dialTLS(t testing.TB, addr string, ca *pkitest.CA, leaf *pkitest.Leaf) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost",
		Certificates: []tls.Certificate{leaf.TLS()}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("x")); err != nil { // the server has finished its side too
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedWithin reports whether the peer closed c within d.
func closedWithin(c *tls.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// One revocation written to Redis closes the matching conns on all three nodes, and no
// other conn anywhere.
func TestFleetEvictsOnEveryNode(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ca := pkitest.NewCA(t)
	server := ca.MustIssue(t, pkitest.Opts{DNS: []string{"localhost"}})
	victim := ca.MustIssue(t, pkitest.Opts{CommonName: "victim", URIs: []string{"spiffe://fleet/victim"}})
	other := ca.MustIssue(t, pkitest.Opts{CommonName: "other"})
	var victims, others []*tls.Conn
	for i := 0; i < 3; i++ {
		g := startGuarded(t, srv, ca, server)
		for j := 0; j < 2; j++ {
			victims = append(victims, dialTLS(t, g.addr, ca, victim))
			others = append(others, dialTLS(t, g.addr, ca, other))
		}
	}
	st := redisfeed.NewStore(client(t, srv), "", 0)
	k, _ := revoke.KeyFor(victim.Cert, revoke.KindURI)
	if _, err := st.Revoke(context.Background(), revoke.Entry{Key: k, Reason: "keyCompromise"}); err != nil {
		t.Fatal(err)
	}
	for i, c := range victims {
		if !closedWithin(c, 15*time.Second) {
			t.Fatalf("victim conn %d (node %d) still open", i, i/2)
		}
	}
	for i, c := range others {
		if closedWithin(c, 50*time.Millisecond) {
			t.Fatalf("bystander conn %d (node %d) was closed", i, i/2)
		}
	}
}

// BenchmarkPublishToClose: from the Store.Revoke call (the Lua script through Redis) to the
// client's blocked Read failing, one node, one conn of the revoked cert among 100 others.
func BenchmarkPublishToClose(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	ca := pkitest.NewCA(b)
	server := ca.MustIssue(b, pkitest.Opts{DNS: []string{"localhost"}})
	g := startGuarded(b, srv, ca, server)
	for i := 0; i < 100; i++ {
		dialTLS(b, g.addr, ca, ca.MustIssue(b, pkitest.Opts{CommonName: fmt.Sprintf("b%d", i)}))
	}
	st := redisfeed.NewStore(client(b, srv), "", 0)
	leaves := make([]*pkitest.Leaf, 32)
	for i := range leaves {
		leaves[i] = ca.MustIssue(b, pkitest.Opts{CommonName: fmt.Sprintf("v%d", i)})
	}
	ctx := context.Background()
	var samples []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		leaf := leaves[i%len(leaves)]
		k, _ := revoke.KeyFor(leaf.Cert, revoke.KindSHA256)
		st.Unrevoke(ctx, k)
		for g.set.Has(k) {
			time.Sleep(100 * time.Microsecond)
		}
		c := dialTLS(b, g.addr, ca, leaf)
		done := make(chan time.Time, 1)
		go func() { c.Read(make([]byte, 1)); done <- time.Now() }()
		time.Sleep(time.Millisecond)
		b.StartTimer()
		start := time.Now()
		if _, err := st.Revoke(ctx, revoke.Entry{Key: k}); err != nil {
			b.Fatal(err)
		}
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
	b.ReportMetric(float64(samples[len(samples)-1].Microseconds()), "max-µs")
}
