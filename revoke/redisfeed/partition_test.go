package redisfeed_test

import (
	"context"
	"crypto/tls"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/guardian-mtls/guardian/internal/idleserver"
	"github.com/guardian-mtls/guardian/internal/redistest"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// faultRig is a node that reaches Redis through a fault-injecting proxy, and a listener with
// two audiences on it: open.test (on_stale: open) and closed.test (on_stale: closed), stale
// once the feed is unheard for staleAfter. Revocations are written straight to Redis, past
// the proxy, as an operator's would be.
type faultRig struct {
	t      *testing.T
	srv    *redistest.Server
	proxy  *redistest.Proxy
	n      *node
	ca     *pkitest.CA
	addr   string
	direct *redisfeed.Store
}

func newFaultRig(t *testing.T, staleAfter time.Duration) *faultRig {
	t.Helper()
	r := &faultRig{t: t, srv: redistest.Start(t, redistest.Options{}), ca: pkitest.NewCA(t)}
	r.proxy = redistest.NewProxy(t, r.srv.Addr())
	r.direct = redisfeed.NewStore(client(t, r.srv), "", 0)
	server := r.ca.MustIssue(t, pkitest.Opts{DNS: []string{"open.test", "closed.test"}})

	r.n = &node{metrics: prometheus.NewRegistry()}
	r.n.set, _ = revoke.NewSet(revoke.SetOptions{})
	rdb := redis.NewClient(&redis.Options{Addr: r.proxy.Addr(), DialTimeout: 300 * time.Millisecond,
		ReadTimeout: 300 * time.Millisecond, WriteTimeout: 300 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	var err error
	r.n.feed, err = redisfeed.NewFeed(redisfeed.NewStore(rdb, "", 0), r.n.set, redisfeed.FeedOptions{Block: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r.n.run(t)

	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	aud := func(name string, p listener.StalePolicy) listener.Audience {
		return listener.Audience{Name: name, SNI: []string{name + ".test"}, Certificates: []tls.Certificate{server.TLS()},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: r.ca.Pool(), OnStale: p}
	}
	l, err := listener.New(inner, listener.Config{Set: r.n.set, Stale: r.n.feed.StaleAfter(staleAfter),
		Audiences: []listener.Audience{aud("open", listener.StaleOpen), aud("closed", listener.StaleClosed)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		l.Shutdown(ctx) // the conns the test left open, too
	})
	go idleserver.Serve(l)
	r.addr = inner.Addr().String()
	return r
}

// dial opens a conn to the audience sni with leaf and writes a byte; it fails if the node
// refused the handshake.
func (r *faultRig) dial(sni string, leaf *pkitest.Leaf) (*tls.Conn, error) {
	c, err := tls.Dial("tcp", r.addr, &tls.Config{RootCAs: r.ca.Pool(), ServerName: sni,
		Certificates: []tls.Certificate{leaf.TLS()}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte("x")); err != nil {
		c.Close()
		return nil, err
	}
	// TLS 1.3: a refusal arrives after the client's handshake; a short read sees it.
	if closedWithin(c, 100*time.Millisecond) {
		c.Close()
		return nil, net.ErrClosed
	}
	r.t.Cleanup(func() { c.Close() })
	return c, nil
}

func (r *faultRig) mustDial(sni string, leaf *pkitest.Leaf) *tls.Conn {
	r.t.Helper()
	c, err := r.dial(sni, leaf)
	if err != nil {
		r.t.Fatalf("%s refused a handshake: %v", sni, err)
	}
	return c
}

// revoke writes a revocation of leaf straight to Redis.
func (r *faultRig) revoke(leaf *pkitest.Leaf) {
	r.t.Helper()
	k, _ := revoke.KeyFor(leaf.Cert, revoke.KindSerial)
	if _, err := r.direct.Revoke(context.Background(), revoke.Entry{Key: k}); err != nil {
		r.t.Fatal(err)
	}
}

// policiesWhileStale checks the stale node's policies: the closed audience refuses a new
// handshake, the open one serves it.
func (r *faultRig) policiesWhileStale(leaf *pkitest.Leaf) {
	r.t.Helper()
	if _, err := r.dial("closed.test", leaf); err == nil {
		r.t.Fatal("on_stale: closed audience accepted a handshake while stale")
	}
	if _, err := r.dial("open.test", leaf); err != nil {
		r.t.Fatalf("on_stale: open audience refused while stale: %v", err)
	}
}

// A partition between a node and Redis: the node turns stale; the on_stale: closed audience
// refuses new handshakes while the open one serves; a revocation written meanwhile takes
// effect as soon as the partition heals.
func TestPartitionStalenessPolicies(t *testing.T) {
	r := newFaultRig(t, time.Second)
	victim := r.ca.MustIssue(t, pkitest.Opts{CommonName: "victim"})
	other := r.ca.MustIssue(t, pkitest.Opts{CommonName: "other"})
	victimConn := r.mustDial("open.test", victim)
	otherConn := r.mustDial("closed.test", other)

	r.proxy.Partition()
	eventually(t, "node stale", func() bool { return r.n.feed.Staleness() > time.Second })
	r.policiesWhileStale(other)
	// Revoked while the node cannot hear it.
	r.revoke(victim)
	if closedWithin(victimConn, 300*time.Millisecond) {
		t.Fatal("victim closed while the node was partitioned (test premise broken)")
	}

	r.proxy.Heal()
	if !closedWithin(victimConn, 15*time.Second) {
		t.Fatal("revocation written during the partition not enforced after healing")
	}
	if closedWithin(otherConn, 50*time.Millisecond) {
		t.Fatal("bystander on the closed audience was closed: on_stale only refuses new handshakes")
	}
	eventually(t, "fresh again", func() bool { return r.n.feed.Staleness() < time.Second })
	r.mustDial("closed.test", other)
}

// A slow Redis. Every chunk held 100 ms each way (a 200 ms round trip, 40 times loopback's):
// the node keeps up — it stays fresh, never resyncs, and every revocation and unrevocation
// reaches it. Slower than the node's read timeouts: it is as good as partitioned — stale, the
// policies apply — and a revocation written meanwhile is enforced once Redis is quick again,
// with no conn of anyone else closed.
func TestSlowRedis(t *testing.T) {
	const staleAfter = 3 * time.Second
	r := newFaultRig(t, staleAfter)
	victims := []*pkitest.Leaf{r.ca.MustIssue(t, pkitest.Opts{CommonName: "victim-1"}),
		r.ca.MustIssue(t, pkitest.Opts{CommonName: "victim-2"})}
	other := r.ca.MustIssue(t, pkitest.Opts{CommonName: "other"})
	conns := []*tls.Conn{r.mustDial("open.test", victims[0]), r.mustDial("closed.test", victims[1])}
	otherConns := []*tls.Conn{r.mustDial("open.test", other), r.mustDial("closed.test", other)}

	r.proxy.SetDelay(100 * time.Millisecond)
	// Premise: the proxy does slow Redis down (a delay can only lengthen a round trip).
	probe := redis.NewClient(&redis.Options{Addr: r.proxy.Addr()})
	t.Cleanup(func() { probe.Close() })
	began := time.Now()
	if err := probe.Ping(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(began); rtt < 200*time.Millisecond {
		t.Fatalf("a PING through the slowed proxy took %s; the proxy does not delay", rtt)
	}
	before := r.n.feed.Status()
	// The most stale the node gets while Redis is slow, sampled.
	var worst atomic.Int64
	sampling, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-sampling:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if s := int64(r.n.feed.Staleness()); s > worst.Load() {
				worst.Store(s)
			}
		}
	}()
	r.revoke(victims[0])
	if !closedWithin(conns[0], 15*time.Second) {
		t.Fatal("a revocation through a slow Redis was not enforced")
	}
	keys := make([]revoke.Key, 20)
	for i := range keys {
		keys[i] = key(1000 + i)
	}
	revokeN(t, r.direct, keys...)
	for _, k := range keys[:10] {
		if _, _, err := r.direct.Unrevoke(context.Background(), k); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "every change through the slow Redis applied", func() bool {
		for i, k := range keys {
			if r.n.set.Has(k) != (i >= 10) {
				return false
			}
		}
		return true
	})
	r.mustDial("closed.test", other) // fresh: the closed audience serves
	close(sampling)
	<-sampled
	after := r.n.feed.Status()
	if after.Resyncs != before.Resyncs || after.Regressed {
		t.Fatalf("a slow Redis made the node resync (%d → %d) or report a regression (%v: %s)",
			before.Resyncs, after.Resyncs, after.Regressed, after.Reason)
	}
	if w := time.Duration(worst.Load()); w >= staleAfter {
		t.Fatalf("the node was stale (%s unheard) while Redis answered within 200 ms", w)
	}
	t.Logf("200 ms round trip: the node was at most %s unheard", time.Duration(worst.Load()).Round(time.Millisecond))

	// Slower than every read timeout the node has (300 ms for commands, XREAD's block plus
	// go-redis's 10 s): nothing it asks is answered in time.
	r.proxy.SetDelay(time.Minute)
	eventually(t, "node stale", func() bool { return r.n.feed.Staleness() > staleAfter })
	r.policiesWhileStale(other)
	r.revoke(victims[1])
	if closedWithin(conns[1], 300*time.Millisecond) {
		t.Fatal("victim closed while Redis answered nothing in time (test premise broken)")
	}

	r.proxy.SetDelay(0)
	if !closedWithin(conns[1], 15*time.Second) {
		t.Fatal("a revocation written while Redis was too slow was not enforced once it was quick again")
	}
	for _, c := range otherConns {
		if closedWithin(c, 50*time.Millisecond) {
			t.Fatal("a conn of a certificate nobody revoked was closed")
		}
	}
	eventually(t, "fresh again", func() bool { return r.n.feed.Staleness() < staleAfter })
	r.mustDial("closed.test", other)
}
