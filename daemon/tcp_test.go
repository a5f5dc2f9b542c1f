package daemon

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// tcpNode runs a Node whose one audience splices to upstream, with idle as its idle_timeout.
func tcpNode(t *testing.T, upstream string, idle time.Duration) (n *Node, reg *prometheus.Registry, dial func() *tls.Conn, client *pkitest.Leaf) {
	t.Helper()
	dir, ca, client := testPKI(t)
	cfg := testConfig(dir, "")
	cfg.Audiences[0].Upstream = "tcp://" + upstream
	cfg.Audiences[0].IdleTimeout = Duration(idle)
	reg = prometheus.NewRegistry()
	n = runNode(t, cfg, Options{Metrics: reg})
	dial = func() *tls.Conn {
		t.Helper()
		c, err := tls.Dial("tcp", n.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{client.TLS()}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	return n, reg, dial, client
}

// upstream accepts conns and hands each to serve.
func upstream(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); serve(c) }()
		}
	}()
	return l.Addr().String()
}

// A client that half-closes and keeps reading gets the upstream's answer: each side's end
// of stream crosses as a half-close, the other direction stays open.
func TestTCPHalfClose(t *testing.T) {
	up := upstream(t, func(c net.Conn) {
		b, _ := io.ReadAll(c) // until the client's half-close arrives as a FIN
		fmt.Fprintf(c, "got %d bytes: %s", len(b), b)
	})
	_, _, dial, _ := tcpNode(t, up, time.Minute)
	c := dial()
	io.WriteString(c, "hello")
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "got 5 bytes: hello" {
		t.Fatalf("read %q, %v; want the upstream's answer after the client's half-close, then EOF", b, err)
	}
}

// An evicted client's splice closes its upstream conn too; an upstream that refuses closes
// the client's conn, counted; an idle splice is closed at idle_timeout.
func TestTCPEvictionRefusalAndIdle(t *testing.T) {
	upstreamSaw := make(chan error, 1)
	up := upstream(t, func(c net.Conn) {
		buf := make([]byte, 64)
		for {
			if _, err := c.Read(buf); err != nil {
				upstreamSaw <- err
				return
			}
		}
	})
	n, _, dial, client := tcpNode(t, up, time.Minute)
	c := dial()
	io.WriteString(c, "x") // the handshake and the splice's dial are done
	for deadline := time.Now().Add(10 * time.Second); n.data.Len() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no conn tracked")
		}
	}
	key, _ := revoke.KeyFor(client.Cert, revoke.KindSerial)
	if _, err := n.Store().Revoke(context.Background(), revoke.Entry{Key: key}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-upstreamSaw:
		if err != io.EOF && (err == nil || !strings.Contains(err.Error(), "reset")) {
			t.Fatalf("the upstream read %v; want the close of its conn", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream conn still open 10s after its client was revoked")
	}

	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	_, reg, dial2, _ := tcpNode(t, deadAddr, time.Minute)
	c2 := dial2()
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Fatal("read from a conn whose upstream refused")
	}
	for deadline := time.Now().Add(10 * time.Second); metrictest.Value(t, reg, "guardian_tcp_upstream_errors_total", "audience", "api", "kind", "dial") != 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the refused dial not counted")
		}
	}

	hold := upstream(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	_, _, dial3, _ := tcpNode(t, hold, 200*time.Millisecond)
	c3 := dial3()
	io.WriteString(c3, "x")
	c3.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c3.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("an idle splice: %v; want it closed by guardian at idle_timeout", err)
	}
}

// proxy_protocol_upstream: v2 tells a TCP upstream who is connected: the client's address,
// and the SNI, TLS version and the client certificate's CN, SHA-256 and URI as TLVs, ahead
// of the client's own bytes.
func TestTCPUpstreamProxyHeader(t *testing.T) {
	got := make(chan *proxyproto.Header, 1)
	payload := make(chan string, 1)
	up := upstream(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		h, err := proxyproto.Read(br)
		if err != nil {
			t.Errorf("upstream: %v", err)
			return
		}
		got <- h
		line, _ := br.ReadString('\n')
		payload <- line
	})
	dir, ca, client := testPKI(t)
	cfg := testConfig(dir, "")
	cfg.Audiences[0].Upstream, cfg.Audiences[0].ProxyProtocolUpstream = "tcp://"+up, "v2"
	n := runNode(t, cfg, Options{})
	c, err := tls.Dial("tcp", n.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{client.TLS()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "hello\n")
	var h *proxyproto.Header
	select {
	case h = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no PROXY header reached the upstream")
	}
	if h.SourceAddr.String() != c.LocalAddr().String() {
		t.Errorf("source %v; want the client's %v", h.SourceAddr, c.LocalAddr())
	}
	tlvs, err := h.TLVs()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(client.Cert.Raw)
	var sni, uri string
	var fp []byte
	var ssl tlvparse.PP2SSL
	for _, v := range tlvs {
		switch v.Type {
		case proxyproto.PP2_TYPE_AUTHORITY:
			sni = string(v.Value)
		case TLVClientCertSHA256:
			fp = v.Value
		case TLVClientCertURI:
			uri = string(v.Value)
		case proxyproto.PP2_TYPE_SSL:
			if ssl, err = tlvparse.SSL(v); err != nil {
				t.Fatal(err)
			}
		}
	}
	cn, _ := ssl.ClientCN()
	version, _ := ssl.SSLVersion()
	if sni != "localhost" || !bytes.Equal(fp, sum[:]) || uri != "spiffe://test/client" || cn != "client" || version != "TLSv1.3" || !ssl.Verified() || !ssl.ClientCertConn() {
		t.Fatalf("TLVs: sni %q uri %q cn %q version %q verified %v cert %v fingerprint ok %v", sni, uri, cn, version, ssl.Verified(), ssl.ClientCertConn(), bytes.Equal(fp, sum[:]))
	}
	if p := <-payload; p != "hello\n" {
		t.Fatalf("payload after the header %q; want the client's bytes", p)
	}
}

// client_cert_header: rfc9440 gives an HTTP upstream the certificate as RFC 9440 says, and
// not XFCC; what the client sent under those names, in any spelling, never arrives.
func TestRFC9440Headers(t *testing.T) {
	seen := make(chan http.Header, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen <- r.Header.Clone() }))
	defer up.Close()
	dir, ca, _ := testPKI(t)
	inter := ca.MustIntermediate(t, "devices")
	leaf := inter.MustIssue(t, pkitest.Opts{CommonName: "meter"})
	cfg := testConfig(dir, "")
	cfg.Audiences[0].Upstream, cfg.Audiences[0].ClientCertHeader = up.URL, "rfc9440"
	n := runNode(t, cfg, Options{})
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{leaf.TLS()}},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, n.Addr().String())
		}}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequest("GET", "https://localhost/", nil)
	req.Header.Set("Client-Cert", ":AAAA:")
	req.Header["Client_Cert_Chain"] = []string{":BBBB:"}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	h := <-seen
	want := ":" + base64.StdEncoding.EncodeToString(leaf.Cert.Raw) + ":"
	wantChain := ":" + base64.StdEncoding.EncodeToString(inter.Cert.Raw) + ":"
	if got := h.Values("Client-Cert"); len(got) != 1 || got[0] != want {
		t.Errorf("Client-Cert %q; want the client's certificate", got)
	}
	if got := h.Values("Client-Cert-Chain"); len(got) != 1 || got[0] != wantChain {
		t.Errorf("Client-Cert-Chain %q; want the intermediate the client sent", got)
	}
	if h.Get("X-Forwarded-Client-Cert") != "" || h.Get("Client_Cert_Chain") != "" {
		t.Errorf("XFCC %q, Client_Cert_Chain %q; want neither", h.Get("X-Forwarded-Client-Cert"), h.Get("Client_Cert_Chain"))
	}
}

// max_conn_lifetime on a TCP audience: the splice is cut at the lifetime (no graceful end
// exists for raw bytes), counted with reason lifetime; the upstream sees its conn close.
func TestTCPMaxConnLifetime(t *testing.T) {
	closed := make(chan struct{})
	up := upstream(t, func(c net.Conn) { io.Copy(io.Discard, c); close(closed) })
	dir, ca, client := testPKI(t)
	cfg := testConfig(dir, "")
	cfg.Audiences[0].Upstream, cfg.Audiences[0].MaxConnLifetime = "tcp://"+up, Duration(300*time.Millisecond)
	reg := prometheus.NewRegistry()
	n := runNode(t, cfg, Options{Metrics: reg})
	c, err := tls.Dial("tcp", n.Addr().String(), &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{client.TLS()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "x")
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream conn still open 10s after the client conn's lifetime")
	}
	for deadline := time.Now().Add(10 * time.Second); metrictest.Value(t, reg, "guardian_evictions_total", "listener", "data", "reason", "lifetime") != 1; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the lifetime eviction not counted")
		}
	}
}

// A revoked client whose splice no longer reads it — the client half-closed first, so only
// the upstream's direction is left, and the upstream is silent — still has its splice ended
// and its upstream conn closed at once, not at the idle timeout.
func TestTCPEvictionAfterHalfClose(t *testing.T) {
	up := upstream(t, func(c net.Conn) {
		io.Copy(io.Discard, c) // the client's bytes, then its half-close
		c.Write([]byte{'.'})   // one byte, then silence: nothing makes the splice write
		time.Sleep(20 * time.Second)
	})
	n, _, dial, client := tcpNode(t, up, time.Hour)
	c := dial()
	io.WriteString(c, "x")
	c.CloseWrite()
	c.Read(make([]byte, 1)) // the upstream's byte: the splice runs, the client half-closed
	live := func() int {
		k := 0
		n.splices.Range(func(_, _ any) bool { k++; return true })
		return k
	}
	if live() != 1 {
		t.Fatalf("%d live splices; want 1", live())
	}
	key, _ := revoke.KeyFor(client.Cert, revoke.KindSerial)
	if _, err := n.Store().Revoke(context.Background(), revoke.Entry{Key: key}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); live() != 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the splice of a revoked, half-closed client still running 10s later (its upstream conn open)")
		}
	}
}

// An upstream that resets its conn mid-splice closes the client's conn, and nothing else.
func TestTCPUpstreamReset(t *testing.T) {
	var first atomic.Bool
	up := upstream(t, func(c net.Conn) {
		b := make([]byte, 1)
		c.Read(b)
		if first.CompareAndSwap(false, true) {
			c.(*net.TCPConn).SetLinger(0) // RST
			return
		}
		c.Write(b) // the others are echoed
	})
	_, _, dial, _ := tcpNode(t, up, time.Minute)
	c := dial()
	io.WriteString(c, "x")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("after the upstream reset: %v; want the client's conn closed", err)
	}
	other := dial() // the node serves on
	io.WriteString(other, "y")
	other.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 1)
	if _, err := io.ReadFull(other, b); err != nil || b[0] != 'y' {
		t.Fatalf("another client after the reset: %q, %v; want its echo", b, err)
	}
}
