package daemon

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/pires/go-proxyproto/tlvparse"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/listener"
)

// tcpProxy splices the conns of a TCP audience (upstream tcp://host:port or unix:///path)
// to its upstream, bytes both ways with no parsing. Evicting the client conn ends the
// splice and closes the upstream conn with it.
type tcpProxy struct {
	audience      string
	network, addr string
	dial          time.Duration
	idle          time.Duration
	slots         chan struct{} // max_upstream_conns; nil: no bound
	proxyV2       bool          // send a PROXY v2 header with the client's TLS facts
	errors        *prometheus.CounterVec
	// splices are the node's live splices by client conn, for an eviction to end both
	// sides at once: a splice whose client half-closed, or whose upstream stopped reading,
	// would not notice the client conn closing.
	splices *sync.Map
	log     *slog.Logger
}

// newTCPProxy is the proxy of a TCP audience a.
func newTCPProxy(a AudienceConfig, maxConns int, errs *prometheus.CounterVec, log *slog.Logger, splices *sync.Map) *tcpProxy {
	u, _ := url.Parse(a.Upstream) // validated with the config
	p := &tcpProxy{audience: a.Name, network: u.Scheme, addr: u.Host, dial: time.Duration(a.UpstreamTimeouts.Dial),
		idle: time.Duration(a.IdleTimeout), errors: errs, log: log, splices: splices}
	if u.Scheme == "unix" {
		p.addr = u.Path
	}
	p.proxyV2 = a.ProxyProtocolUpstream == "v2"
	if maxConns > 0 {
		p.slots = make(chan struct{}, maxConns)
	}
	return p
}

// serve splices c to the upstream until both sides are done, either side fails, the conn
// is idle for the audience's idle_timeout, or guardian evicts it.
func (p *tcpProxy) serve(c net.Conn) {
	defer c.Close()
	if p.slots != nil {
		select {
		case p.slots <- struct{}{}:
			defer func() { <-p.slots }()
		default:
			p.fail("max_upstream_conns", c, errors.New("the audience's max_upstream_conns are in use"))
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.dial)
	up, err := (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext(ctx, p.network, p.addr)
	cancel()
	if err != nil {
		kind := "dial"
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			kind = "dial_timeout"
		}
		p.fail(kind, c, err)
		return
	}
	defer up.Close()
	if p.proxyV2 {
		hdr, err := proxyHeader(c)
		if err == nil {
			_, err = up.Write(hdr)
		}
		if err != nil {
			p.fail("proxy_header", c, err)
			return
		}
	}
	var last atomic.Int64
	last.Store(time.Now().UnixNano())
	var once sync.Once
	closeBoth := func() { once.Do(func() { c.Close(); up.Close() }) }
	if info, ok := listener.FromConn(c); ok {
		p.splices.Store(info, func() {
			// Revoked (or expired, or cut): nothing more reaches the upstream — an RST drops
			// what its socket still holds of the client's bytes.
			if tc, ok := up.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			closeBoth()
		})
		defer p.splices.Delete(info)
	}
	if p.idle > 0 {
		// One runtime timer, re-armed for what is left of the idle time when it fires: no
		// goroutine, and no timer reset per read. mu makes t visible to its own callback.
		var mu sync.Mutex
		var t *time.Timer
		mu.Lock()
		t = time.AfterFunc(p.idle, func() {
			mu.Lock()
			defer mu.Unlock()
			if idle := time.Since(time.Unix(0, last.Load())); idle < p.idle {
				t.Reset(p.idle - idle)
				return
			}
			closeBoth()
		})
		mu.Unlock()
		defer func() { mu.Lock(); t.Stop(); mu.Unlock() }()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.copy(up, c, &last, closeBoth) // client → upstream
	}()
	p.copy(c, up, &last, closeBoth) // upstream → client
	<-done
	closeBoth()
}

// copy moves src's bytes to dst. At src's end it half-closes dst (TCP FIN, or TLS
// close_notify toward the client), so a protocol that half-closes works; on an error — an
// eviction closing the client conn, a reset — it closes both sides.
func (p *tcpProxy) copy(dst, src net.Conn, last *atomic.Int64, closeBoth func()) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			last.Store(time.Now().UnixNano())
			if _, werr := dst.Write(buf[:n]); werr != nil {
				closeBoth()
				return
			}
		}
		if err == io.EOF {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
				return
			}
			closeBoth()
			return
		}
		if err != nil {
			closeBoth()
			return
		}
	}
}

func (p *tcpProxy) fail(kind string, c net.Conn, err error) {
	p.errors.WithLabelValues(p.audience, kind).Inc()
	p.log.Warn("TCP upstream unavailable; client conn closed", "audience", p.audience, "kind", kind, "remote", c.RemoteAddr().String(), "err", err)
}

// httpListener is the data listener as the HTTP server sees it: Accept hands each TCP
// audience's conn to its splice, on a goroutine of its own, and returns the others — no
// extra goroutine or channel between the handshake and the HTTP server.
type httpListener struct {
	*listener.Listener
	n *Node
}

func (l httpListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		info, _ := listener.FromConn(c)
		p := (*l.n.tcp.Load())[info.Audience()]
		if p == nil {
			return c, nil
		}
		l.n.spliceMu.Lock()
		if l.n.splicesDone {
			l.n.spliceMu.Unlock()
			c.Close()
			continue
		}
		l.n.spliceWG.Add(1)
		l.n.spliceMu.Unlock()
		go func() { defer l.n.spliceWG.Done(); p.serve(c) }()
	}
}

// TLV types of the PROXY v2 header guardian sends to a TCP upstream beside the spec's
// (PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY for the SNI, PP2_TYPE_SSL with the version, cipher and
// the client certificate's CN): in the spec's custom range, the client certificate's
// SHA-256 (32 bytes) and each of its URI SANs (one TLV per URI).
const (
	TLVClientCertSHA256 proxyproto.PP2Type = 0xE0
	TLVClientCertURI    proxyproto.PP2Type = 0xE1
)

// proxyHeader is the PROXY v2 header for c: the client's address, and its TLS facts as
// TLVs (HAProxy's PROXY protocol spec, 2.2).
func proxyHeader(c net.Conn) ([]byte, error) {
	h := proxyproto.HeaderProxyFromAddrs(2, c.RemoteAddr(), c.LocalAddr())
	var tlvs []proxyproto.TLV
	if tc, ok := c.(*tls.Conn); ok {
		cs := tc.ConnectionState()
		if cs.NegotiatedProtocol != "" {
			tlvs = append(tlvs, proxyproto.TLV{Type: proxyproto.PP2_TYPE_ALPN, Value: []byte(cs.NegotiatedProtocol)})
		}
		if cs.ServerName != "" {
			// DNS characters only (the router refuses others), case-folded.
			tlvs = append(tlvs, proxyproto.TLV{Type: proxyproto.PP2_TYPE_AUTHORITY, Value: []byte(strings.ToLower(cs.ServerName))})
		}
		ssl := tlvparse.PP2SSL{Client: tlvparse.PP2_BITFIELD_CLIENT_SSL, TLV: []proxyproto.TLV{
			{Type: proxyproto.PP2_SUBTYPE_SSL_VERSION, Value: []byte(tlsVersion(cs.Version))},
			{Type: proxyproto.PP2_SUBTYPE_SSL_CIPHER, Value: []byte(tls.CipherSuiteName(cs.CipherSuite))},
		}}
		if len(cs.PeerCertificates) > 0 {
			leaf := cs.PeerCertificates[0]
			ssl.Client |= tlvparse.PP2_BITFIELD_CLIENT_CERT_CONN
			if cs.DidResume {
				ssl.Client |= tlvparse.PP2_BITFIELD_CLIENT_CERT_SESS
			}
			if len(cs.VerifiedChains) == 0 {
				ssl.Verify = 1 // presented, not verified (client_auth that does not verify)
			}
			if leaf.Subject.CommonName != "" {
				ssl.TLV = append(ssl.TLV, proxyproto.TLV{Type: proxyproto.PP2_SUBTYPE_SSL_CN, Value: []byte(leaf.Subject.CommonName)})
			}
			sum := sha256.Sum256(leaf.Raw)
			tlvs = append(tlvs, proxyproto.TLV{Type: TLVClientCertSHA256, Value: sum[:]})
			for _, u := range leaf.URIs {
				tlvs = append(tlvs, proxyproto.TLV{Type: TLVClientCertURI, Value: []byte(u.String())})
			}
		}
		t, err := ssl.Marshal()
		if err != nil {
			return nil, err
		}
		tlvs = append(tlvs, t)
	}
	if err := h.SetTLVs(tlvs); err != nil {
		return nil, err
	}
	return h.Format()
}

func tlsVersion(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "TLSv1.3"
	case tls.VersionTLS12:
		return "TLSv1.2"
	}
	return tls.VersionName(v)
}
