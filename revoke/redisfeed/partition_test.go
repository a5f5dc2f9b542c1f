package redisfeed_test

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/guardian-mtls/guardian/internal/idleserver"
	"github.com/guardian-mtls/guardian/internal/redistest"
	"github.com/guardian-mtls/guardian/internal/testpki"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// A partition between a node and Redis: the node turns stale; the on_stale: closed audience
// refuses new handshakes while the open one serves; a revocation written meanwhile takes
// effect as soon as the partition heals.
func TestPartitionStalenessPolicies(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	proxy := redistest.NewProxy(t, srv.Addr())
	ca := testpki.NewCA(t)
	server := ca.MustIssue(t, testpki.Opts{DNS: []string{"open.test", "closed.test"}})
	victim := ca.MustIssue(t, testpki.Opts{CommonName: "victim"})
	other := ca.MustIssue(t, testpki.Opts{CommonName: "other"})

	n := &node{metrics: prometheus.NewRegistry()}
	n.set, _ = revoke.NewSet(revoke.SetOptions{})
	rdb := redis.NewClient(&redis.Options{Addr: proxy.Addr(), DialTimeout: 300 * time.Millisecond,
		ReadTimeout: 300 * time.Millisecond, WriteTimeout: 300 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	var err error
	n.feed, err = redisfeed.NewFeed(redisfeed.NewStore(rdb, "", 0), n.set, redisfeed.FeedOptions{Block: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	n.run(t)

	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	aud := func(name string, p listener.StalePolicy) listener.Audience {
		return listener.Audience{Name: name, SNI: []string{name + ".test"}, Certificates: []tls.Certificate{server.TLS()},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(), OnStale: p}
	}
	l, err := listener.New(inner, listener.Config{Set: n.set, Stale: n.feed.StaleAfter(time.Second),
		Audiences: []listener.Audience{aud("open", listener.StaleOpen), aud("closed", listener.StaleClosed)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Stop)
	go idleserver.Serve(l)
	dial := func(sni string, leaf *testpki.Leaf) (*tls.Conn, error) {
		c, err := tls.Dial("tcp", inner.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: sni,
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
		t.Cleanup(func() { c.Close() })
		return c, nil
	}
	victimConn, err := dial("open.test", victim)
	if err != nil {
		t.Fatal(err)
	}
	otherConn, err := dial("closed.test", other)
	if err != nil {
		t.Fatal(err)
	}

	proxy.Partition()
	eventually(t, "node stale", func() bool { return n.feed.Staleness() > time.Second })
	if _, err := dial("closed.test", other); err == nil {
		t.Fatal("on_stale: closed audience accepted a handshake while stale")
	}
	if _, err := dial("open.test", other); err != nil {
		t.Fatalf("on_stale: open audience refused while stale: %v", err)
	}
	// Revoked while the node cannot hear it: written straight to Redis.
	k, _ := revoke.KeyFor(victim.Cert, revoke.KindSerial)
	if _, err := redisfeed.NewStore(client(t, srv), "", 0).Revoke(context.Background(), revoke.Entry{Key: k}); err != nil {
		t.Fatal(err)
	}
	if closedWithin(victimConn, 300*time.Millisecond) {
		t.Fatal("victim closed while the node was partitioned (test premise broken)")
	}

	proxy.Heal()
	if !closedWithin(victimConn, 15*time.Second) {
		t.Fatal("revocation written during the partition not enforced after healing")
	}
	if closedWithin(otherConn, 50*time.Millisecond) {
		t.Fatal("bystander on the closed audience was closed: on_stale only refuses new handshakes")
	}
	eventually(t, "fresh again", func() bool { return n.feed.Staleness() < time.Second })
	if _, err := dial("closed.test", other); err != nil {
		t.Fatalf("closed audience still refusing after healing: %v", err)
	}
}
