package binding

import (
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
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
		host := canonicalHost(r.Host)
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
		log.Warn("request for another host than the conn's SNI", "sni", sni, "host", truncate(host, 100), "remote", r.RemoteAddr)
		misdirected(w, m, "mismatch")
	})
}

func misdirected(w http.ResponseWriter, m *Metrics, reason string) {
	m.refuse("sni_host", reason)
	w.Header().Set("Connection", "close")
	http.Error(w, "misdirected request: this connection does not serve that host", http.StatusMisdirectedRequest)
}

// canonicalHost strips the port and brackets and folds case.
func canonicalHost(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	return strings.ToLower(strings.TrimSuffix(h, "."))
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
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
