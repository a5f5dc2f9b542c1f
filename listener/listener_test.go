package listener_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/fakeclock"
	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// An idle HTTP/1.1 keep-alive conn closes when its leaf is revoked by any key kind; a
// bystander's conn stays open and keeps serving on the same conn.
func TestEvictIdleKeepAlive(t *testing.T) {
	for _, kind := range []revoke.Kind{revoke.KindSerial, revoke.KindSHA256, revoke.KindSPKI, revoke.KindURI} {
		t.Run(string(kind), func(t *testing.T) {
			e := newEnv(t, envOpts{})
			victimCert := e.root.MustIssue(t, pkitest.Opts{CommonName: "victim", URIs: []string{"spiffe://prod/victim"}})
			otherCert := e.root.MustIssue(t, pkitest.Opts{CommonName: "other", URIs: []string{"spiffe://prod/other"}})
			victim, other := e.client(victimCert, false), e.client(otherCert, false)
			if got := victim.get(t, "/"); !strings.Contains(got, "cn=victim") || !strings.Contains(got, "proto=1") {
				t.Fatalf("victim got %q", got)
			}
			other.get(t, "/")

			revokeKey(t, e.set, keyOf(t, victimCert.Cert, kind))
			waitClosed(t, victim.conn(0), "victim")
			if !isOpen(other.conn(0)) {
				t.Fatal("bystander's conn was closed")
			}
			if got := other.get(t, "/"); !strings.Contains(got, "cn=other") || other.numConns() != 1 {
				t.Fatalf("bystander: %q on %d conns; want its first conn still serving", got, other.numConns())
			}
			if _, err := victim.try("/"); err == nil {
				t.Fatal("revoked client served on a new conn")
			}
			waitMetric(t, e, "guardian_evictions_total", 1, "reason", "revoked")
		})
	}
}

func TestEvictHTTP2(t *testing.T) {
	e := newEnv(t, envOpts{})
	victimCert := e.root.MustIssue(t, pkitest.Opts{CommonName: "victim"})
	otherCert := e.root.MustIssue(t, pkitest.Opts{CommonName: "other"})
	victim, other := e.client(victimCert, true), e.client(otherCert, true)
	if got := victim.get(t, "/"); !strings.Contains(got, "proto=2") {
		t.Fatalf("want HTTP/2, got %q", got)
	}
	other.get(t, "/")
	revokeKey(t, e.set, keyOf(t, victimCert.Cert, revoke.KindSHA256))
	waitClosed(t, victim.conn(0), "HTTP/2 victim")
	if got := other.get(t, "/"); !strings.Contains(got, "proto=2") || other.numConns() != 1 || !isOpen(other.conn(0)) {
		t.Fatalf("HTTP/2 bystander disturbed: %q, %d conns", got, other.numConns())
	}
}

// An in-flight streaming response is cut: the client's read fails and the handler's
// context is cancelled.
func TestEvictInFlightStream(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			e := newEnv(t, envOpts{})
			cert := e.root.MustIssue(t, pkitest.Opts{CommonName: "streamer"})
			c := e.client(cert, h2)
			resp, err := c.Get("https://localhost/stream")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			r := bufio.NewReader(resp.Body)
			readLine(t, r)
			revokeKey(t, e.set, keyOf(t, cert.Cert, revoke.KindSerial))
			deadline := time.Now().Add(10 * time.Second)
			for {
				if _, err := r.ReadString('\n'); err != nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("stream still flowing 10s after the revocation")
				}
			}
			select {
			case err := <-e.streamEnded:
				if err == nil {
					t.Fatal("handler ended but its context was not cancelled")
				}
			case <-time.After(10 * time.Second):
				t.Fatal("handler still running 10s after the revocation")
			}
		})
	}
}

// Revoking an intermediate closes every conn whose chain runs through it, and no other.
func TestEvictIntermediate(t *testing.T) {
	e := newEnv(t, envOpts{})
	inter := e.root.MustIntermediate(t, "devices CA")
	a := e.client(inter.MustIssue(t, pkitest.Opts{CommonName: "dev-a"}), false)
	b := e.client(inter.MustIssue(t, pkitest.Opts{CommonName: "dev-b"}), true)
	direct := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "direct"}), false)
	for _, c := range []*client{a, b, direct} {
		c.get(t, "/")
	}
	revokeKey(t, e.set, keyOf(t, inter.Cert, revoke.KindSHA256))
	waitClosed(t, a.conn(0), "dev-a")
	waitClosed(t, b.conn(0), "dev-b")
	if got := direct.get(t, "/"); !strings.Contains(got, "cn=direct") || direct.numConns() != 1 {
		t.Fatalf("conn outside the revoked CA disturbed: %q, %d conns", got, direct.numConns())
	}
	fresh := e.client(inter.MustIssue(t, pkitest.Opts{CommonName: "dev-c"}), false)
	if _, err := fresh.try("/"); err == nil {
		t.Fatal("a new cert under the revoked intermediate was served")
	}
}

// A TLS 1.3 session resumed from a ticket issued before the revocation is refused: the
// check runs in VerifyConnection, which crypto/tls also calls on resumption.
func TestResumedSessionAfterRevocation(t *testing.T) {
	e := newEnv(t, envOpts{})
	cert := e.root.MustIssue(t, pkitest.Opts{CommonName: "resumer"})
	cache := tls.NewLRUClientSessionCache(8)
	c := e.client(cert, false, func(cfg *tls.Config) {
		cfg.ClientSessionCache = cache
		cfg.MinVersion = tls.VersionTLS13
	})
	c.get(t, "/")
	c.tr.CloseIdleConnections()
	if got := c.get(t, "/"); !strings.Contains(got, "resumed=true") {
		t.Fatalf("second conn did not resume (%q); the test needs resumption to mean anything", got)
	}
	c.tr.CloseIdleConnections()
	revokeKey(t, e.set, keyOf(t, cert.Cert, revoke.KindSHA256))
	if got, err := c.try("/"); err == nil {
		t.Fatalf("resumed session of a revoked cert was served: %q", got)
	}
	waitMetric(t, e, "guardian_handshake_failures_total", 1, "reason", "revoked")
	if v := metrictest.Value(t, e.metrics, "guardian_handshakes_total", "kind", "resumed"); v != 1 {
		t.Errorf("resumed handshakes = %v; want exactly the one before the revocation", v)
	}
}

// A conn is evicted when its certificate expires (clock injected); expired: keep leaves it:
// no expiry is ever scheduled on the clock, so however far it moves nothing closes the conn.
func TestExpiry(t *testing.T) {
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep=%v", keep), func(t *testing.T) {
			clk := fakeclock.New(time.Now())
			e := newEnv(t, envOpts{clock: clk, keepExp: keep})
			short := e.root.MustIssue(t, pkitest.Opts{CommonName: "short", NotAfter: clk.Now().Add(time.Hour)})
			long := e.root.MustIssue(t, pkitest.Opts{CommonName: "long", NotAfter: clk.Now().Add(48 * time.Hour)})
			cs, cl := e.client(short, false), e.client(long, false)
			cs.get(t, "/")
			cl.get(t, "/")
			if keep {
				// Both conns are tracked (both were served), and the registry would have
				// scheduled the short one's expiry on the clock (keep=false below sees it).
				if p := clk.Pending(); len(p) != 0 {
					t.Fatalf("expired: keep, yet expiries are scheduled at %v", p)
				}
				clk.Advance(2 * time.Hour)
				if p := clk.Pending(); len(p) != 0 || !isOpen(cs.conn(0)) {
					t.Fatalf("expired: keep: after the NotAfter, timers at %v, conn open %v; want none and open", p, isOpen(cs.conn(0)))
				}
				if got := cs.get(t, "/"); !strings.Contains(got, "cn=short") || cs.numConns() != 1 {
					t.Fatalf("expired: keep: %q on %d conns; want the first conn still serving", got, cs.numConns())
				}
				return
			}
			clk.Advance(2 * time.Hour)
			waitClosed(t, cs.conn(0), "expired cert")
			if !isOpen(cl.conn(0)) {
				t.Fatal("conn of an unexpired cert closed")
			}
			waitMetric(t, e, "guardian_evictions_total", 1, "reason", "expired")
			// What keep=true checks the absence of: the long conn's expiry, now scheduled.
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
				p := clk.Pending()
				if len(p) == 1 && !p[0].Before(long.Cert.NotAfter) && p[0].Before(long.Cert.NotAfter.Add(time.Second)) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("timers at %v; want one, at the long cert's NotAfter %v", p, long.Cert.NotAfter)
				}
			}
		})
	}
}

// Many concurrent handshakes and revocations: afterwards no open conn holds a revoked key,
// and every conn of an unrevoked cert is still open.
func TestRaceHandshakesAndRevocations(t *testing.T) {
	e := newEnv(t, envOpts{})
	const certs, workers, perWorker = 16, 8, 12
	leaves := make([]*pkitest.Leaf, certs)
	for i := range leaves {
		leaves[i] = e.root.MustIssue(t, pkitest.Opts{CommonName: fmt.Sprintf("c%d", i), Serial: big.NewInt(int64(1000 + i))})
	}
	type dialed struct {
		conn *tls.Conn
		cert int
	}
	var mu sync.Mutex
	var all []dialed
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < perWorker; i++ {
				ci := (w*perWorker + i) % certs
				conn, err := tls.Dial("tcp", e.addr, &tls.Config{
					RootCAs: e.root.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{leaves[ci].TLS()},
					NextProtos: []string{"http/1.1"},
				})
				if err != nil {
					continue // refused: its cert was revoked before the handshake
				}
				mu.Lock()
				all = append(all, dialed{conn, ci})
				mu.Unlock()
			}
		}(w)
	}
	revoked := map[int]bool{}
	for i := 0; i < certs; i += 2 {
		revokeKey(t, e.set, keyOf(t, leaves[i].Cert, revoke.KindSerial))
		revoked[i] = true
		time.Sleep(time.Millisecond)
	}
	wg.Wait()
	defer func() {
		for _, d := range all {
			d.conn.Close()
		}
	}()

	// Server side: no tracked conn holds a revoked key.
	deadline := time.Now().Add(10 * time.Second)
	for {
		bad := 0
		e.l.Conns(func(info *listener.ConnInfo) bool {
			if _, hit := e.set.AnyOf(info.Keys()); hit {
				bad++
			}
			return true
		})
		if bad == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d tracked conns still hold revoked keys", bad)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Client side: revoked conns end; the others are open.
	for _, d := range all {
		d.conn.SetReadDeadline(time.Now().Add(map[bool]time.Duration{true: 10 * time.Second, false: 20 * time.Millisecond}[revoked[d.cert]]))
		_, err := d.conn.Read(make([]byte, 1))
		ne, timeout := err.(net.Error)
		timedOut := timeout && ne.Timeout()
		if revoked[d.cert] && timedOut {
			t.Fatalf("conn of revoked cert %d still open", d.cert)
		}
		if !revoked[d.cert] && !timedOut {
			t.Fatalf("conn of unrevoked cert %d was closed: %v", d.cert, err)
		}
	}
	if len(all) < certs {
		t.Fatalf("only %d handshakes succeeded; the test needs more to mean anything", len(all))
	}
}

// The router: exact names, one-label wildcards, a default for clients without SNI, each
// audience with its own client CA; unknown names are refused.
func TestRouter(t *testing.T) {
	var partnerCA *pkitest.CA
	e := newEnv(t, envOpts{audiences: func(e *env) []listener.Audience {
		partnerCA = pkitest.NewCA(t)
		srv := []tls.Certificate{e.server.TLS()}
		return []listener.Audience{
			{Name: "public", SNI: []string{"public.test"}, Certificates: srv, ClientAuth: tls.NoClientCert},
			{Name: "api", SNI: []string{"*.api.test", "localhost"}, Certificates: srv, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: e.root.Pool()},
			{Name: "partners", Default: true, Certificates: srv, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: partnerCA.Pool()},
		}
	}})
	ours := e.root.MustIssue(t, pkitest.Opts{CommonName: "ours"})
	partner := partnerCA.MustIssue(t, pkitest.Opts{CommonName: "partner"})
	tests := []struct {
		name, sni string
		cert      *pkitest.Leaf
		want      string // audience, or "" for refused
	}{
		{"public without cert", "public.test", nil, "public"},
		{"wildcard", "orders.api.test", ours, "api"},
		{"wildcard case", "Orders.API.test", ours, "api"},
		{"wildcard is one label", "a.b.api.test", ours, ""},
		{"bare wildcard domain", "api.test", ours, ""},
		{"exact", "localhost", ours, "api"},
		{"cert of another audience's CA", "orders.api.test", partner, ""},
		{"no cert on mTLS audience", "orders.api.test", nil, ""},
		{"no SNI goes to default", "", partner, "partners"},
		{"unknown SNI", "evil.test", ours, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &tls.Config{RootCAs: e.root.Pool(), ServerName: tt.sni, NextProtos: []string{"http/1.1"}}
			if tt.sni == "" {
				cfg.InsecureSkipVerify = true // no name to verify the server by
			}
			if tt.cert != nil {
				cfg.Certificates = []tls.Certificate{tt.cert.TLS()}
			}
			got, err := rawGet(e.addr, cfg, tt.sni)
			if tt.want == "" {
				if err == nil {
					t.Fatalf("served (%q); want refused", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !strings.Contains(got, "audience="+tt.want) {
				t.Fatalf("got %q; want audience=%s", got, tt.want)
			}
		})
	}
	waitMetric(t, e, "guardian_handshake_failures_total", 3, "reason", "unknown_sni")
}

// rawGet does one HTTP/1.1 request over a fresh TLS conn.
func rawGet(addr string, cfg *tls.Config, host string) (string, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if host == "" {
		host = "x"
	}
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
	b, err := readAll(conn)
	if err != nil && len(b) == 0 {
		return "", err
	}
	if !strings.HasPrefix(string(b), "HTTP/1.1 200") {
		return string(b), fmt.Errorf("not served: %q", b)
	}
	return string(b), nil
}

func readAll(c net.Conn) ([]byte, error) {
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			if strings.Contains(err.Error(), "EOF") {
				return out, nil
			}
			return out, err
		}
	}
}

// A session ticket issued for one audience never resumes on another.
func TestTicketsDoNotCrossAudiences(t *testing.T) {
	e := newEnv(t, envOpts{audiences: func(e *env) []listener.Audience {
		srv := []tls.Certificate{e.server.TLS()}
		return []listener.Audience{
			{Name: "a", SNI: []string{"a.api.test"}, Certificates: srv, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: e.root.Pool()},
			{Name: "b", SNI: []string{"b.api.test"}, Certificates: srv, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: e.root.Pool()},
		}
	}})
	cert := e.root.MustIssue(t, pkitest.Opts{CommonName: "roamer"})
	cache := &oneTicketCache{}
	dial := func(sni string) (tls.ConnectionState, error) {
		conn, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: e.root.Pool(), ServerName: sni, MinVersion: tls.VersionTLS13,
			Certificates: []tls.Certificate{cert.TLS()}, ClientSessionCache: cache, NextProtos: []string{"http/1.1"}})
		if err != nil {
			return tls.ConnectionState{}, err
		}
		defer conn.Close()
		// The ticket arrives after the handshake; a read with a short deadline collects it.
		conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		conn.Read(make([]byte, 1))
		return conn.ConnectionState(), nil
	}
	if _, err := dial("a.api.test"); err != nil {
		t.Fatal(err)
	}
	if cache.state == nil {
		t.Fatal("no ticket received from audience a")
	}
	cs, err := dial("a.api.test")
	if err != nil || !cs.DidResume {
		t.Fatalf("same audience: resumed=%v err=%v; want a resumption", cs.DidResume, err)
	}
	cs, err = dial("b.api.test")
	if err != nil {
		t.Fatal(err)
	}
	if cs.DidResume {
		t.Fatal("a ticket of audience a resumed a session on audience b")
	}
}

// oneTicketCache hands the last ticket to every server name, as an attacker replaying it
// across names would.
type oneTicketCache struct {
	mu    sync.Mutex
	state *tls.ClientSessionState
}

func (c *oneTicketCache) Get(string) (*tls.ClientSessionState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state, c.state != nil
}

func (c *oneTicketCache) Put(_ string, cs *tls.ClientSessionState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cs != nil {
		c.state = cs
	}
}

// Bad input never disturbs anyone else: garbage instead of a ClientHello, a handshake that
// never finishes, an unknown SNI. Each is counted; Accept keeps going.
func TestBadInput(t *testing.T) {
	e := newEnv(t, envOpts{timeout: 300 * time.Millisecond})
	good := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "good"}), false)
	good.get(t, "/")

	garbage, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer garbage.Close()
	fmt.Fprintf(garbage, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	garbage.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := readAll(garbage); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("plain HTTP on the TLS port: %v", err)
	}

	silent, err := net.Dial("tcp", e.addr) // connects and never says a word
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	half, err := net.Dial("tcp", e.addr) // sends half a ClientHello record
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	half.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01})

	_, err = rawGet(e.addr, &tls.Config{RootCAs: e.root.Pool(), ServerName: "unknown.example"}, "unknown.example")
	if err == nil {
		t.Fatal("unknown SNI served")
	}
	for _, c := range []net.Conn{silent, half} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("stalled handshake got data")
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("stalled handshake not cut by the handshake timeout")
		}
	}
	if got := good.get(t, "/"); !strings.Contains(got, "cn=good") || good.numConns() != 1 {
		t.Fatalf("good client disturbed: %q on %d conns", got, good.numConns())
	}
	for reason, want := range map[string]float64{"not_tls": 1, "timeout": 2, "unknown_sni": 1} {
		waitMetric(t, e, "guardian_handshake_failures_total", want, "reason", reason)
	}
}

func TestConfigErrors(t *testing.T) {
	ca := pkitest.NewCA(t)
	srv := []tls.Certificate{ca.MustIssue(t, pkitest.Opts{DNS: []string{"a"}}).TLS()}
	set, _ := revoke.NewSet(revoke.SetOptions{})
	tests := []struct {
		name    string
		auds    []listener.Audience
		mention string
	}{
		{"none", nil, "no audiences"},
		{"no cert", []listener.Audience{{Name: "x", SNI: []string{"a"}}}, "no server certificate"},
		{"verify without CA", []listener.Audience{{Name: "x", SNI: []string{"a"}, Certificates: srv, ClientAuth: tls.RequireAndVerifyClientCert}}, "no client CA pool"},
		{"duplicate SNI", []listener.Audience{{Name: "x", SNI: []string{"a"}, Certificates: srv}, {Name: "y", SNI: []string{"A."}, Certificates: srv}}, `"x" and "y"`},
		{"two defaults", []listener.Audience{{Name: "x", Default: true, Certificates: srv}, {Name: "y", Default: true, Certificates: srv}}, "both the default"},
		{"bad wildcard", []listener.Audience{{Name: "x", SNI: []string{"*.*.a"}, Certificates: srv}}, "bad wildcard"},
		{"no names", []listener.Audience{{Name: "x", Certificates: srv}}, "no SNI names"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer inner.Close()
			l, err := listener.New(inner, listener.Config{Audiences: tt.auds, Set: set})
			if err == nil {
				l.Close()
				t.Fatal("New succeeded")
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("error %q does not mention %q", err, tt.mention)
			}
		})
	}
}

// waitMetric polls until the metric equals want: the client can see its conn end a moment
// before the server's goroutine counts it.
func waitMetric(t *testing.T, e *env, name string, want float64, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v := metrictest.Value(t, e.metrics, name, labels...)
		if v == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v; want %v", name, labels, v, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
