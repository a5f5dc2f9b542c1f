package binding_test

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/binding"
	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/pkitest"
)

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

var sessionKey = []byte("0123456789abcdef0123456789abcdef")

// app is a handler that logs in by setting a session cookie, and says which session a
// request carries.
func app() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/login", func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: "session", Value: "s3cret-" + r.URL.Query().Get("user"), Path: "/"})
		http.SetCookie(w, &http.Cookie{Name: "theme", Value: "dark", Path: "/"})
		io.WriteString(w, "logged in")
	})
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie("session")
		if err != nil {
			http.Error(w, "no session", 403)
			return
		}
		fmt.Fprint(w, c.Value)
	})
	return mux
}

func bound(t *testing.T, audience string, reg prometheus.Registerer) http.Handler {
	t.Helper()
	m, _ := binding.NewMetrics(reg)
	h, err := (&binding.Sessions{Cookies: []string{"session"}, Keys: [][]byte{sessionKey}, Audience: audience, Metrics: m}).Wrap(app())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func request(t *testing.T, c *http.Client, path, cookie string) (int, string, *http.Response) {
	t.Helper()
	req, _ := http.NewRequest("GET", "https://app.test"+path, nil)
	if cookie != "" {
		req.Header.Set("Cookie", cookie)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b), resp
}

// tamper flips one character in the middle of a cookie's value.
func tamper(cookie string) string {
	b := []byte(cookie)
	i := len(b) * 2 / 3
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

// A session cookie set on a conn with certificate A works with A only: with certificate B,
// with none, tampered, or on another audience it gets the same 401, counted.
func TestSessionBinding(t *testing.T) {
	ca := pkitest.NewCA(t)
	reg := prometheus.NewRegistry()
	srv := tlsServer(t, ca, bound(t, "api", reg))
	a, b := ca.MustIssue(t, pkitest.Opts{CommonName: "a"}), ca.MustIssue(t, pkitest.Opts{CommonName: "b"})
	ca1, cb, none := clientFor(t, ca, srv, a), clientFor(t, ca, srv, b), clientFor(t, ca, srv, nil)

	_, _, resp := request(t, ca1, "/login?user=a", "")
	var session string
	for _, c := range resp.Cookies() {
		switch c.Name {
		case "session":
			session = c.Name + "=" + c.Value
			if !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteStrictMode || strings.Contains(c.Value, "s3cret") {
				t.Errorf("session cookie %+v; want HttpOnly, Secure, SameSite=Strict, and a bound value", c)
			}
		case "theme":
			if c.Value != "dark" {
				t.Errorf("an unbound cookie was rewritten: %q", c.Value)
			}
		}
	}
	if session == "" {
		t.Fatal("no session cookie")
	}
	if code, body, _ := request(t, ca1, "/whoami", session+"; theme=dark"); code != 200 || body != "s3cret-a" {
		t.Fatalf("A with its own session: %d %q; want 200 and the original value", code, body)
	}
	other := tlsServer(t, ca, bound(t, "admin", nil))
	for _, c := range []struct {
		name   string
		client *http.Client
		cookie string
		reason string
	}{
		{"another certificate", cb, session, "mismatch"},
		{"no certificate", none, session, "no_client_certificate"},
		{"tampered", ca1, tamper(session), "mismatch"},
		{"an unbound value", ca1, "session=s3cret-a", "unbound"},
		{"garbage", ca1, "session=g2.!!.??", "malformed"},
	} {
		code, body, _ := request(t, c.client, "/whoami", c.cookie)
		if code != 401 || body != `{"message":"unauthorized"}`+"\n" {
			t.Errorf("%s: %d %q; want the generic 401", c.name, code, body)
		}
	}
	if code, _, _ := request(t, clientFor(t, ca, other, a), "/whoami", session); code != 401 {
		t.Errorf("A's session on another audience: %d; want 401", code)
	}
	if v := metrictest.Value(t, reg, "guardian_binding_refused_total", "check", "session", "reason", "mismatch"); v != 2 {
		t.Errorf("session mismatch refusals = %v; want 2 (another certificate, tampered)", v)
	}
	if v := metrictest.Value(t, reg, "guardian_binding_refused_total", "check", "session", "reason", "no_client_certificate"); v != 1 {
		t.Errorf("session refusals without a certificate = %v; want 1", v)
	}
	if _, err := (&binding.Sessions{Cookies: []string{"s"}, Keys: [][]byte{[]byte("short")}}).Wrap(app()); err == nil {
		t.Error("a short key was accepted")
	}
}

// A handler's 103 Early Hints goes out with the header map as it is then: a bound cookie
// set before it is held back from the 1xx (never sent unsealed) and sealed in the final
// response.
func TestSessionCookieNotInInformationalResponse(t *testing.T) {
	ca := pkitest.NewCA(t)
	h, err := (&binding.Sessions{Cookies: []string{"sid"}, Keys: [][]byte{sessionKey}, Audience: "a"}).Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", "sid=SESS-early; Path=/")
		w.Header().Add("Set-Cookie", "theme=dark")
		w.Header().Add("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		io.WriteString(w, "ok")
	}))
	if err != nil {
		t.Fatal(err)
	}
	srv := tlsServer(t, ca, h)
	c := clientFor(t, ca, srv, ca.MustIssue(t, pkitest.Opts{CommonName: "a"}))
	var early []string
	req, _ := http.NewRequest("GET", "https://app.test/", nil)
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			early = append(early, h.Values("Set-Cookie")...)
			return nil
		},
	}))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, line := range early {
		if strings.HasPrefix(line, "sid=") {
			t.Errorf("103 carried %q", line)
		}
	}
	if len(early) != 1 || early[0] != "theme=dark" {
		t.Errorf("103's Set-Cookie %q; want theme=dark alone", early)
	}
	var sid string
	for _, ck := range resp.Cookies() {
		if ck.Name == "sid" {
			sid = ck.Value
		}
	}
	if !strings.HasPrefix(sid, "g2.") {
		t.Errorf("final response's sid %q; want it sealed", sid)
	}
}
