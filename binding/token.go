package binding

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/guardian-mtls/guardian/clock"
)

// Tokens accepts a request only with a JWT bearer token (RFC 6750) bound to the conn's
// client certificate as RFC 8705 section 3 says: its cnf claim's x5t#S256 is the base64url
// SHA-256 of the certificate's DER. The signature algorithm must be one of Algorithms and
// verify with one of Keys; iss, aud, exp (required) and nbf are checked with Leeway. Every
// failure gets the same 401 {"message":"unauthorized"}; the reason goes to logs and
// metrics, the token nowhere.
type Tokens struct {
	Issuer   string
	Audience string
	// Algorithms is the allow-list, e.g. ES256; never empty. "none" is never accepted.
	Algorithms []string
	// Keys verify signatures: []byte HMAC secrets (HS*), *ecdsa.PublicKey (ES*),
	// *rsa.PublicKey (RS*, PS*), ed25519.PublicKey (EdDSA). ParseKey reads them from files.
	Keys []any
	// Leeway absorbs clock skew in exp and nbf; 0 means 30s.
	Leeway time.Duration
	// Clock is the time source for exp and nbf; nil means the real clock.
	Clock   clock.Clock
	Metrics *Metrics
	Logger  *slog.Logger
}

// maxTokenBytes bounds a bearer token; longer ones are refused unparsed.
const maxTokenBytes = 16 << 10

// Wrap returns the token check around next.
func (t *Tokens) Wrap(next http.Handler) (http.Handler, error) {
	if len(t.Algorithms) == 0 {
		return nil, errors.New("binding: token binding needs an algorithm allow-list")
	}
	for _, a := range t.Algorithms {
		if jwt.GetSigningMethod(a) == nil || strings.EqualFold(a, "none") {
			return nil, fmt.Errorf("binding: unknown or unsafe JWT algorithm %q", a)
		}
	}
	if len(t.Keys) == 0 {
		return nil, errors.New("binding: token binding needs at least one key")
	}
	if t.Issuer == "" || t.Audience == "" {
		return nil, errors.New("binding: token binding needs an issuer and an audience")
	}
	leeway := t.Leeway
	if leeway == 0 {
		leeway = 30 * time.Second
	}
	now := clock.Or(t.Clock).Now
	log := t.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	parser := jwt.NewParser(jwt.WithValidMethods(t.Algorithms), jwt.WithIssuer(t.Issuer), jwt.WithAudience(t.Audience),
		jwt.WithLeeway(leeway), jwt.WithExpirationRequired(), jwt.WithTimeFunc(now))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if reason := t.check(parser, r); reason != "" {
			t.Metrics.refuse("token", reason)
			log.Warn("bound token refused", "check", "token", "reason", reason, "audience", t.Audience, "remote", r.RemoteAddr)
			unauthorized(w)
			return
		}
		next.ServeHTTP(w, r)
	}), nil
}

// check returns why r's token is refused, or "".
func (t *Tokens) check(parser *jwt.Parser, r *http.Request) string {
	leaf := leafOf(r)
	if leaf == nil {
		return "no_client_certificate"
	}
	tok, reason := bearer(r.Header["Authorization"])
	if reason != "" {
		return reason
	}
	if reason := otherTokens(r); reason != "" {
		return reason
	}
	claims := jwt.MapClaims{}
	_, err := parser.ParseWithClaims(tok, claims, func(tk *jwt.Token) (any, error) {
		set := jwt.VerificationKeySet{}
		for _, k := range t.Keys {
			if keyFits(tk.Method, k) {
				set.Keys = append(set.Keys, k)
			}
		}
		if len(set.Keys) == 0 {
			return nil, errors.New("no key for this algorithm")
		}
		return set, nil
	})
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "not_yet_valid"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "issuer"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "audience"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable):
		return "signature"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "missing_claim"
	case err != nil:
		return "malformed"
	}
	cnf, _ := claims["cnf"].(map[string]any)
	x5t, _ := cnf["x5t#S256"].(string)
	if x5t == "" {
		return "unbound"
	}
	h := thumbprint(leaf)
	want := base64.RawURLEncoding.EncodeToString(h[:])
	if subtle.ConstantTimeCompare([]byte(x5t), []byte(want)) != 1 {
		return "other_certificate"
	}
	// The upstream gets exactly the token checked, in one field.
	r.Header["Authorization"] = []string{"Bearer " + tok}
	return ""
}

// maxFormBytes bounds a form body read for an access_token parameter.
const maxFormBytes = 1 << 20

// otherTokens refuses a request that carries a token where RFC 6750 sections 2.2 and 2.3
// also allow one — an access_token query or form parameter, in any spelling a parser could
// read as that name: guardian checks the Authorization header, and an upstream that took
// the other would skip the binding. A form body is read (up to maxFormBytes, else refused)
// and put back.
func otherTokens(r *http.Request) string {
	if hasAccessToken(r.URL.RawQuery) {
		return "token_in_query"
	}
	ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";")
	if !strings.EqualFold(strings.TrimSpace(ct), "application/x-www-form-urlencoded") || r.Body == nil || r.Body == http.NoBody {
		return ""
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxFormBytes+1))
	if err != nil {
		return "body_unreadable"
	}
	if len(b) > maxFormBytes {
		return "form_too_large"
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	if hasAccessToken(string(b)) {
		return "token_in_form"
	}
	return ""
}

// hasAccessToken reports whether a query or form string has a parameter that some parser
// reads as access_token (split at '&' and ';', percent- and '+'-decoded, PHP's '.' and '['
// rules, case-folded).
func hasAccessToken(q string) bool {
	for part := range strings.FieldsFuncSeq(q, func(r rune) bool { return r == '&' || r == ';' }) {
		name, _, _ := strings.Cut(part, "=")
		if slices.Contains(canonicalNames(strings.ReplaceAll(name, "+", " ")), "access_token") {
			return true
		}
	}
	return false
}

// bearer returns the one bearer token of a request's Authorization fields: exactly one
// field, "Bearer", one space, and an RFC 6750 b64token. Anything else — two fields (the
// upstream would see both), a list, white space, a second token — is refused.
func bearer(fields []string) (string, string) {
	switch {
	case len(fields) == 0:
		return "", "no_token"
	case len(fields) > 1:
		return "", "several_authorization"
	}
	scheme, tok, ok := strings.Cut(fields[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return "", "no_token"
	}
	if len(tok) > maxTokenBytes {
		return "", "too_large"
	}
	if !isB64Token(tok) {
		return "", "malformed"
	}
	return tok, ""
}

// isB64Token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=" (RFC 6750 2.1).
func isB64Token(s string) bool {
	i := 0
	for i < len(s) {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~+/", c) >= 0) {
			break
		}
		i++
	}
	if i == 0 {
		return false
	}
	for ; i < len(s); i++ {
		if s[i] != '=' {
			return false
		}
	}
	return true
}

func keyFits(m jwt.SigningMethod, k any) bool {
	switch m.(type) {
	case *jwt.SigningMethodHMAC:
		_, ok := k.([]byte)
		return ok
	case *jwt.SigningMethodECDSA:
		_, ok := k.(*ecdsa.PublicKey)
		return ok
	case *jwt.SigningMethodRSA, *jwt.SigningMethodRSAPSS:
		_, ok := k.(*rsa.PublicKey)
		return ok
	case *jwt.SigningMethodEd25519:
		_, ok := k.(ed25519.PublicKey)
		return ok
	}
	return false
}

// ParseKey reads a token-verification key: a PEM public key or certificate (its key), or,
// without PEM, an HMAC secret of at least 32 bytes (surrounding white space removed).
func ParseKey(b []byte) (any, error) {
	if blk, _ := pem.Decode(b); blk != nil {
		switch blk.Type {
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("binding: public key: %w", err)
			}
			return k, nil
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("binding: certificate: %w", err)
			}
			return c.PublicKey, nil
		}
		return nil, fmt.Errorf("binding: PEM block %q is not a public key or certificate (a private key never belongs here)", blk.Type)
	}
	secret := []byte(strings.TrimSpace(string(b)))
	if len(secret) < 32 {
		return nil, errors.New("binding: an HMAC secret must be at least 32 bytes")
	}
	return secret, nil
}

// KeyVerifies reports whether key could verify a token signed with alg: the key's type
// and, for ECDSA, its curve fit the algorithm.
func KeyVerifies(alg string, key any) bool {
	m := jwt.GetSigningMethod(alg)
	if m == nil || !keyFits(m, key) {
		return false
	}
	if ec, ok := m.(*jwt.SigningMethodECDSA); ok {
		return key.(*ecdsa.PublicKey).Curve.Params().BitSize == ec.CurveBits
	}
	return true
}
