package listener

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/pires/go-proxyproto"
)

// ProxyProtocolConfig says which peers are load balancers speaking the PROXY protocol.
type ProxyProtocolConfig struct {
	// Trusted are the load balancers' addresses. A conn from one of them must open with a
	// PROXY header (v1 or v2); a conn from anywhere else that sends one is refused: a
	// header is never taken as the client's address from a peer not trusted to set it.
	Trusted []netip.Prefix
	// Optional lets a trusted peer's conn come without a header (a health check); it is
	// then served with the peer's own address.
	Optional bool
	// Timeout bounds the wait for the header; 0 means 5s.
	Timeout time.Duration
}

// ProxyProtocol wraps inner for New: behind a load balancer that sends the PROXY protocol
// (HAProxy's send-proxy-v2, AWS NLB, …), each conn's RemoteAddr is the client's address from
// the header — in logs, per-client bounds, Conns, evictions and, through net/http, in
// X-Forwarded-For. The header is read before the TLS handshake, in the handshake's
// goroutine and under its timeout; a missing, malformed or untrusted header fails that
// conn's handshake only (reasons proxy_header_missing, proxy_header_untrusted,
// proxy_header_bad).
func ProxyProtocol(inner net.Listener, cfg ProxyProtocolConfig) (net.Listener, error) {
	if len(cfg.Trusted) == 0 {
		return nil, errors.New("listener: the PROXY protocol needs at least one trusted source")
	}
	ranges := make([]string, len(cfg.Trusted))
	for i, p := range cfg.Trusted {
		ranges[i] = p.Masked().String()
	}
	onTrusted := proxyproto.REQUIRE
	if cfg.Optional {
		onTrusted = proxyproto.USE
	}
	policy, err := proxyproto.PolicyFromRanges(ranges, onTrusted, proxyproto.REJECT)
	if err != nil {
		return nil, fmt.Errorf("listener: PROXY protocol trusted sources: %w", err)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	return &proxyproto.Listener{Listener: inner, ConnPolicy: policy, ReadHeaderTimeout: timeout,
		ValidateHeader: func(h *proxyproto.Header) error {
			// A LOCAL header (the balancer's own health check) carries no client: the
			// peer's address stays. A PROXY header must name a TCP client.
			if h.Command.IsProxy() && !(h.TransportProtocol.IsStream() && (h.TransportProtocol.IsIPv4() || h.TransportProtocol.IsIPv6())) {
				return fmt.Errorf("%w (%v)", errBadProxyHeader, h.TransportProtocol)
			}
			return nil
		}}, nil
}

// errBadProxyHeader is a PROXY header that parses but names no TCP client.
var errBadProxyHeader = errors.New("proxyproto: PROXY header for a client that is not TCP")

// proxyHeaderReason classifies a handshake that failed on its PROXY header, or "".
func proxyHeaderReason(err error) string {
	switch {
	case errors.Is(err, proxyproto.ErrNoProxyProtocol):
		return "proxy_header_missing"
	case errors.Is(err, proxyproto.ErrSuperfluousProxyHeader):
		return "proxy_header_untrusted"
	case strings.Contains(err.Error(), "proxyproto: "):
		// go-proxyproto's errors of a malformed, truncated or oversized header
		return "proxy_header_bad"
	}
	return ""
}
