package binding

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/internal/clip"
)

// Metrics counts the middleware's refusals. Create one with NewMetrics and share it.
type Metrics struct {
	refused *prometheus.CounterVec
}

// NewMetrics registers guardian_binding_refused_total{check,reason} on reg (nil: none).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{refused: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "guardian_binding_refused_total",
		Help: "Requests refused by binding checks, by check (sni_host, session, token) and reason.",
	}, []string{"check", "reason"})}
	if reg != nil {
		if err := reg.Register(m.refused); err != nil {
			return nil, fmt.Errorf("binding: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *Metrics) refuse(check, reason string) {
	if m != nil {
		m.refused.WithLabelValues(check, reason).Inc()
	}
}

// SNIHostGuard answers 421 Misdirected Request (RFC 9110 15.5.20) when the request's Host,
// port stripped and case-folded, is not the SNI of the TLS conn it came on. A conn without
// SNI — a client that dialled an IP address, where RFC 6066 forbids SNI — may only address an
// IP literal. So a client cannot handshake with an audience that asks for no certificate
// and then address an mTLS audience, by Host or over a coalesced HTTP/2 conn. Requests
// without TLS are refused too.
func SNIHostGuard(next http.Handler, m *Metrics, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			misdirected(w, m, "no_tls")
			return
		}
		host, ok := canonicalHost(r.Host)
		if !ok {
			// A port that is not a number, brackets around a name: the upstream or a framework
			// behind it (X-Forwarded-Host) may read another host out of it.
			m.refuse("sni_host", "bad_host")
			log.Warn("request with a malformed Host", "host", clip.String(r.Host, 100), "remote", r.RemoteAddr)
			http.Error(w, "bad request: malformed Host", http.StatusBadRequest)
			return
		}
		sni := strings.ToLower(strings.TrimSuffix(r.TLS.ServerName, "."))
		if sni == "" {
			if net.ParseIP(host) != nil {
				next.ServeHTTP(w, r)
				return
			}
		} else if host == sni {
			next.ServeHTTP(w, r)
			return
		}
		log.Warn("request for another host than the conn's SNI", "sni", sni, "host", clip.String(host, 100), "remote", r.RemoteAddr)
		misdirected(w, m, "mismatch")
	})
}

func misdirected(w http.ResponseWriter, m *Metrics, reason string) {
	m.refuse("sni_host", reason)
	w.Header().Set("Connection", "close")
	http.Error(w, "misdirected request: this connection does not serve that host", http.StatusMisdirectedRequest)
}

// canonicalHost parses a Host strictly — a name of letters, digits, '-', '_' and '.', an
// IPv4 address, or an IPv6 address in brackets, then optionally ':' and a port number — and
// returns it without the port and brackets, case-folded; ok is false for anything else.
func canonicalHost(h string) (string, bool) {
	host, port := h, ""
	if strings.HasPrefix(h, "[") {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return "", false
		}
		host, port = h[1:end], h[end+1:]
		if ip := net.ParseIP(host); ip == nil || ip.To4() != nil {
			return "", false
		}
	} else if i := strings.LastIndexByte(h, ':'); i >= 0 {
		host, port = h[:i], h[i:]
		if !isHostName(host) {
			return "", false
		}
	} else if !isHostName(host) {
		return "", false
	}
	if port != "" {
		p := strings.TrimPrefix(port, ":")
		if p == port || len(p) > 5 || strings.Trim(p, "0123456789") != "" {
			return "", false
		}
		if n, _ := strconv.Atoi(p); n > 65535 {
			return "", false
		}
	}
	return strings.ToLower(strings.TrimSuffix(host, ".")), true
}

func isHostName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_') {
			return false
		}
	}
	return true
}

// unauthorized is the one answer every failed session or token check gets.
func unauthorized(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusUnauthorized)
	w.Write([]byte(`{"message":"unauthorized"}` + "\n"))
}

// leafOf returns the client certificate's DER, or nil.
func leafOf(r *http.Request) []byte {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil
	}
	return r.TLS.PeerCertificates[0].Raw
}

func thumbprint(der []byte) [32]byte { return sha256.Sum256(der) }
