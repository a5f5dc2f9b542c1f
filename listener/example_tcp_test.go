package listener_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// Serve a protocol of your own, here lines over TCP, on guardian's listener: Accept
// yields conns whose client certificate is already verified, and revoking one closes that
// client's conn while the others carry on.
func Example_tcp() {
	ca, _ := pkitest.New("example CA") // your CA pool and certificates
	server, _ := ca.Issue(pkitest.Opts{DNS: []string{"localhost"}})
	alice, _ := ca.Issue(pkitest.Opts{CommonName: "alice", URIs: []string{"spiffe://example/alice"}})
	bob, _ := ca.Issue(pkitest.Opts{CommonName: "bob", URIs: []string{"spiffe://example/bob"}})

	set, _ := revoke.NewSet(revoke.SetOptions{}) // fed by Redis, CRLs, OCSP or your own code
	evictions := make(chan listener.Eviction, 4)
	inner, _ := net.Listen("tcp", "127.0.0.1:0")
	l, err := listener.New(inner, listener.Config{
		Set: set,
		Audiences: []listener.Audience{{
			Name: "lines", SNI: []string{"localhost"},
			Certificates: []tls.Certificate{server.TLS()},
			ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
			// The default, h2 and http/1.1, would tell an HTTP client it may talk HTTP here.
			// A protocol of your own names its own ALPN (or none): a client that offers
			// only HTTP is then refused in the handshake instead of sending HTTP to it.
			NextProtos: []string{"guardian-example"},
		}},
		// OnEvict runs on an eviction worker and must be quick: hand the eviction over.
		OnEvict: func(e listener.Eviction) { evictions <- e },
	})
	if err != nil {
		panic(err)
	}

	go func() {
		for {
			conn, err := l.Accept() // already handshaken: the client certificate is known
			if err != nil {
				return // the listener is closed
			}
			go func() {
				defer conn.Close()
				info, _ := listener.FromConn(conn)
				fmt.Fprintf(conn, "hello %s\n", info.Leaf().URIs[0])
				lines := bufio.NewScanner(conn)
				for lines.Scan() {
					fmt.Fprintf(conn, "echo %s\n", lines.Text())
				}
			}()
		}
	}()

	dial := func(client *pkitest.Leaf, protos ...string) (*tls.Conn, *bufio.Reader, error) {
		c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{
			RootCAs: ca.Pool(), Certificates: []tls.Certificate{client.TLS()},
			ServerName: "localhost", NextProtos: protos,
		})
		if err != nil {
			return nil, nil, err
		}
		c.SetDeadline(time.Now().Add(10 * time.Second)) // never hang: print what happened
		return c, bufio.NewReader(c), nil
	}
	readLine := func(r *bufio.Reader) string {
		s, err := r.ReadString('\n')
		if err != nil {
			return "error: " + err.Error()
		}
		return s[:len(s)-1]
	}

	if _, _, err := dial(alice, "http/1.1"); err != nil {
		fmt.Println("an HTTP client:", err)
	}
	aliceConn, aliceIn, err := dial(alice, "guardian-example")
	if err != nil {
		panic(err)
	}
	defer aliceConn.Close()
	bobConn, bobIn, err := dial(bob, "guardian-example")
	if err != nil {
		panic(err)
	}
	defer bobConn.Close()
	fmt.Println("alice:", readLine(aliceIn))
	fmt.Println("bob:", readLine(bobIn))

	// Revoke alice's certificate by its URI SAN, as a feed or an admin API would.
	key, _ := revoke.KeyFor(alice.Cert, revoke.KindURI)
	set.Add(revoke.SourceAPI, revoke.Entry{Key: key, Reason: "keyCompromise"})

	fmt.Println("alice:", readUntilClosed(aliceIn)) // alice is idle: her read ends when guardian closes the conn
	printEviction(evictions)

	fmt.Fprintln(bobConn, "still here?")
	fmt.Println("bob:", readLine(bobIn))

	// Shutdown stops accepting and gives live conns until ctx ends to finish; bob does not
	// leave, so it then closes his conn too, and says so by returning ctx's error.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	fmt.Println("shutdown:", l.Shutdown(ctx))
	printEviction(evictions)
	fmt.Println("bob:", readUntilClosed(bobIn))

	// Output:
	// an HTTP client: remote error: tls: no application protocol
	// alice: hello spiffe://example/alice
	// bob: hello spiffe://example/bob
	// alice: conn closed
	// evicted from lines (revoked by uri:spiffe://example/alice): spiffe://example/alice
	// bob: echo still here?
	// shutdown: context deadline exceeded
	// evicted from lines (shutdown): spiffe://example/bob
	// bob: conn closed
}

// readUntilClosed reads until the conn fails, or its 10s deadline passes.
func readUntilClosed(r *bufio.Reader) string {
	for {
		_, err := r.ReadString('\n')
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return "conn still open after 10s"
		case err != nil:
			return "conn closed"
		}
	}
}

// printEviction prints what OnEvict was told, within 10s.
func printEviction(evictions <-chan listener.Eviction) {
	select {
	case e := <-evictions:
		why := e.Reason
		if e.Key != "" {
			why += " by " + string(e.Key)
		}
		fmt.Printf("evicted from %s (%s): %s\n", e.Conn.Audience(), why, e.Conn.Leaf().URIs[0])
	case <-time.After(10 * time.Second):
		fmt.Println("no eviction within 10s")
	}
}
