package listener_test

import (
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
)

// Whatever bytes a client sends instead of (or as) a ClientHello, the listener refuses that
// conn alone: no panic, Accept keeps going, and a good client is served afterwards.
func FuzzHandshakeBytes(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00})
	f.Add([]byte{0x16, 0x03, 0x03, 0xff, 0xff})
	f.Add([]byte{0x80, 0x2e, 0x01, 0x03, 0x01}) // SSLv2-style hello
	e := newEnv(f, envOpts{timeout: 200 * time.Millisecond})
	good := e.client(e.root.MustIssue(f, pkitest.Opts{CommonName: "good"}), false)
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(b)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 64)
		for {
			if _, err := c.Read(buf); err != nil {
				break
			}
		}
		c.Close()
		if got := good.get(t, "/"); !strings.Contains(got, "cn=good") {
			t.Fatalf("good client got %q", got)
		}
	})
}

// Allow patterns from a configuration: parsed or refused, never a panic; a parsed policy
// matches without panicking and says which pattern admitted.
func FuzzParsePolicy(f *testing.F) {
	for _, s := range []string{"uri:spiffe://prod/payments/*", "uri:spiffe://x/**", "dns:*.svc.internal", "email:a@b.c",
		`subject:CN=a\,b,O=Acme+OU=x`, `subject:CN=\41`, "issuer:" + strings.Repeat("ab", 32), "spki:00"} {
		f.Add(s)
	}
	ca := pkitest.NewCA(f)
	leaf := ca.MustIssue(f, pkitest.Opts{CommonName: "a,b", URIs: []string{"spiffe://x/y"}, DNS: []string{"a.svc.internal"}})
	chains := [][]*x509.Certificate{{leaf.Cert, ca.Cert}}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := listener.ParsePolicy(s)
		if err != nil {
			return
		}
		if by, ok := p.Admits(chains); ok && by != s {
			t.Fatalf("admitted by %q; the policy has only %q", by, s)
		}
	})
}
