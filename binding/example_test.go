package binding_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"

	"github.com/guardian-mtls/guardian/binding"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// Put guardian's middleware in front of an upstream, in the order guardian's daemon does:
// the SNI/Host guard, then the identity-header guard, then session binding, around a
// reverse proxy whose Rewrite sets the identity headers. The upstream then learns the
// client from X-Forwarded-Client-Cert, which no client can forge, and a session cookie
// works only with the certificate it was set for.
func Example() {
	ca, _ := pkitest.New("example CA") // your CA pool and certificates
	server, _ := ca.Issue(pkitest.Opts{DNS: []string{"app.example", "admin.example"}})
	alice, _ := ca.Issue(pkitest.Opts{CommonName: "alice", URIs: []string{"spiffe://example/alice"}})
	bob, _ := ca.Issue(pkitest.Opts{CommonName: "bob", URIs: []string{"spiffe://example/bob"}})

	// The upstream application: plain HTTP, trusting guardian for the client's identity.
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" {
			http.SetCookie(w, &http.Cookie{Name: "session", Value: "id-" + r.URL.Query().Get("user"), Path: "/"})
		}
		xfcc := r.Header.Values("X-Forwarded-Client-Cert")
		for i := range xfcc {
			_, xfcc[i], _ = strings.Cut(xfcc[i], ";") // the certificate's hash, left out here
		}
		fmt.Fprintf(w, "upstream: %d XFCC %s", len(xfcc), strings.Join(xfcc, " "))
		if c, err := r.Cookie("session"); err == nil {
			fmt.Fprintf(w, ", session %s", c.Value)
		}
	}))
	defer upstream.Close()
	target, _ := url.Parse(upstream.URL)

	var h http.Handler = &httputil.ReverseProxy{
		// Rewrite runs after the proxy drops hop-by-hop headers: what SetIdentity sets
		// there, nothing the client sent can remove.
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			binding.SetIdentity(pr)
		},
	}
	h, err := (&binding.Sessions{
		Cookies:  []string{"session"},
		Keys:     [][]byte{[]byte("an example key of 32 bytes or more")}, // shared by the fleet's nodes
		Audience: "app",
	}).Wrap(h)
	if err != nil {
		panic(err)
	}
	// Protected: a client's Connection header may not name Cookie, or the proxy would drop
	// the Cookie header Sessions checked and rebuilt.
	h = (&binding.Headers{Protected: []string{"Cookie"}}).Wrap(h)
	h = binding.SNIHostGuard(h, nil, nil)

	set, _ := revoke.NewSet(revoke.SetOptions{})
	inner, _ := net.Listen("tcp", "127.0.0.1:0")
	l, err := listener.New(inner, listener.Config{
		Set: set,
		Audiences: []listener.Audience{{
			Name: "app", SNI: []string{"app.example"},
			Certificates: []tls.Certificate{server.TLS()},
			ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
		}},
	})
	if err != nil {
		panic(err)
	}
	// ConnContext lets a handler find the conn's audience (listener.FromContext), to pick
	// each audience's chain as guardian's daemon does.
	srv := &http.Server{Handler: h, ConnContext: l.ConnContext}
	go srv.Serve(l)
	defer srv.Close()

	clientOf := func(l *pkitest.Leaf) *http.Client {
		return &http.Client{Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{l.TLS()}},
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp", inner.Addr().String()) // app.example is here
			},
		}}
	}
	do := func(c *http.Client, host, path string, header http.Header) *http.Response {
		req, _ := http.NewRequest("GET", "https://app.example"+path, nil) // SNI: app.example
		req.Host = host
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := c.Do(req)
		if err != nil {
			panic(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Printf("%s %s: %d %s\n", host, path, resp.StatusCode, strings.TrimSpace(string(body)))
		return resp
	}
	aliceClient, bobClient := clientOf(alice), clientOf(bob)
	defer aliceClient.CloseIdleConnections()
	defer bobClient.CloseIdleConnections()

	// A conn handshaken for app.example may not address another host, even one the server
	// certificate covers.
	do(aliceClient, "admin.example", "/", nil)

	// A forged identity header never reaches the upstream: guardian's replaces it.
	do(aliceClient, "app.example", "/", http.Header{"X-Forwarded-Client-Cert": {`URI=spiffe://example/admin`}})

	// The upstream's cookie reaches alice sealed to her certificate...
	resp := do(aliceClient, "app.example", "/login?user=alice", nil)
	session := resp.Cookies()[0]
	fmt.Println("alice's cookie: sealed", !strings.Contains(session.Value, "id-alice"), "HttpOnly", session.HttpOnly, "Secure", session.Secure)
	cookie := http.Header{"Cookie": {session.Name + "=" + session.Value}}
	do(aliceClient, "app.example", "/", cookie)
	// ...so bob, who stole it, is refused.
	do(bobClient, "app.example", "/", cookie)

	// Output:
	// admin.example /: 421 misdirected request: this connection does not serve that host
	// app.example /: 200 upstream: 1 XFCC Subject="CN=alice,O=guardian test";URI=spiffe://example/alice
	// app.example /login?user=alice: 200 upstream: 1 XFCC Subject="CN=alice,O=guardian test";URI=spiffe://example/alice
	// alice's cookie: sealed true HttpOnly true Secure true
	// app.example /: 200 upstream: 1 XFCC Subject="CN=alice,O=guardian test";URI=spiffe://example/alice, session id-alice
	// app.example /: 401 {"message":"unauthorized"}
}
