package binding

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/guardian-mtls/guardian/pkitest"
)

func TestCanonicalName(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"sid", "sid"},
		{" SID ", "sid"},
		{`"sid"`, "sid"},
		{`s\id`, "sid"},
		{`s\151d`, "sid"}, // Python's octal escape
		{"s%69d", "sid"},
		{"s%2569d", "sid"}, // decoded twice
		{"sid[0]", "sid"},  // PHP's array syntax
		{"my.sid", "my_sid"},
		{"my sid", "my_sid"},
		{"sid2", "sid2"},
	} {
		if got := canonicalName(c.in); got != c.want {
			t.Errorf("canonicalName(%q) = %q; want %q", c.in, got, c.want)
		}
	}
}

// PHP's other readings of a name: an unmatched '[' as '_', a space as '_' (in a name with a
// space, which the word split alone would miss), the name cut at NUL.
func TestCanonicalNamesPHP(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"ci[session", "ci_session"},
		{"ci session", "ci_session"},
		{"access%5Btoken", "access_token"},
		{"access_token%00", "access_token"},
		{"sid[0]", "sid"},
	} {
		if got := canonicalNames(c.in); !slices.Contains(got, c.want) {
			t.Errorf("canonicalNames(%q) = %q; want it to hold %q", c.in, got, c.want)
		}
	}
}

func TestSplitCookiesLimits(t *testing.T) {
	if _, err := splitCookies([]string{strings.Repeat("a=1;", 11)}, 10, 1<<20); err != errTooManyCookies {
		t.Errorf("11 pairs at a limit of 10: %v; want errTooManyCookies", err)
	}
	if _, err := splitCookies([]string{"a=1", strings.Repeat("b", 100)}, 10, 100); err != errCookiesTooLarge {
		t.Errorf("104 bytes at a limit of 100: %v; want errCookiesTooLarge", err)
	}
	got, err := splitCookies([]string{" a=1 ;b= 2;;c ", "d=x=y"}, 10, 100)
	want := []cookiePair{{"a", "1", true}, {"b", "2", true}, {"c", "", false}, {"d", "x=y", true}}
	if err != nil || len(got) != len(want) {
		t.Fatalf("splitCookies: %v, %v; want %v", got, err, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("pair %d: %+v; want %+v", i, got[i], want[i])
		}
	}
}

func TestNameCandidates(t *testing.T) {
	var names []string
	nameCandidates(cookiePair{name: "theme", value: `dark sid=1,x="y" ,z`, eq: true}, func(n string, hidden bool) bool {
		if hidden {
			n = "+" + n
		}
		names = append(names, n)
		return true
	})
	if got := strings.Join(names, " "); got != `theme +sid +x +z` {
		t.Errorf("candidates: %s; want theme +sid +x +z", got)
	}
	for _, c := range []struct {
		pair cookiePair
		want string
	}{
		{cookiePair{name: "$x sid", value: "1", eq: true}, "$x sid +$x +sid"},
		{cookiePair{name: "secure\tsid", value: "1", eq: true}, "secure\tsid +secure +sid"},
		{cookiePair{name: "\xa0sid", value: "1", eq: true}, "\xa0sid +sid"},
		{cookiePair{name: "sid", value: "1", eq: true}, "sid"},
		{cookiePair{name: "flag"}, "flag"},
	} {
		names = nil
		nameCandidates(c.pair, func(n string, hidden bool) bool {
			if hidden {
				n = "+" + n
			}
			names = append(names, n)
			return true
		})
		if got := strings.Join(names, " "); got != c.want {
			t.Errorf("candidates of %q: %s; want %s", c.pair, got, c.want)
		}
	}
}

// FuzzSplitCookies: guardian's tokeniser sees every cookie net/http's parser returns, with
// the same name and (unquoted, trimmed) value, and never panics; so no pair that Go would hand an
// application escapes the binding check.
func FuzzSplitCookies(f *testing.F) {
	f.Add("a=1; b=2")
	f.Add(`sid="SES\S-1"; theme=dark`)
	f.Add("x=1 sid=2;;; =3; c")
	f.Add(" a = \"b\" ;\tc=d\r")
	f.Fuzz(func(t *testing.T, header string) {
		pairs, err := splitCookies([]string{header}, 1<<20, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		r := &http.Request{Header: http.Header{"Cookie": {header}}}
		for _, c := range r.Cookies() {
			found := false
			for _, p := range pairs {
				v := p.value
				if len(v) > 1 && v[0] == '"' && v[len(v)-1] == '"' {
					v = v[1 : len(v)-1]
				}
				// RFC 6265 5.2 trims white space around the value; Go keeps it after '='.
				if p.name == c.Name && trimSpace(v) == trimSpace(c.Value) {
					found = true
					break
				}
			}
			if !found {
				t.Fatalf("net/http read %s=%q from %q; guardian's pairs %v do not hold it", c.Name, c.Value, header, pairs)
			}
		}
	})
}

// A bound cookie the handler sets in a form guardian cannot parse, or on a conn with no
// certificate to bind it to, is dropped: never passed on unbound for a browser to send back.
func TestSetCookieNeverUnbound(t *testing.T) {
	s := &Sessions{Cookies: []string{"sid"}, Keys: [][]byte{[]byte("0123456789abcdef0123456789abcdef")}, Audience: "a"}
	h, err := s.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", `sid="a b; Path=/`) // not a valid cookie value
		w.Header().Add("Set-Cookie", "theme=dark")
		w.Header().Add("Set-Cookie", "SID=upper")
	}))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		cert   bool
		wantUp bool // SID=upper bound and kept
	}{{"no certificate", false, false}, {"certificate", true, true}} {
		r, _ := http.NewRequest("GET", "/", nil)
		if c.cert {
			r.TLS = tlsState(t)
		}
		w := &recorder{h: http.Header{}}
		h.ServeHTTP(w, r)
		got := w.h.Values("Set-Cookie")
		if len(got) == 0 || got[0] != "theme=dark" {
			t.Fatalf("%s: Set-Cookie %q; want theme=dark first, untouched", c.name, got)
		}
		for _, line := range got {
			if strings.Contains(line, "a b") || strings.Contains(line, "upper") {
				t.Errorf("%s: %q passed unbound", c.name, line)
			}
		}
		if up := len(got) == 2 && strings.HasPrefix(got[1], "SID="+sealedPrefix); up != c.wantUp {
			t.Errorf("%s: Set-Cookie %q; want SID sealed: %v", c.name, got, c.wantUp)
		}
	}
}

// XFCC of a request without a client certificate is empty, not a panic.
func TestXFCCWithoutCertificate(t *testing.T) {
	r, _ := http.NewRequest("GET", "/", nil)
	if got := XFCC(r); got != "" {
		t.Errorf("XFCC without TLS: %q", got)
	}
	r.TLS = &tls.ConnectionState{}
	if got := XFCC(r); got != "" {
		t.Errorf("XFCC without a client certificate: %q", got)
	}
}

type recorder struct {
	h    http.Header
	code int
}

func (r *recorder) Header() http.Header         { return r.h }
func (r *recorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *recorder) WriteHeader(code int)        { r.code = code }

func tlsState(t *testing.T) *tls.ConnectionState {
	t.Helper()
	ca, err := pkitest.New("t")
	if err != nil {
		t.Fatal(err)
	}
	l, err := ca.Issue(pkitest.Opts{CommonName: "c"})
	if err != nil {
		t.Fatal(err)
	}
	return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{l.Cert}}
}

func TestCanonicalHost(t *testing.T) {
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{"api.example", "api.example", true},
		{"API.example.:8443", "api.example", true},
		{"127.0.0.1:443", "127.0.0.1", true},
		{"[::1]:443", "::1", true},
		{"[::1]", "::1", true},
		{"public.localhost:80,localhost", "", false},
		{"[public.localhost]", "", false},
		{"[127.0.0.1]", "", false},
		{"host:99999", "", false},
		{"host:8a", "", false},
		{"::1", "", false},
		{"a b", "", false},
		{"", "", false},
	} {
		got, ok := canonicalHost(c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("canonicalHost(%q) = %q, %v; want %q, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}
