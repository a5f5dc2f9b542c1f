package binding

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"

	"github.com/guardian-mtls/guardian/revoke"
)

// Sessions binds session cookies to the client certificate of the conn they are set on.
// The handler it wraps (an application, or a reverse proxy to one) sets its cookies as it
// always does; Sessions rewrites each named cookie's value into value + an HMAC over the
// value, the audience and the conn's serial key, and forces HttpOnly, Secure and
// SameSite=Strict. On each request it checks the HMAC against the conn the request came on
// and hands the handler the original value. A cookie replayed with another certificate,
// with none, or on another audience gets 401, and is counted. Nothing is stored: nodes of a
// fleet that share Key accept each other's sessions.
type Sessions struct {
	// Cookies names the cookies to bind, e.g. "session".
	Cookies []string
	// Key is the HMAC key, at least 32 bytes.
	Key []byte
	// Audience is bound into every cookie, so a cookie is good on one audience only.
	Audience string
	Metrics  *Metrics
	Logger   *slog.Logger
}

// cookiePrefix marks a bound value: "g1." + base64url(value) + "." + base64url(HMAC).
const cookiePrefix = "g1."

// ErrShortKey is returned by Wrap for a key shorter than 32 bytes.
var ErrShortKey = errors.New("binding: session key shorter than 32 bytes")

// Wrap returns the binding middleware around next.
func (s *Sessions) Wrap(next http.Handler) (http.Handler, error) {
	if len(s.Key) < 32 {
		return nil, ErrShortKey
	}
	if len(s.Cookies) == 0 {
		return nil, errors.New("binding: no session cookies named")
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := identity(r)
		if ok, reason := s.unwrapRequest(r, id); !ok {
			s.Metrics.refuse("session", reason)
			log.Warn("session cookie refused", "check", "session", "reason", reason, "audience", s.Audience, "remote", r.RemoteAddr)
			unauthorized(w)
			return
		}
		next.ServeHTTP(&cookieWriter{ResponseWriter: w, s: s, id: id}, r)
	}), nil
}

// identity is the serial key of the conn's client certificate, or "" without one.
func identity(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return ""
	}
	k, _ := revoke.KeyFor(r.TLS.PeerCertificates[0], revoke.KindSerial)
	return string(k)
}

func (s *Sessions) mac(name, value, id string) []byte {
	h := hmac.New(sha256.New, s.Key)
	for _, part := range []string{"guardian-session-v1", s.Audience, name, value, id} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return h.Sum(nil)
}

func (s *Sessions) bind(name, value, id string) string {
	return cookiePrefix + base64.RawURLEncoding.EncodeToString([]byte(value)) + "." +
		base64.RawURLEncoding.EncodeToString(s.mac(name, value, id))
}

func (s *Sessions) unbind(name, bound, id string) (string, string) {
	rest, ok := strings.CutPrefix(bound, cookiePrefix)
	if !ok {
		return "", "unbound"
	}
	v64, m64, ok := strings.Cut(rest, ".")
	value, err1 := base64.RawURLEncoding.DecodeString(v64)
	mac, err2 := base64.RawURLEncoding.DecodeString(m64)
	if !ok || err1 != nil || err2 != nil {
		return "", "malformed"
	}
	if !hmac.Equal(mac, s.mac(name, string(value), id)) {
		return "", "mismatch"
	}
	return string(value), ""
}

// unwrapRequest checks every bound cookie of r and replaces its value with the original.
func (s *Sessions) unwrapRequest(r *http.Request, id string) (bool, string) {
	cookies := r.Cookies()
	changed := false
	for _, c := range cookies {
		if !slices.Contains(s.Cookies, c.Name) {
			continue
		}
		v, reason := s.unbind(c.Name, c.Value, id)
		if reason != "" {
			return false, reason
		}
		c.Value, changed = v, true
	}
	if changed {
		parts := make([]string, len(cookies))
		for i, c := range cookies {
			parts[i] = c.Name + "=" + c.Value
		}
		r.Header.Set("Cookie", strings.Join(parts, "; "))
	}
	return true, ""
}

// cookieWriter binds the named cookies among the response's Set-Cookie headers as the
// headers are written.
type cookieWriter struct {
	http.ResponseWriter
	s    *Sessions
	id   string
	done bool
}

func (w *cookieWriter) rewrite() {
	if w.done {
		return
	}
	w.done = true
	h := w.ResponseWriter.Header()
	set := h.Values("Set-Cookie")
	if len(set) == 0 {
		return
	}
	out := make([]string, 0, len(set))
	for _, line := range set {
		c, err := http.ParseSetCookie(line)
		if err != nil || !slices.Contains(w.s.Cookies, c.Name) {
			out = append(out, line)
			continue
		}
		if c.Value != "" { // an empty value deletes the cookie: nothing to bind
			c.Value = w.s.bind(c.Name, c.Value, w.id)
		}
		c.HttpOnly, c.Secure, c.SameSite = true, true, http.SameSiteStrictMode
		out = append(out, c.String())
	}
	h["Set-Cookie"] = out
}

func (w *cookieWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.rewrite()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *cookieWriter) Write(b []byte) (int, error) {
	w.rewrite()
	return w.ResponseWriter.Write(b)
}

// Flush lets streaming responses through (httputil.ReverseProxy flushes).
func (w *cookieWriter) Flush() {
	w.rewrite()
	http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack lets WebSocket upgrades through.
func (w *cookieWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.rewrite()
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// Unwrap is for http.ResponseController.
func (w *cookieWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
