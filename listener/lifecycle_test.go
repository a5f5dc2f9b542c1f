package listener_test

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/conntrack"
	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// evictions collects what OnEvict is told.
type evictions struct {
	mu  sync.Mutex
	got []listener.Eviction
}

func (ev *evictions) add(e listener.Eviction) {
	ev.mu.Lock()
	ev.got = append(ev.got, e)
	ev.mu.Unlock()
}

func (ev *evictions) wait(t *testing.T, n int) []listener.Eviction {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		ev.mu.Lock()
		got := append([]listener.Eviction(nil), ev.got...)
		ev.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d evictions; want %d", len(got), n)
		}
	}
}

// After Close, a live conn is still enforced (a revocation closes it); once the last conn
// is gone, the listener ends its enforcement by itself: Done is closed, and no goroutine of
// the listener or registry is left (leakCheck).
func TestCloseEndsEnforcementAfterLastConn(t *testing.T) {
	e := newEnv(t, envOpts{})
	alice := e.root.MustIssue(t, pkitest.Opts{CommonName: "alice"})
	bob := e.root.MustIssue(t, pkitest.Opts{CommonName: "bob"})
	ca, cb := e.client(alice, false), e.client(bob, false)
	ca.get(t, "/")
	cb.get(t, "/")
	e.l.Close()
	select {
	case <-e.l.Done():
		t.Fatal("enforcement ended while conns were live")
	default:
	}
	revokeKey(t, e.set, keyOf(t, alice.Cert, revoke.KindSerial))
	waitClosed(t, ca.conn(0), "alice after Close")
	if !isOpen(cb.conn(0)) {
		t.Fatal("bob's conn was closed by alice's revocation")
	}
	if e.l.Len() != 1 {
		t.Fatalf("got %d live conns; want 1 (bob)", e.l.Len())
	}
	cb.tr.CloseIdleConnections()
	select {
	case <-e.l.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("enforcement still running 10s after the last conn closed (%d live)", e.l.Len())
	}
}

// Shutdown waits for the conns, then closes those left with reason shutdown, each told to
// OnEvict; it returns the context's error when it had to.
func TestShutdownClosesWhatIsLeft(t *testing.T) {
	ev := &evictions{}
	e := newEnv(t, envOpts{onEvict: ev.add})
	alice := e.root.MustIssue(t, pkitest.Opts{CommonName: "alice"})
	c := e.client(alice, false)
	c.get(t, "/")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := e.l.Shutdown(ctx); err != context.DeadlineExceeded {
		t.Fatalf("Shutdown = %v; want %v (a keep-alive conn was open)", err, context.DeadlineExceeded)
	}
	waitClosed(t, c.conn(0), "alice at shutdown")
	got := ev.wait(t, 1)
	if got[0].Reason != conntrack.ReasonShutdown || got[0].Conn.Leaf().Subject.CommonName != "alice" {
		t.Fatalf("got %+v; want alice's conn, reason shutdown", got[0])
	}
	select {
	case <-e.l.Done():
	default:
		t.Fatal("Shutdown returned before enforcement ended")
	}
	// Nothing left: a second Shutdown returns at once.
	if err := e.l.Shutdown(context.Background()); err != nil {
		t.Fatalf("second Shutdown = %v; want nil", err)
	}
}

// OnEvict is told each eviction with the conn's identity, audience, address, age and
// reason; CloseConn closes one conn by ID without revoking anything; Conns lists the rest.
func TestOnEvictAndCloseConn(t *testing.T) {
	ev := &evictions{}
	e := newEnv(t, envOpts{onEvict: ev.add})
	alice := e.root.MustIssue(t, pkitest.Opts{CommonName: "alice"})
	bob := e.root.MustIssue(t, pkitest.Opts{CommonName: "bob"})
	ca, cb := e.client(alice, false), e.client(bob, false)
	ca.get(t, "/")
	cb.get(t, "/")

	ids := map[string]uint64{}
	e.l.Conns(func(info *listener.ConnInfo) bool {
		if info.RemoteAddr() == nil || info.Since().IsZero() || info.ID() == 0 {
			t.Errorf("conn %d: remote %v, since %v", info.ID(), info.RemoteAddr(), info.Since())
		}
		ids[info.Leaf().Subject.CommonName] = info.ID()
		return true
	})
	if len(ids) != 2 || ids["alice"] == ids["bob"] {
		t.Fatalf("got conns %v; want alice and bob with distinct IDs", ids)
	}
	if !e.l.CloseConn(ids["alice"]) {
		t.Fatal("CloseConn(alice) = false; want true")
	}
	waitClosed(t, ca.conn(0), "alice, closed by ID")
	got := ev.wait(t, 1)
	if got[0].Reason != conntrack.ReasonManual || got[0].Conn.ID() != ids["alice"] || got[0].Key != "" {
		t.Fatalf("got %+v; want alice's conn, reason manual, no key", got[0])
	}
	if !isOpen(cb.conn(0)) {
		t.Fatal("bob's conn closed too")
	}
	if e.l.CloseConn(ids["alice"]) {
		t.Fatal("CloseConn of a closed conn = true; want false")
	}
	// alice is not revoked: she connects again.
	ca.get(t, "/")

	revokeKey(t, e.set, keyOf(t, bob.Cert, revoke.KindSerial))
	waitClosed(t, cb.conn(0), "bob, revoked")
	got = ev.wait(t, 2)
	b := got[1]
	if b.Reason != conntrack.ReasonRevoked || b.Conn.Audience() != "api" || b.Conn.Leaf().Subject.CommonName != "bob" ||
		b.Key != keyOf(t, bob.Cert, revoke.KindSerial) || b.Age <= 0 || b.Conn.RemoteAddr().(*net.TCPAddr).IP.String() != "127.0.0.1" {
		t.Fatalf("got %+v (remote %v); want bob's conn in api, reason revoked, his serial key, an age", b, b.Conn.RemoteAddr())
	}
}

// Two listeners in one process share one Registerer: both count into the same metrics.
func TestTwoListenersShareARegisterer(t *testing.T) {
	leakCheck(t)
	reg := prometheus.NewRegistry()
	set, err := revoke.NewSet(revoke.SetOptions{Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	ca := pkitest.NewCA(t)
	srv := ca.MustIssue(t, pkitest.Opts{DNS: []string{"localhost"}})
	client := ca.MustIssue(t, pkitest.Opts{CommonName: "c"})
	var ls []*listener.Listener
	for _, name := range []string{"data", "admin"} {
		inner, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err := listener.New(inner, listener.Config{Set: set, Metrics: reg, Audiences: []listener.Audience{{
			Name: name, SNI: []string{"localhost"}, Certificates: []tls.Certificate{srv.TLS()},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
		}}})
		if err != nil {
			t.Fatalf("listener %s: %v", name, err)
		}
		ls = append(ls, l)
	}
	var conns []net.Conn
	for _, l := range ls {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() { c.Read(make([]byte, 1)); c.Close() }()
			}
		}()
		c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{client.TLS()}})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for deadline := time.Now().Add(10 * time.Second); metrictest.Value(t, reg, "guardian_connections_active") != 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("guardian_connections_active = %v; want 2, one per listener", metrictest.Value(t, reg, "guardian_connections_active"))
		}
	}
	for _, name := range []string{"data", "admin"} {
		if v := metrictest.Value(t, reg, "guardian_handshakes_total", "audience", name, "kind", "full"); v != 1 {
			t.Fatalf("handshakes of %s = %v; want 1", name, v)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, l := range ls {
		if err := l.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown = %v; want nil: the server closed each conn when its client did", err)
		}
	}
	if v := metrictest.Value(t, reg, "guardian_connections_active"); v != 0 {
		t.Fatalf("guardian_connections_active = %v after shutdown; want 0", v)
	}
}

// Conns handshaken but not taken by Accept count against MaxHandshakes: at the bound the
// oldest is closed, so a server that stops accepting holds a bounded number of them.
func TestUnacceptedConnsAreBounded(t *testing.T) {
	leakCheck(t)
	reg := prometheus.NewRegistry()
	set, err := revoke.NewSet(revoke.SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ca := pkitest.NewCA(t)
	srv := ca.MustIssue(t, pkitest.Opts{DNS: []string{"localhost"}})
	client := ca.MustIssue(t, pkitest.Opts{CommonName: "c"})
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := listener.New(inner, listener.Config{Set: set, Metrics: reg, MaxHandshakes: 2, Audiences: []listener.Audience{{
		Name: "api", SNI: []string{"localhost"}, Certificates: []tls.Certificate{srv.TLS()},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Shutdown(context.Background())
	var conns []*tls.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 3; i++ {
		c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{client.TLS()}})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		// The server's side is queued once its handshake is done; wait for it, so the
		// order is the dial order.
		for deadline := time.Now().Add(10 * time.Second); l.Len() < min(i+1, 2); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("conn %d never tracked", i)
			}
		}
	}
	// The third conn's arrival shed the first, which was never accepted.
	conns[0].SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conns[0].Read(make([]byte, 1)); err == nil {
		t.Fatal("the oldest unaccepted conn was not closed")
	}
	if v := metrictest.Value(t, reg, "guardian_conns_shed_total", "kind", "unaccepted"); v != 1 {
		t.Fatalf("shed{unaccepted} = %v; want 1", v)
	}
	// The two newest are served once the server accepts.
	for i := 1; i < 3; i++ {
		got, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		got.Close()
	}
}

// MaxConnLifetime: past it, an HTTP response carries Connection: close and the conn ends
// with it; a conn that stays (idle, or holding a stream) is cut LifetimeGrace later, reason
// lifetime. A new conn is served as any other.
func TestMaxConnLifetime(t *testing.T) {
	ev := &evictions{}
	const lifetime, grace = 300 * time.Millisecond, 300 * time.Millisecond
	e := newEnv(t, envOpts{onEvict: ev.add, audiences: func(e *env) []listener.Audience {
		return []listener.Audience{{Name: "api", SNI: []string{"localhost"}, Certificates: []tls.Certificate{e.server.TLS()},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: e.root.Pool(), MaxConnLifetime: lifetime, LifetimeGrace: grace}}
	}})
	alice := e.root.MustIssue(t, pkitest.Opts{CommonName: "alice"})
	bob := e.root.MustIssue(t, pkitest.Opts{CommonName: "bob"})
	ca, cb, ch2 := e.client(alice, false), e.client(bob, false), e.client(alice, true)
	ca.get(t, "/")
	cb.get(t, "/")
	if body := ch2.get(t, "/"); !strings.Contains(body, "proto=2") {
		t.Fatalf("the HTTP/2 client got %q", body)
	}
	time.Sleep(lifetime) // every conn is now past its lifetime
	resp, err := ca.Get("https://localhost/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !resp.Close {
		t.Fatal("a response past the conn's lifetime did not close it (no Connection: close)")
	}
	waitClosed(t, ca.conn(0), "alice's conn after its closing response")
	// HTTP/2: the response past the lifetime comes with a GOAWAY, and the conn ends.
	ch2.get(t, "/")
	waitClosed(t, ch2.conn(0), "the HTTP/2 conn after its GOAWAY")
	// bob's conn stays idle: cut at lifetime + grace.
	waitClosed(t, cb.conn(0), "bob's idle conn past its lifetime")
	for _, got := range ev.wait(t, 1) {
		if got.Reason != conntrack.ReasonLifetime {
			t.Fatalf("eviction %+v; want reason lifetime", got)
		}
	}
	ca.get(t, "/") // a new conn
	if ca.numConns() != 2 {
		t.Fatalf("alice dialled %d conns; want a second one after the first ended", ca.numConns())
	}
}
