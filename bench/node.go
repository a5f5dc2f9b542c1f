package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/guardian-mtls/guardian/internal/idleserver"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

func randRead(b []byte) { rand.Read(b) }

var discardLog = log.New(io.Discard, "", 0)

// guardianNode is a server under test: a Set fed by Redis and a listener whose accepted
// conns are held idle, as keep-alive conns are.
type guardianNode struct {
	ca     *pkitest.CA
	server *pkitest.Leaf
	set    *revoke.Set
	feed   *redisfeed.Feed
	l      *listener.Listener
	addr   string
	cancel context.CancelFunc
	done   chan struct{}
	extra  []func() // servers started on this node's Set, stopped with it
}

func startNode(ctx context.Context, ca *pkitest.CA, rdb *redis.Client) (*guardianNode, error) {
	server, err := ca.Issue(pkitest.Opts{DNS: []string{"localhost"}})
	if err != nil {
		return nil, err
	}
	set, err := revoke.NewSet(revoke.SetOptions{})
	if err != nil {
		return nil, err
	}
	feed, err := redisfeed.NewFeed(redisfeed.NewStore(rdb, "bench", 0), set, redisfeed.FeedOptions{})
	if err != nil {
		return nil, err
	}
	fctx, cancel := context.WithCancel(ctx)
	n := &guardianNode{ca: ca, server: server, set: set, feed: feed, cancel: cancel, done: make(chan struct{})}
	go func() { feed.Run(fctx); rdb.Close(); close(n.done) }()
	select {
	case <-feed.Synced():
	case <-time.After(10 * time.Second):
		n.stop()
		return nil, errors.New("the node's feed did not sync with Redis in 10s")
	}
	if n.l, err = n.listen(); err != nil {
		n.stop()
		return nil, err
	}
	n.addr = n.l.Addr().String()
	go idleserver.Serve(n.l)
	return n, nil
}

// listen opens one more guardian listener on the node's Set, with the bench audience.
func (n *guardianNode) listen() (*listener.Listener, error) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l, err := listener.New(inner, listener.Config{Set: n.set, EvictionWorkers: evictionWorkers, Audiences: []listener.Audience{{
		Name: "bench", SNI: []string{"localhost"}, Certificates: []tls.Certificate{n.server.TLS()},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: n.ca.Pool(),
	}}})
	if err != nil {
		inner.Close()
		return nil, err
	}
	return l, nil
}

// bareConfig is the same server certificate and client auth as the guardian audience, for
// a bare crypto/tls listener.
func (n *guardianNode) bareConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{n.server.TLS()}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: n.ca.Pool(), NextProtos: []string{"http/1.1"}}
}

func (n *guardianNode) stop() {
	for _, f := range n.extra {
		f()
	}
	if n.l != nil {
		shutdownNow(n.l)
	}
	n.cancel()
	<-n.done
}

// okHandler answers every request with a small body, as a health endpoint would.
var okHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, "ok\n")
})

// serveHTTP serves okHandler on l until the node stops; it returns l's address.
func (n *guardianNode) serveHTTP(l net.Listener, connContext func(context.Context, net.Conn) context.Context) string {
	srv := &http.Server{Handler: okHandler, ConnContext: connContext, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: discardLog}
	go srv.Serve(l)
	n.extra = append(n.extra, func() { srv.Close() })
	return l.Addr().String()
}

// heldServer holds every accepted conn idle after reading its first byte (so the handshake
// is complete on the server's side) and counts the conns it holds.
type heldServer struct {
	held atomic.Int64
	mu   sync.Mutex
	all  []net.Conn
}

// conns returns every conn the server has accepted and read from.
func (s *heldServer) conns() []net.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.all)
}

func (s *heldServer) serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			buf := make([]byte, 64)
			if _, err := c.Read(buf); err != nil {
				c.Close()
				return
			}
			s.mu.Lock()
			s.all = append(s.all, c)
			s.mu.Unlock()
			s.held.Add(1)
			for {
				if _, err := c.Read(buf); err != nil {
					s.held.Add(-1)
					c.Close()
					return
				}
			}
		}()
	}
}

// waitHeld polls until s holds n conns.
func (s *heldServer) waitHeld(n int64, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for s.held.Load() != n {
		if time.Now().After(deadline) {
			return fmt.Errorf("the server holds %d conns, want %d, after %s", s.held.Load(), n, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// shutdownNow closes l and every conn it still holds, and ends its enforcement.
func shutdownNow(l *listener.Listener) {
	now, cancel := context.WithCancel(context.Background())
	cancel()
	l.Shutdown(now)
}
