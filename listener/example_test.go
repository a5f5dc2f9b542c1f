package listener_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// Embed guardian's listener in your own http.Server: revoking a key closes the live
// keep-alive conn of the certificate it names.
func Example() {
	ca, _ := pkitest.New("example CA") // your CA pool and server certificate
	server, _ := ca.Issue(pkitest.Opts{DNS: []string{"localhost"}})
	client, _ := ca.Issue(pkitest.Opts{CommonName: "alice", URIs: []string{"spiffe://example/alice"}})

	set, _ := revoke.NewSet(revoke.SetOptions{}) // fed by Redis, CRLs, OCSP or your own code
	inner, _ := net.Listen("tcp", "127.0.0.1:0")
	l, err := listener.New(inner, listener.Config{
		Set: set,
		Audiences: []listener.Audience{{
			Name: "api", SNI: []string{"localhost"},
			Certificates: []tls.Certificate{server.TLS()},
			ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
		}},
	})
	if err != nil {
		panic(err)
	}
	srv := &http.Server{
		ConnContext: l.ConnContext, // lets handlers call listener.FromContext
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			info, _ := listener.FromContext(r.Context())
			fmt.Fprintf(w, "hello %s on %s", info.Leaf().URIs[0], info.Audience())
		}),
	}
	go srv.Serve(l)
	defer srv.Close()

	closed := make(chan struct{})
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{client.TLS()}, ServerName: "localhost"},
		// Watch the client's conn: its idle reader fails the moment guardian closes it.
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", inner.Addr().String())
			if err != nil {
				return nil, err
			}
			return &notifyConn{Conn: c, closed: closed}, nil
		},
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("https://localhost/")
	if err != nil {
		panic(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(string(body))

	key, _ := revoke.KeyFor(client.Cert, revoke.KindURI)
	set.Add(revoke.SourceAPI, revoke.Entry{Key: key, Reason: "keyCompromise"})
	select {
	case <-closed:
		fmt.Println("alice's idle keep-alive conn was closed")
	case <-time.After(10 * time.Second):
		fmt.Println("still open")
	}
	// Output:
	// hello spiffe://example/alice on api
	// alice's idle keep-alive conn was closed
}

// notifyConn closes its channel when a read fails.
type notifyConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *notifyConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.once.Do(func() { close(c.closed) })
	}
	return n, err
}
