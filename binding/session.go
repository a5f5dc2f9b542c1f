package binding

import (
	"bufio"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"

	"golang.org/x/crypto/chacha20poly1305"
)

// Sessions binds session cookies to the client certificate of the conn they are set on.
// The handler it wraps (an application, or a reverse proxy to one) sets its cookies as it
// always does; Sessions seals each named cookie's value with an AEAD (XChaCha20-Poly1305)
// whose additional data is the audience, the cookie's name and the SHA-256 of the conn's
// client certificate, and forces HttpOnly, Secure and SameSite=Strict. A stolen cookie
// reveals nothing of the upstream's session ID.
//
// On each request Sessions parses every Cookie field itself. Any pair whose name an
// upstream could read as a bound cookie's (see canonicalName) must open for this conn's
// certificate and audience, else 401, whatever else the header holds; too many pairs is
// 400, too many bytes 431. The handler then gets a Cookie header rebuilt from the pairs
// checked, bound values opened: the client's header never passes through. Nothing is
// stored: nodes of a fleet that share Keys accept each other's sessions.
type Sessions struct {
	// Cookies names the cookies to bind, e.g. "session".
	Cookies []string
	// Keys seal and open the bound values, each at least 32 bytes: the first seals, every
	// one opens. To rotate across a fleet, add the new key last everywhere, then move it
	// first everywhere, then drop the old one.
	Keys [][]byte
	// Audience is bound into every cookie, so a cookie is good on one audience only.
	Audience string
	// MaxCookies and MaxCookieBytes bound the parse; 0 means DefaultMaxCookies and
	// DefaultMaxCookieBytes.
	MaxCookies     int
	MaxCookieBytes int
	Metrics        *Metrics
	// Logger gets one line per refusal, rate-limited by the caller if clients can cause
	// many (guardian serve does).
	Logger *slog.Logger
}

// sealedPrefix marks a bound value: "g2." + base64url(nonce ‖ ciphertext).
const sealedPrefix = "g2."

// ErrShortKey is returned by Wrap for a key shorter than 32 bytes.
var ErrShortKey = errors.New("binding: session key shorter than 32 bytes")

// sessions is a Sessions ready to serve.
type sessions struct {
	*Sessions
	aeads  []cipher.AEAD
	names  map[string]string // canonicalName → the configured name
	log    *slog.Logger
	max    int
	maxLen int
}

// Wrap returns the binding middleware around next.
func (s *Sessions) Wrap(next http.Handler) (http.Handler, error) {
	if len(s.Keys) == 0 {
		return nil, errors.New("binding: no session key")
	}
	if len(s.Cookies) == 0 {
		return nil, errors.New("binding: no session cookies named")
	}
	ss := &sessions{Sessions: s, names: map[string]string{}, log: s.Logger, max: s.MaxCookies, maxLen: s.MaxCookieBytes}
	for i, k := range s.Keys {
		if len(k) < 32 {
			return nil, fmt.Errorf("%w (key %d)", ErrShortKey, i+1)
		}
		// The configured secret may be a passphrase; the AEAD key is derived from it.
		dk, err := hkdf.Key(sha256.New, k, nil, "guardian session binding v2", chacha20poly1305.KeySize)
		if err != nil {
			return nil, fmt.Errorf("binding: derive session key: %w", err)
		}
		a, err := chacha20poly1305.NewX(dk)
		if err != nil {
			return nil, fmt.Errorf("binding: session key: %w", err)
		}
		ss.aeads = append(ss.aeads, a)
	}
	for _, n := range s.Cookies {
		if !isToken(n) {
			return nil, fmt.Errorf("binding: %q is not a cookie name", n)
		}
		if o, dup := ss.names[canonicalName(n)]; dup {
			return nil, fmt.Errorf("binding: cookie names %q and %q read as one by common upstream parsers", o, n)
		}
		ss.names[canonicalName(n)] = n
	}
	if ss.max <= 0 {
		ss.max = DefaultMaxCookies
	}
	if ss.maxLen <= 0 {
		ss.maxLen = DefaultMaxCookieBytes
	}
	if ss.log == nil {
		ss.log = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := identity(r)
		pairs, err := splitCookies(r.Header["Cookie"], ss.max, ss.maxLen)
		switch {
		case errors.Is(err, errTooManyCookies):
			ss.refuse(r, "too_many_cookies")
			http.Error(w, "too many cookies", http.StatusBadRequest)
			return
		case errors.Is(err, errCookiesTooLarge):
			ss.refuse(r, "cookies_too_large")
			http.Error(w, "cookies too large", http.StatusRequestHeaderFieldsTooLarge)
			return
		}
		if reason := ss.open(pairs, id); reason != "" {
			ss.refuse(r, reason)
			unauthorized(w)
			return
		}
		delete(r.Header, "Cookie")
		if len(pairs) > 0 {
			parts := make([]string, len(pairs))
			for i, p := range pairs {
				parts[i] = p.String()
			}
			r.Header["Cookie"] = []string{strings.Join(parts, "; ")}
		}
		cw := &cookieWriter{ResponseWriter: w, s: ss, id: id, r: r}
		next.ServeHTTP(cw, r)
		// A handler that wrote nothing leaves the headers to the server, which writes them
		// after this returns: they are rewritten here first.
		cw.rewrite()
	}), nil
}

func (s *sessions) refuse(r *http.Request, reason string) {
	s.Metrics.refuse("session", reason)
	s.log.Warn("session cookie refused", "check", "session", "reason", reason, "audience", s.Audience, "remote", r.RemoteAddr)
}

// identity is the hex SHA-256 of the conn's client certificate, or "" without one.
func identity(r *http.Request) string {
	leaf := leafOf(r)
	if leaf == nil {
		return ""
	}
	h := thumbprint(leaf)
	return hex.EncodeToString(h[:])
}

// boundName returns the configured name that an upstream could read name as, if any.
func (s *sessions) boundName(name string) (string, bool) {
	for _, c := range canonicalNames(name) {
		if n, ok := s.names[c]; ok {
			return n, true
		}
	}
	return "", false
}

// open checks every pair an upstream could read as a bound cookie and replaces each bound
// value with the upstream's own; it returns why the request is refused, or "".
func (s *sessions) open(pairs []cookiePair, id string) string {
	for i := range pairs {
		p := &pairs[i]
		reason := ""
		nameCandidates(*p, func(name string, hidden bool) bool {
			bound, ok := s.boundName(name)
			switch {
			case !ok:
				return true
			case hidden:
				reason = "hidden_name" // a bound name inside another pair's value
			case id == "":
				reason = "no_client_certificate"
			case !isToken(p.name) || !strings.EqualFold(p.name, bound):
				reason = "name_variant" // quoted, escaped, encoded: never what guardian set
			case !p.eq:
				reason = "malformed"
			default:
				v, r := s.unseal(bound, p.value, id)
				if r != "" {
					reason = r
				} else {
					p.value = v
				}
			}
			return reason == ""
		})
		if reason != "" {
			return reason
		}
	}
	return ""
}

func (s *sessions) aad(name, id string) []byte {
	return []byte(strings.Join([]string{"guardian-session-v2", s.Audience, name, id}, "\x00"))
}

func (s *sessions) seal(name, value, id string) (string, error) {
	a := s.aeads[0]
	nonce := make([]byte, a.NonceSize(), a.NonceSize()+len(value)+a.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	return sealedPrefix + base64.RawURLEncoding.EncodeToString(a.Seal(nonce, nonce, []byte(value), s.aad(name, id))), nil
}

func (s *sessions) unseal(name, sealed, id string) (string, string) {
	b64, ok := strings.CutPrefix(sealed, sealedPrefix)
	if !ok {
		return "", "unbound"
	}
	raw, err := base64.RawURLEncoding.DecodeString(b64)
	if err != nil || len(raw) < chacha20poly1305.NonceSizeX {
		return "", "malformed"
	}
	nonce, ct := raw[:chacha20poly1305.NonceSizeX], raw[chacha20poly1305.NonceSizeX:]
	for _, a := range s.aeads {
		if v, err := a.Open(nil, nonce, ct, s.aad(name, id)); err == nil {
			return string(v), ""
		}
	}
	return "", "mismatch" // another certificate, audience or key
}

// cookieWriter seals the bound cookies among the response's Set-Cookie headers as the
// headers are written.
type cookieWriter struct {
	http.ResponseWriter
	s    *sessions
	id   string
	r    *http.Request
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
		bound, ok := w.s.boundName(setCookieName(line))
		if !ok {
			out = append(out, line)
			continue
		}
		c, err := http.ParseSetCookie(line)
		switch {
		case err != nil:
			// Never passed on unbound: a browser might read it as the session.
			w.s.Metrics.refuse("session", "unparsable_set_cookie")
			w.s.log.Warn("session cookie from the handler dropped: unparsable Set-Cookie", "audience", w.s.Audience, "err", err)
			continue
		case c.Value != "" && w.id == "":
			w.s.Metrics.refuse("session", "set_without_certificate")
			w.s.log.Warn("session cookie from the handler dropped: the conn has no client certificate to bind it to", "audience", w.s.Audience, "remote", w.r.RemoteAddr)
			continue
		case c.Value != "": // an empty value deletes the cookie: nothing to bind
			v, err := w.s.seal(bound, c.Value, w.id)
			if err != nil {
				w.s.log.Error("session cookie from the handler dropped: sealing failed", "audience", w.s.Audience, "err", err)
				continue
			}
			c.Value = v
		}
		c.HttpOnly, c.Secure, c.SameSite = true, true, http.SameSiteStrictMode
		out = append(out, c.String())
	}
	h["Set-Cookie"] = out
}

// setCookieName is a Set-Cookie line's name as a lenient parser reads it: up to the first
// '=' or ';', so a line http.ParseSetCookie refuses is still recognised.
func setCookieName(line string) string {
	name, _, _ := strings.Cut(line, "=")
	name, _, _ = strings.Cut(name, ";")
	return name
}

func (w *cookieWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.rewrite()
		w.ResponseWriter.WriteHeader(code)
		return
	}
	// An informational response (103 Early Hints) goes out with the header map as it is now,
	// which stays for the final response: the bound cookies are held back from it, never
	// sent unsealed, and sealed with the final response.
	h := w.ResponseWriter.Header()
	all := h["Set-Cookie"]
	var kept []string
	for _, line := range all {
		if _, bound := w.s.boundName(setCookieName(line)); !bound {
			kept = append(kept, line)
		}
	}
	if len(kept) != len(all) {
		h["Set-Cookie"] = kept
		defer func() { h["Set-Cookie"] = all }()
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
