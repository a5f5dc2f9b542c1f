package listener_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
)

// twoAudiences: "api" requires a certificate (SNI localhost), "public" asks for none (SNI
// public.test).
func twoAudiences(mod func(pub, api *listener.Audience)) func(e *env) []listener.Audience {
	return func(e *env) []listener.Audience {
		api := listener.Audience{Name: "api", SNI: []string{"localhost"}, Certificates: []tls.Certificate{e.server.TLS()},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: e.root.Pool()}
		pub := listener.Audience{Name: "public", SNI: []string{"public.test"}, Certificates: []tls.Certificate{e.server.TLS()}}
		if mod != nil {
			mod(&pub, &api)
		}
		return []listener.Audience{api, pub}
	}
}

// anonConn finishes a handshake with the public audience from laddr (nil: any) and holds
// the conn, or returns the handshake's error.
func anonConn(t *testing.T, e *env, laddr net.Addr) (*tls.Conn, error) {
	t.Helper()
	d := &net.Dialer{LocalAddr: laddr, Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", e.addr, &tls.Config{RootCAs: e.root.Pool(), ServerName: "public.test", NextProtos: []string{"http/1.1"}})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	// A TLS 1.3 server may still refuse after the client's Finished: read a moment to learn.
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
		return nil, err
	}
	return c, nil
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// closedByServer reports whether the server closed c: a read ends in EOF or a reset, not
// in this deadline.
func closedByServer(c net.Conn, wait time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(wait))
	_, err := io.ReadAll(c)
	return err == nil || !isTimeout(err)
}

// At MaxConns, conns without a client certificate give way: the anonymous audience cannot
// take the last tenth (reason reserved), and each mTLS client that arrives when every slot
// is held closes the oldest anonymous conn — so mTLS clients are served through a flood of
// anonymous conns that would otherwise hold every file descriptor.
func TestMaxConnsShedsAnonymousFirst(t *testing.T) {
	for _, optional := range []bool{false, true} {
		t.Run(map[bool]string{false: "client_auth none", true: "client_auth optional"}[optional], func(t *testing.T) {
			testMaxConnsShedsAnonymousFirst(t, optional)
		})
	}
}

func testMaxConnsShedsAnonymousFirst(t *testing.T, optional bool) {
	e := newEnv(t, envOpts{maxConns: 20, audiences: twoAudiences(func(pub, api *listener.Audience) {
		if optional { // a conn without a certificate is anonymous there too
			pub.ClientAuth, pub.ClientCAs = tls.VerifyClientCertIfGiven, api.ClientCAs
		}
	})})
	var anon []*tls.Conn
	refused := 0
	for range 25 {
		c, err := anonConn(t, e, nil)
		if err != nil {
			refused++
			continue
		}
		anon = append(anon, c)
	}
	if len(anon) != 18 || refused != 7 {
		t.Fatalf("25 anonymous conns at max_conns 20: %d served, %d refused; want 18 and 7 (the last tenth is kept)", len(anon), refused)
	}
	waitMetric(t, e, "guardian_handshake_failures_total", 7, "reason", "reserved")
	// Two conns that never finish a handshake fill the listener to its bound.
	for range 2 {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	for i := range 5 {
		cl := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "svc"}), false)
		if got := cl.get(t, "/"); !strings.Contains(got, "cn=svc") {
			t.Fatalf("mTLS client %d at max_conns: %q", i, got)
		}
	}
	waitMetric(t, e, "guardian_conns_shed_total", 5, "kind", "anonymous")
	for i, c := range anon {
		// Generous for the conns that must have closed; a short look suffices for the open
		// ones (a conn still open only times out).
		wait := 100 * time.Millisecond
		if i < 5 {
			wait = 10 * time.Second
		}
		if closed := closedByServer(c, wait); closed != (i < 5) {
			t.Errorf("anonymous conn %d (oldest first): closed %v; want only the 5 oldest closed", i, closed)
		}
	}
}

// With every slot held by clients with certificates, a new conn is refused at once, not
// queued, and counted.
func TestMaxConnsRefusesWhenAllHoldCertificates(t *testing.T) {
	e := newEnv(t, envOpts{maxConns: 3})
	for i := range 3 {
		cl := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "svc"}), false)
		if got := cl.get(t, "/"); !strings.Contains(got, "cn=svc") {
			t.Fatalf("client %d: %q", i, got)
		}
	}
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !closedByServer(c, 5*time.Second) {
		t.Fatal("a fourth conn at max_conns 3 was kept open")
	}
	waitMetric(t, e, "guardian_conns_shed_total", 1, "kind", "refused")
}

// An audience's max_conns and max_conns_per_client refuse in the handshake, are counted,
// and free their slot when a conn closes; another client address has its own count.
func TestAudienceConnCaps(t *testing.T) {
	e := newEnv(t, envOpts{audiences: twoAudiences(func(pub, _ *listener.Audience) {
		pub.MaxConns, pub.MaxConnsPerClient = 3, 2
	})})
	a1, err := anonConn(t, e, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := anonConn(t, e, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := anonConn(t, e, nil); err == nil {
		t.Fatal("a third conn from 127.0.0.1 at max_conns_per_client 2 was served")
	}
	waitMetric(t, e, "guardian_handshake_failures_total", 1, "reason", "client_full")
	other := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}
	if _, err := anonConn(t, e, other); err != nil {
		t.Fatalf("127.0.0.2 under its own count: %v", err)
	}
	if _, err := anonConn(t, e, other); err == nil {
		t.Fatal("a fourth conn at the audience's max_conns 3 was served")
	}
	waitMetric(t, e, "guardian_handshake_failures_total", 1, "reason", "audience_full")
	// The mTLS audience has no caps of its own.
	cl := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "svc"}), false)
	if got := cl.get(t, "/"); !strings.Contains(got, "cn=svc") {
		t.Fatalf("mTLS client beside a full audience: %q", got)
	}
	a1.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := anonConn(t, e, nil); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a closed conn's slot was never freed")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// idle_timeout closes an HTTP/1.1 keep-alive conn after its last request, and an HTTP/2
// conn that never sends a request; a stream that outlasts the timeout is not cut.
func TestIdleTimeout(t *testing.T) {
	e := newEnv(t, envOpts{audiences: twoAudiences(func(pub, api *listener.Audience) {
		pub.IdleTimeout, api.IdleTimeout = 300*time.Millisecond, 300*time.Millisecond
	})})
	cl := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "svc"}), false)
	cl.get(t, "/")
	waitClosed(t, cl.conn(0), "an idle HTTP/1.1 keep-alive conn")

	h2, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: e.root.Pool(), ServerName: "public.test", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	if h2.ConnectionState().NegotiatedProtocol != "h2" {
		t.Fatal("no h2")
	}
	// The client preface and an empty SETTINGS frame, then nothing.
	if _, err := h2.Write(append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)); err != nil {
		t.Fatal(err)
	}
	if !closedByServer(h2, 10*time.Second) {
		t.Fatal("an HTTP/2 conn that never sent a request stayed open 10 s past a 300 ms idle_timeout")
	}
	waitMetric(t, e, "guardian_conns_idle_closed_total", 1, "audience", "public")

	st := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "streamer"}), false)
	resp, err := st.Get("https://localhost/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	start := time.Now()
	for time.Since(start) < time.Second {
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatalf("a stream was cut after %s by a 300 ms idle_timeout: %v", time.Since(start), err)
		}
	}
	if v := metrictest.Value(t, e.metrics, "guardian_conns_idle_closed_total", "audience", "api"); v != 1 {
		t.Errorf("idle closes in api = %v; want 1 (the keep-alive conn, not the stream)", v)
	}
}

// Progress cuts what stalls, not what is quiet: a response silent for longer than the
// idle timeout between two writes, and a request body that pauses, both go through, over
// HTTP/1.1 and HTTP/2.
func TestProgressSparesQuietStreams(t *testing.T) {
	e := newEnv(t, envOpts{audiences: twoAudiences(func(_, api *listener.Audience) { api.IdleTimeout = 500 * time.Millisecond })})
	for _, h2 := range []bool{false, true} {
		cl := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "svc"}), h2)
		if got := cl.get(t, "/quiet"); got != "first\nsecond\n" {
			t.Errorf("h2=%v: a quiet stream: %q; want both lines", h2, got)
		}
		pr, pw := io.Pipe()
		go func() {
			pw.Write([]byte("abc"))
			time.Sleep(50 * time.Millisecond) // a pause well under the timeout
			pw.Write([]byte("def"))
			pw.Close()
		}()
		resp, err := cl.Post("https://localhost/upload", "application/octet-stream", pr)
		if err != nil {
			t.Fatalf("h2=%v: upload: %v", h2, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "6 <nil>" {
			t.Errorf("h2=%v: an upload with a pause: %q; want 6 bytes read", h2, b)
		}
	}
}

// A request body that stops for longer than the idle timeout is cut: the handler's read
// fails, the request ends.
func TestProgressCutsStalledBody(t *testing.T) {
	e := newEnv(t, envOpts{audiences: twoAudiences(func(_, api *listener.Audience) { api.IdleTimeout = 300 * time.Millisecond })})
	for _, h2 := range []bool{false, true} {
		cl := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "svc"}), h2)
		pr, pw := io.Pipe()
		defer pw.Close()
		go pw.Write([]byte("abc")) // then nothing
		resp, err := cl.Post("https://localhost/upload", "application/octet-stream", pr)
		if err != nil {
			t.Fatalf("h2=%v: %v", h2, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.HasPrefix(string(b), "3 ") || !strings.Contains(string(b), "timeout") {
			t.Errorf("h2=%v: a stalled upload: %q; want the handler's read to time out", h2, b)
		}
	}
}

// MinBodyRate: a body trickled a byte at a time, each byte well within the idle timeout,
// is cut once it falls behind the rate; a body that keeps up is read whole.
func TestProgressMinBodyRate(t *testing.T) {
	e := newEnv(t, envOpts{audiences: twoAudiences(func(_, api *listener.Audience) {
		api.IdleTimeout, api.MinBodyRate = 500*time.Millisecond, 100
	})})
	for _, h2 := range []bool{false, true} {
		cl := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "svc"}), h2)
		pr, pw := io.Pipe()
		go func() {
			defer pw.Close()
			for range 40 { // 1 byte every 200 ms: 5 B/s against 100 B/s, for up to 8 s
				if _, err := pw.Write([]byte("x")); err != nil {
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
		}()
		resp, err := cl.Post("https://localhost/upload", "application/octet-stream", pr)
		if err != nil {
			t.Fatalf("h2=%v: %v", h2, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		// Without the rate all 40 bytes arrive (each within the idle timeout): "40 <nil>".
		if strings.HasPrefix(string(b), "40 ") || !strings.Contains(string(b), "slower than 100 bytes a second") {
			t.Errorf("h2=%v: a trickled body: %q; want it cut for its rate", h2, b)
		}
		body := strings.Repeat("y", 64<<10)
		resp, err = cl.Post("https://localhost/upload", "application/octet-stream", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "65536 <nil>" {
			t.Errorf("h2=%v: a 64 KiB body at loopback speed: %q", h2, b)
		}
	}
}

// A body read after its handler returned — by a reverse proxy's transport, when the
// upstream answers before reading it — touches nothing of the finished request: net/http's
// HTTP/2 ResponseController panics there, outside any recover, and took the process down
// (found by attacking from outside with one POST).
func TestProgressBodyReadAfterHandlerReturned(t *testing.T) {
	e := newEnv(t, envOpts{audiences: twoAudiences(func(_, api *listener.Audience) {
		api.IdleTimeout, api.MinBodyRate = 2*time.Second, 100
	})})
	for _, h2 := range []bool{false, true} {
		cl := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "svc"}), h2)
		for range 5 {
			resp, err := cl.Post("https://localhost/early", "application/octet-stream", strings.NewReader(strings.Repeat("z", 4<<20)))
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
		time.Sleep(100 * time.Millisecond) // the abandoned body reads run
		if got := cl.get(t, "/"); !strings.Contains(got, "cn=svc") {
			t.Fatalf("h2=%v: after bodies read past their handlers: %q", h2, got)
		}
	}
}
