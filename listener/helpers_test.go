package listener_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/clock"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// env is a guardian listener under a real net/http server on a loopback port.
type env struct {
	t       testing.TB
	root    *pkitest.CA
	server  *pkitest.Leaf
	set     *revoke.Set
	l       *listener.Listener
	srv     *http.Server
	addr    string
	metrics *prometheus.Registry
	// streamEnded receives the handler context's error when a /stream request ends.
	streamEnded chan error
}

type envOpts struct {
	audiences func(e *env) []listener.Audience
	clock     clock.Clock
	keepExp   bool
	timeout   time.Duration
	maxHS     int
	maxConns  int
	onEvict   func(listener.Eviction)
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	leakCheck(t)
	e := &env{t: t, root: pkitest.NewCA(t), metrics: prometheus.NewRegistry(), streamEnded: make(chan error, 16)}
	e.server = e.root.MustIssue(t, pkitest.Opts{CommonName: "server", DNS: []string{"localhost", "*.api.test", "public.test"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	set, err := revoke.NewSet(revoke.SetOptions{Metrics: e.metrics})
	if err != nil {
		t.Fatal(err)
	}
	e.set = set
	auds := []listener.Audience{{
		Name: "api", SNI: []string{"localhost"}, Certificates: []tls.Certificate{e.server.TLS()},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: e.root.Pool(),
	}}
	if o.audiences != nil {
		auds = o.audiences(e)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.l, err = listener.New(inner, listener.Config{
		Audiences: auds, Set: set, Metrics: e.metrics, Clock: o.clock, KeepExpired: o.keepExp, HandshakeTimeout: o.timeout, MaxHandshakes: o.maxHS,
		MaxConns: o.maxConns, OnEvict: o.onEvict,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.addr = inner.Addr().String()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		info, ok := listener.FromContext(r.Context())
		if !ok {
			http.Error(w, "no conn info", 500)
			return
		}
		cn := ""
		if leaf := info.Leaf(); leaf != nil {
			cn = leaf.Subject.CommonName
		}
		fmt.Fprintf(w, "audience=%s cn=%s proto=%d resumed=%v", info.Audience(), cn, r.ProtoMajor, r.TLS.DidResume)
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		f := w.(http.Flusher)
		for i := 0; ; i++ {
			if _, err := fmt.Fprintf(w, "tick %d\n", i); err != nil {
				break
			}
			f.Flush()
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Millisecond):
				continue
			}
			break
		}
		e.streamEnded <- r.Context().Err()
	})
	mux.HandleFunc("/quiet", func(w http.ResponseWriter, r *http.Request) {
		// A line, a second of silence, a line: a quiet stream, not a stalled one.
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		time.Sleep(time.Second)
		io.WriteString(w, "second\n")
	})
	mux.HandleFunc("/early", func(w http.ResponseWriter, r *http.Request) {
		// Answers at once and leaves the body to another goroutine, as a reverse proxy's
		// transport does when the upstream answers before reading it.
		go io.Copy(io.Discard, r.Body)
		io.WriteString(w, "early")
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%d %v", len(b), err)
	})
	e.srv = &http.Server{Handler: e.l.Progress(mux), ConnContext: e.l.ConnContext, ConnState: e.l.ConnState, ErrorLog: quietLog()}
	go e.srv.Serve(e.l)
	// http.Server.Close closes the listener and every conn it knows; the listener then
	// ends its enforcement by itself, which leakCheck sees.
	t.Cleanup(func() { e.srv.Close() })
	return e
}

// client is a real net/http client with one certificate whose TCP conns are watched: a
// conn is "closed" once a read on it fails, which the transport's idle reader notices at
// once when guardian closes the conn.
type client struct {
	*http.Client
	tr    *http.Transport
	mu    sync.Mutex
	conns []*watchedConn
}

type watchedConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.once.Do(func() { close(c.closed) })
	}
	return n, err
}

func (c *watchedConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (e *env) client(leaf *pkitest.Leaf, h2 bool, tweak ...func(*tls.Config)) *client {
	cfg := &tls.Config{RootCAs: e.root.Pool(), ServerName: "localhost"}
	if leaf != nil {
		cfg.Certificates = []tls.Certificate{leaf.TLS()}
	}
	for _, f := range tweak {
		f(cfg)
	}
	c := &client{}
	c.tr = &http.Transport{
		TLSClientConfig:   cfg,
		ForceAttemptHTTP2: h2,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			nc, err := d.DialContext(ctx, network, e.addr)
			if err != nil {
				return nil, err
			}
			w := &watchedConn{Conn: nc, closed: make(chan struct{})}
			c.mu.Lock()
			c.conns = append(c.conns, w)
			c.mu.Unlock()
			return w, nil
		},
	}
	if !h2 {
		c.tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	c.Client = &http.Client{Transport: c.tr, Timeout: 10 * time.Second}
	e.t.Cleanup(c.tr.CloseIdleConnections)
	return c
}

func (c *client) get(t testing.TB, path string) string {
	t.Helper()
	body, err := c.try(path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return body
}

func (c *client) try(path string) (string, error) {
	resp, err := c.Get("https://localhost" + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return string(b), err
}

func (c *client) numConns() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.conns)
}

func (c *client) conn(i int) *watchedConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conns[i]
}

// waitClosed polls, with a generous deadline, until guardian has closed the conn.
func waitClosed(t *testing.T, w *watchedConn, what string) {
	t.Helper()
	select {
	case <-w.closed:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: conn still open 10s after the revocation", what)
	}
}

func isOpen(w *watchedConn) bool {
	select {
	case <-w.closed:
		return false
	default:
		return true
	}
}

func revokeKey(t *testing.T, set *revoke.Set, k revoke.Key) {
	t.Helper()
	if _, err := set.Add(revoke.SourceAPI, revoke.Entry{Key: k, RevokedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
}

func keyOf(t *testing.T, c *x509.Certificate, kind revoke.Kind) revoke.Key {
	t.Helper()
	k, err := revoke.KeyFor(c, kind)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	s, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read stream: %v", err)
	}
	return strings.TrimSpace(s)
}

// leakCheck fails the test if, once its cleanups have run, a goroutine of conntrack or the
// listener is still running, or a socket opened during the test is still open: each conn
// the listener accepted (or refused) must have been closed, whatever ended it.
func leakCheck(t testing.TB) {
	before := sockets(t)
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			var leaked []string
			for _, g := range strings.Split(string(buf), "\n\n") {
				if strings.Contains(g, "guardian/conntrack.") || strings.Contains(g, "guardian/listener.(*Listener)") {
					leaked = append(leaked, g)
				}
			}
			var open []string
			for s := range sockets(t) {
				if !before[s] {
					open = append(open, s)
				}
			}
			if len(leaked) == 0 && len(open) == 0 {
				return
			}
			if time.Now().After(deadline) {
				if len(leaked) > 0 {
					t.Errorf("%d goroutines leaked, first:\n%s", len(leaked), leaked[0])
				}
				if len(open) > 0 {
					sort.Strings(open)
					t.Errorf("%d sockets opened during the test still open: %s", len(open), strings.Join(open, ", "))
				}
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// sockets returns this process's open sockets, as "socket:[inode]".
func sockets(t testing.TB) map[string]bool {
	dir, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("leak check: %v", err)
	}
	out := map[string]bool{}
	for _, e := range dir {
		if name, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(name, "socket:") {
			out[name] = true
		}
	}
	return out
}

func quietLog() *log.Logger { return log.New(io.Discard, "", 0) }
