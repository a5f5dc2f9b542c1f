package listener_test

import (
	"crypto/tls"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// Behind a load balancer: a trusted peer's PROXY header gives the conn its client's
// address; a trusted peer without one, a malformed one, and a header from a peer not
// trusted to send one are each refused in that conn's handshake, counted by reason; an
// untrusted peer without a header is served with its own address.
func TestProxyProtocol(t *testing.T) {
	leakCheck(t)
	for _, tt := range []struct {
		name    string
		trusted string
		header  []byte
		reason  string // "" means served
		remote  string
	}{
		{"trusted v2", "127.0.0.1/32", v2Header(t, "10.1.2.3:5555"), "", "10.1.2.3:5555"},
		{"trusted v1", "127.0.0.1/32", []byte("PROXY TCP4 192.0.2.7 127.0.0.1 4444 443\r\n"), "", "192.0.2.7:4444"},
		{"trusted, no header", "127.0.0.1/32", nil, "proxy_header_missing", ""},
		{"trusted, malformed", "127.0.0.1/32", []byte("PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n"), "proxy_header_bad", ""},
		{"trusted, v2 of a bogus family", "127.0.0.1/32", append([]byte("\r\n\r\n\x00\r\nQUIT\n"), 0x21, 0xff, 0, 0), "proxy_header_bad", ""},
		{"trusted, oversized v1", "127.0.0.1/32", []byte("PROXY TCP4 " + strings.Repeat("1", 200) + "\r\n"), "proxy_header_bad", ""},
		{"trusted, v2 of the UNIX family", "127.0.0.1/32", append(append([]byte("\r\n\r\n\x00\r\nQUIT\n"), 0x21, 0x31, 0, 216), make([]byte, 216)...), "proxy_header_bad", ""},
		{"untrusted, forged", "127.0.0.2/32", v2Header(t, "10.9.9.9:1"), "proxy_header_untrusted", ""},
		{"untrusted, no header", "127.0.0.2/32", nil, "", "127.0.0.1:"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			set, _ := revoke.NewSet(revoke.SetOptions{})
			ca := pkitest.NewCA(t)
			srv := ca.MustIssue(t, pkitest.Opts{DNS: []string{"localhost"}})
			client := ca.MustIssue(t, pkitest.Opts{CommonName: "c"})
			inner, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			pl, err := listener.ProxyProtocol(inner, listener.ProxyProtocolConfig{Trusted: []netip.Prefix{netip.MustParsePrefix(tt.trusted)}, Timeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			l, err := listener.New(pl, listener.Config{Set: set, Metrics: reg, HandshakeTimeout: 5 * time.Second, Audiences: []listener.Audience{{
				Name: "api", SNI: []string{"localhost"}, Certificates: []tls.Certificate{srv.TLS()},
				ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool()}}})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			accepted := make(chan net.Conn, 1)
			go func() {
				if c, err := l.Accept(); err == nil {
					accepted <- c
				}
			}()
			raw, err := net.Dial("tcp", inner.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			raw.Write(tt.header)
			tc := tls.Client(raw, &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{client.TLS()}})
			tc.SetDeadline(time.Now().Add(10 * time.Second))
			err = tc.Handshake()
			if err == nil {
				tc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				_, err = tc.Read(make([]byte, 1)) // TLS 1.3: a refusal arrives after the client's handshake
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					err = nil
				}
			}
			if tt.reason != "" {
				for deadline := time.Now().Add(10 * time.Second); metrictest.Value(t, reg, "guardian_handshake_failures_total", "reason", tt.reason) != 1; time.Sleep(5 * time.Millisecond) {
					if time.Now().After(deadline) {
						mfs, _ := reg.Gather()
						for _, mf := range mfs {
							if mf.GetName() == "guardian_handshake_failures_total" {
								t.Logf("%v", mf.GetMetric())
							}
						}
						t.Fatalf("failures{reason=%s} not counted; the client saw %v", tt.reason, err)
					}
				}
				return
			}
			select {
			case c := <-accepted:
				defer c.Close()
				info, _ := listener.FromConn(c)
				if got := info.RemoteAddr().String(); len(got) < len(tt.remote) || got[:len(tt.remote)] != tt.remote {
					t.Fatalf("RemoteAddr %s; want %s", got, tt.remote)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("not served")
			}
		})
	}
}

func v2Header(t *testing.T, client string) []byte {
	t.Helper()
	src, _ := net.ResolveTCPAddr("tcp", client)
	dst, _ := net.ResolveTCPAddr("tcp", "127.0.0.1:443")
	b, err := proxyproto.HeaderProxyFromAddrs(2, src, dst).Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
