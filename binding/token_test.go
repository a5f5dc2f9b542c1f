package binding_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/binding"
	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/pkitest"
)

func x5t(l *pkitest.Leaf) string {
	h := sha256.Sum256(l.Cert.Raw)
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// Only a token signed with an allowed algorithm and key, for this issuer and audience,
// current, and bound to the conn's own certificate gets through; every other gets the same
// 401, with the reason counted.
func TestTokenBinding(t *testing.T) {
	ca := pkitest.NewCA(t)
	a, b := ca.MustIssue(t, pkitest.Opts{CommonName: "a"}), ca.MustIssue(t, pkitest.Opts{CommonName: "b"})
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&signer.PublicKey)
	pub, err := binding.ParseKey(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m, _ := binding.NewMetrics(reg)
	h, err := (&binding.Tokens{Issuer: "nexus", Audience: "api", Algorithms: []string{"ES256"}, Keys: []any{pub}, Metrics: m}).
		Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	if err != nil {
		t.Fatal(err)
	}
	srv := tlsServer(t, ca, h)
	now := time.Now()
	claims := func(edit func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{"iss": "nexus", "aud": "api", "sub": "svc-a", "exp": now.Add(time.Hour).Unix(), "nbf": now.Add(-time.Minute).Unix(),
			"cnf": map[string]any{"x5t#S256": x5t(a)}}
		if edit != nil {
			edit(c)
		}
		return c
	}
	es := func(c jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(jwt.SigningMethodES256, c).SignedString(signer)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged, _ := jwt.NewWithClaims(jwt.SigningMethodES256, claims(nil)).SignedString(other)
	// Algorithm confusion: HS256 keyed with the public key's bytes.
	confused, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(nil)).SignedString(der)
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claims(nil)).SignedString(jwt.UnsafeAllowNoneSignatureType)

	call := func(leaf *pkitest.Leaf, auth string) int {
		req, _ := http.NewRequest("GET", "https://app.test/", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := clientFor(t, ca, srv, leaf).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 401 && string(body) != `{"message":"unauthorized"}`+"\n" {
			t.Errorf("401 body %q; want the generic one", body)
		}
		return resp.StatusCode
	}
	if code := call(a, "Bearer "+es(claims(nil))); code != 200 {
		t.Fatalf("a good bound token: %d", code)
	}
	for _, c := range []struct {
		name, reason string
		leaf         *pkitest.Leaf
		auth         string
	}{
		{"another certificate", "other_certificate", b, "Bearer " + es(claims(nil))},
		{"no certificate", "no_client_certificate", nil, "Bearer " + es(claims(nil))},
		{"unbound", "unbound", a, "Bearer " + es(claims(func(c jwt.MapClaims) { delete(c, "cnf") }))},
		{"expired", "expired", a, "Bearer " + es(claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Hour).Unix() }))},
		{"no exp", "missing_claim", a, "Bearer " + es(claims(func(c jwt.MapClaims) { delete(c, "exp") }))},
		{"not yet valid", "not_yet_valid", a, "Bearer " + es(claims(func(c jwt.MapClaims) { c["nbf"] = now.Add(time.Hour).Unix() }))},
		{"another issuer", "issuer", a, "Bearer " + es(claims(func(c jwt.MapClaims) { c["iss"] = "evil" }))},
		{"another audience", "audience", a, "Bearer " + es(claims(func(c jwt.MapClaims) { c["aud"] = "admin" }))},
		{"another signer", "signature", a, "Bearer " + forged},
		{"HS256 with the public key", "signature", a, "Bearer " + confused},
		{"alg none", "signature", a, "Bearer " + none},
		{"garbage", "malformed", a, "Bearer not.a.jwt"},
		{"no token", "no_token", a, ""},
		{"basic auth", "no_token", a, "Basic dXNlcjpwYXNz"},
	} {
		before := metrictest.Value(t, reg, "guardian_binding_refused_total", "check", "token", "reason", c.reason)
		if code := call(c.leaf, c.auth); code != 401 {
			t.Errorf("%s: %d; want 401", c.name, code)
			continue
		}
		if v := metrictest.Value(t, reg, "guardian_binding_refused_total", "check", "token", "reason", c.reason); v != before+1 {
			t.Errorf("%s: reason %s counted %v times; want %v", c.name, c.reason, v, before+1)
		}
	}
	// A small skew is forgiven.
	if code := call(a, "Bearer "+es(claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-10 * time.Second).Unix() }))); code != 200 {
		t.Errorf("expired 10s ago, within the leeway: %d; want 200", code)
	}
	for _, bad := range []binding.Tokens{
		{Issuer: "i", Audience: "a", Keys: []any{pub}},
		{Issuer: "i", Audience: "a", Algorithms: []string{"none"}, Keys: []any{pub}},
		{Issuer: "i", Audience: "a", Algorithms: []string{"ES256"}},
	} {
		if _, err := bad.Wrap(http.NotFoundHandler()); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if _, err := binding.ParseKey([]byte("short secret")); err == nil {
		t.Error("a short HMAC secret accepted")
	}
	k, _ := x509.MarshalPKCS8PrivateKey(signer)
	if _, err := binding.ParseKey(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: k})); err == nil {
		t.Error("a private key accepted as a verification key")
	}
}
