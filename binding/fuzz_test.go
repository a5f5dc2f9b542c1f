package binding_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/guardian-mtls/guardian/binding"
	"github.com/guardian-mtls/guardian/pkitest"
)

func fuzzLeaf(f *testing.F) *x509.Certificate {
	ca, err := pkitest.New("fuzz")
	if err != nil {
		f.Fatal(err)
	}
	l, err := ca.Issue(pkitest.Opts{CommonName: "leaf"})
	if err != nil {
		f.Fatal(err)
	}
	return l.Cert
}

// FuzzTokens: any Authorization header gets 401 or, never, a pass without a valid token;
// never a panic.
func FuzzTokens(f *testing.F) {
	leaf := fuzzLeaf(f)
	secret := []byte("0123456789abcdef0123456789abcdef")
	h, err := (&binding.Tokens{Issuer: "i", Audience: "a", Algorithms: []string{"HS256", "ES256"}, Keys: []any{secret}}).
		Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(299) }))
	if err != nil {
		f.Fatal(err)
	}
	f.Add("Bearer eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJpIn0.sig")
	f.Add("Bearer a.b.c")
	f.Add("bearer ")
	f.Fuzz(func(t *testing.T, auth string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}
		r.Header.Set("Authorization", auth)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 401 {
			t.Fatalf("Authorization %q got %d; nothing but a token signed with the secret passes", auth, w.Code)
		}
	})
}

// FuzzSessionCookie: any Cookie header is refused or handed on; never a panic, and a bound
// cookie name never reaches the handler with a value that was not bound by the key.
func FuzzSessionCookie(f *testing.F) {
	leaf := fuzzLeaf(f)
	h, err := (&binding.Sessions{Cookies: []string{"session"}, Keys: [][]byte{[]byte("0123456789abcdef0123456789abcdef")}, Audience: "a"}).
		Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if c, err := r.Cookie("session"); err == nil && c.Value != "" {
				w.WriteHeader(299)
			}
		}))
	if err != nil {
		f.Fatal(err)
	}
	f.Add("session=g2.YQAAAA; theme=dark")
	f.Add("session=x")
	f.Add("a=b")
	f.Fuzz(func(t *testing.T, cookie string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}
		r.Header.Set("Cookie", cookie)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code == 299 {
			t.Fatalf("Cookie %q reached the handler with a session the key never bound", cookie)
		}
	})
}

// FuzzParseKey: any key file is a key or an error.
func FuzzParseKey(f *testing.F) {
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))
	f.Add([]byte("0123456789abcdef0123456789abcdef"))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := binding.ParseKey(b)
		if err == nil && k == nil {
			t.Fatal("no key and no error")
		}
	})
}
