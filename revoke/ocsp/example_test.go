package ocsp_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"time"

	xocsp "golang.org/x/crypto/ocsp"

	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/ocsp"
)

// Ask your CA's OCSP responder about each client certificate in the handshake: a
// certificate it calls revoked is refused (and lands in the Set, which closes its live
// conns); in hard mode, so is one it cannot vouch for.
func ExampleChecker() {
	ca, _ := pkitest.New("example CA") // your client CA, which runs the responder
	server, _ := ca.Issue(pkitest.Opts{DNS: []string{"localhost"}})
	alice, _ := ca.Issue(pkitest.Opts{CommonName: "alice"})
	bob, _ := ca.Issue(pkitest.Opts{CommonName: "bob"})

	// The CA's responder: alice is revoked, bob is good.
	issued := map[string]*x509.Certificate{alice.Cert.SerialNumber.String(): alice.Cert, bob.Cert.SerialNumber.String(): bob.Cert}
	responder := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req, err := xocsp.ParseRequest(body)
		if err != nil || issued[req.SerialNumber.String()] == nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		answer := pkitest.OCSPOpts{Status: xocsp.Good}
		if req.SerialNumber.Cmp(alice.Cert.SerialNumber) == 0 {
			answer = pkitest.OCSPOpts{Status: xocsp.Revoked, Reason: xocsp.KeyCompromise, RevokedAt: time.Now().Add(-time.Hour)}
		}
		der, _ := ca.OCSP(issued[req.SerialNumber.String()], answer)
		w.Header().Set("Content-Type", "application/ocsp-response")
		w.Write(der)
	}))
	defer responder.Close()

	set, _ := revoke.NewSet(revoke.SetOptions{})
	checker, err := ocsp.New(ocsp.Options{
		Set: set,
		// Without Responder, each certificate's AIA OCSP URL is asked (pkitest.Opts.OCSP).
		Responder: responder.URL,
	})
	if err != nil {
		panic(err)
	}
	inner, _ := net.Listen("tcp", "127.0.0.1:0")
	l, err := listener.New(inner, listener.Config{
		Set: set,
		Audiences: []listener.Audience{{
			Name: "api", SNI: []string{"localhost"},
			Certificates: []tls.Certificate{server.TLS()},
			ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
			// Runs after guardian's own checks, once the chain is verified. Hard: no good
			// answer (responder down, unknown certificate), no conn; Soft lets those through.
			TLS: &tls.Config{VerifyConnection: checker.VerifyConnection(ocsp.Hard)},
		}},
	})
	if err != nil {
		panic(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			info, _ := listener.FromConn(conn)
			fmt.Fprintf(conn, "hello %s\n", info.Leaf().Subject.CommonName)
			conn.Close()
		}
	}()

	greet := func(client *pkitest.Leaf) string {
		c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{
			RootCAs: ca.Pool(), Certificates: []tls.Certificate{client.TLS()}, ServerName: "localhost",
		})
		if err != nil {
			return err.Error()
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// In TLS 1.3 the server checks the client's certificate after the client's
		// handshake is done: a refusal shows at the first read.
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err.Error()
		}
		return line[:len(line)-1]
	}
	fmt.Println("alice:", greet(alice))
	fmt.Println("bob:", greet(bob))

	// The revoked answer is now a revocation like any other: it closes alice's live conns
	// on every listener that uses this Set. It names her by her CA key and serial, so look
	// her up by her verified chain, root included (ConnInfo.Chains), not her leaf alone.
	if e, ok := set.AnyOf(revoke.KeysOf(append(alice.Chain, ca.Cert))); ok {
		fmt.Printf("in the Set: alice's %s key, %s, from %s\n", e.Key.Kind(), e.Reason, e.Source)
	}

	// Output:
	// alice: remote error: tls: bad certificate
	// bob: hello bob
	// in the Set: alice's keyserial key, keyCompromise, from ocsp
}
