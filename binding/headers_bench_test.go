package binding

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkHeaders: the identity-header guard on a request with a browser's dozen headers,
// none of them guardian's: its cost on every request.
func BenchmarkHeaders(b *testing.B) {
	h := (&Headers{}).Wrap(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	r := httptest.NewRequest("GET", "https://api.example/", nil)
	r.TLS = &tls.ConnectionState{}
	for _, k := range []string{"Accept", "Accept-Encoding", "Accept-Language", "Cache-Control", "Cookie", "Dnt",
		"Sec-Fetch-Dest", "Sec-Fetch-Mode", "Sec-Fetch-Site", "Upgrade-Insecure-Requests", "User-Agent", "Referer"} {
		r.Header.Set(k, "x")
	}
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, r)
	}
}

// The allocation-free lookup of canonical names agrees with the folded one on every
// spelling.
func TestHeaderSetSpellings(t *testing.T) {
	for _, c := range []struct {
		name string
		want bool
	}{
		{"X-Forwarded-For", true}, {"x-forwarded-for", true}, {"X_Forwarded_For", true}, {"X_forwarded_for", true},
		{"X-Amzn-Mtls-Clientcert-Leaf", true}, {"x-amzn-mtls-clientcert", true}, {"X_Client_Cert_Spiffe", true},
		{"Accept", false}, {"X-Forwarded-Fo", false}, {"Xx-Forwarded-For", false},
	} {
		if got := strippedSet.has(c.name); got != c.want {
			t.Errorf("strippedSet.has(%q) = %v; want %v", c.name, got, c.want)
		}
	}
	if ownedSet.has("X-Client-Cert") || !ownedSet.has("forwarded") {
		t.Error("ownedSet: X-Client-Cert is stripped, not owned; Forwarded is owned")
	}
}
