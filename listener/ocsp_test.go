package listener_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/need"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/ocsp"
)

// opensslResponder is a real `openssl ocsp` responder process over an index file.
type opensslResponder struct {
	t      *testing.T
	dir    string
	url    string
	cmd    *exec.Cmd
	exited chan struct{}
	port   int
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func startOpensslResponder(t *testing.T, port int, ca *pkitest.CA, index string) *opensslResponder {
	t.Helper()
	dir := t.TempDir()
	key, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "ca.pem"), ca.CertPEM(), 0o600)
	os.WriteFile(filepath.Join(dir, "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}), 0o600)
	r := &opensslResponder{t: t, dir: dir, port: port, url: fmt.Sprintf("http://127.0.0.1:%d", port)}
	r.setIndex(index)
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *opensslResponder) start() {
	r.t.Helper()
	r.cmd = exec.Command("openssl", "ocsp", "-index", filepath.Join(r.dir, "index.txt"), "-port", fmt.Sprint(r.port),
		"-rsigner", filepath.Join(r.dir, "ca.pem"), "-rkey", filepath.Join(r.dir, "ca.key"), "-CA", filepath.Join(r.dir, "ca.pem"), "-nmin", "1")
	// Readiness from its own words: a probe connection that sends nothing wedges openssl
	// 3.0's single-threaded responder, and every later request waits behind it.
	pr, pw := io.Pipe()
	r.cmd.Stdout, r.cmd.Stderr = pw, pw
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "waiting for OCSP client connections") {
				close(ready)
				break
			}
		}
		io.Copy(io.Discard, pr)
	}()
	r.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { cmd.Wait(); pw.Close(); close(exited) }(r.cmd, r.exited)
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		r.t.Fatal("openssl ocsp did not start within 10s")
	}
}

func (r *opensslResponder) stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Kill()
		<-r.exited
		r.cmd = nil
	}
}

// setIndex writes openssl ca's database: a line per certificate, V (valid) or R (revoked).
func (r *opensslResponder) setIndex(index string) {
	r.t.Helper()
	tmp := filepath.Join(r.dir, "index.txt.tmp")
	if err := os.WriteFile(tmp, []byte(index), 0o600); err != nil {
		r.t.Fatal(err)
	}
	// openssl notices a new index by its modification time, to the second.
	time.Sleep(1100 * time.Millisecond)
	os.Rename(tmp, filepath.Join(r.dir, "index.txt"))
}

func indexLine(l *pkitest.Leaf, revoked bool) string {
	serial := fmt.Sprintf("%X", l.Cert.SerialNumber.Bytes()) // openssl looks serials up as even-length upper-case hex
	if revoked {
		return fmt.Sprintf("R\t301231235959Z\t251101120000Z,keyCompromise\t%s\tunknown\t/CN=%s\n", serial, l.Cert.Subject.CommonName)
	}
	return fmt.Sprintf("V\t301231235959Z\t\t%s\tunknown\t/CN=%s\n", serial, l.Cert.Subject.CommonName)
}

// With a real openssl OCSP responder: a hard-mode audience serves certificates the
// responder calls good; revoking one in the responder's index closes its live conn at the
// next background re-check, and its new handshakes are refused; when the responder is gone,
// a certificate with no cached answer is refused and live conns stay.
func TestOCSPWithOpensslResponder(t *testing.T) {
	need.Tool(t, "openssl")
	port := freePort(t)
	var checker *ocsp.Checker
	e := newEnv(t, envOpts{audiences: func(e *env) []listener.Audience {
		var err error
		// The responder is the one in the certificates' AIA in production; here one for all.
		checker, err = ocsp.New(ocsp.Options{Set: e.set, Responder: fmt.Sprintf("http://127.0.0.1:%d", port), Timeout: 2 * time.Second,
			MaxAge: 500 * time.Millisecond, RetryAfter: 200 * time.Millisecond, Metrics: e.metrics})
		if err != nil {
			t.Fatal(err)
		}
		return []listener.Audience{{
			Name: "api", SNI: []string{"localhost"}, Certificates: []tls.Certificate{e.server.TLS()},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: e.root.Pool(),
			TLS: &tls.Config{VerifyConnection: checker.VerifyConnection(ocsp.Hard)},
		}}
	}})
	inter := e.root.MustIntermediate(t, "devices CA")
	a, b, c := inter.MustIssue(t, pkitest.Opts{CommonName: "a"}), inter.MustIssue(t, pkitest.Opts{CommonName: "b"}), inter.MustIssue(t, pkitest.Opts{CommonName: "c"})
	r := startOpensslResponder(t, port, inter, indexLine(a, false)+indexLine(b, false)+indexLine(c, false))

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		checker.Run(ctx, 100*time.Millisecond, e.l.ClientCerts(nil))
		close(done)
	}()
	defer func() { cancel(); <-done }()

	ca, cb := e.client(a, false), e.client(b, false)
	if got := ca.get(t, "/"); !strings.Contains(got, "cn=a") {
		t.Fatalf("a: %q", got)
	}
	cb.get(t, "/")

	r.setIndex(indexLine(a, true) + indexLine(b, false) + indexLine(c, false))
	waitClosed(t, ca.conn(0), "a (revoked in the responder's index)")
	if !isOpen(cb.conn(0)) {
		t.Fatal("b's conn closed; only a was revoked")
	}
	if _, err := e.client(a, false).try("/"); err == nil {
		t.Fatal("a's new handshake was served after the responder revoked it")
	}
	if !e.set.Has(revoke.KeySerialKey(inter.Cert.RawSubject, inter.Cert.RawSubjectPublicKeyInfo, a.Cert.SerialNumber)) {
		t.Fatal("the revoked answer is not in the Set")
	}

	r.stop()
	if _, err := e.client(c, false).try("/"); err == nil {
		t.Fatal("hard mode served c, for which no answer could be had")
	}
	time.Sleep(time.Second) // several re-check rounds with the responder down
	if got := cb.get(t, "/"); !strings.Contains(got, "cn=b") || cb.numConns() != 1 {
		t.Fatalf("b during the responder outage: %q on %d conns; want its live conn kept", got, cb.numConns())
	}
}
