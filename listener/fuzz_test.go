package listener_test

import (
	"net"
	"strings"
	"testing"
	"time"

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
