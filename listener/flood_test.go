package listener_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/testpki"
)

// A flood of clients that connect and never send a ClientHello: past MaxHandshakes the
// oldest is shed, so a legitimate client is still served, long before the handshake
// timeout would have freed a slot.
func TestHandshakeFloodSheds(t *testing.T) {
	e := newEnv(t, envOpts{maxHS: 8, timeout: time.Minute})
	var stalled []net.Conn
	for i := 0; i < 40; i++ {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		stalled = append(stalled, c)
	}
	waitMetric(t, e, "guardian_handshake_failures_total", 32, "reason", "shed")
	cl := e.client(e.root.MustIssue(t, testpki.Opts{CommonName: "legit"}), false)
	if got := cl.get(t, "/"); !strings.Contains(got, "cn=legit") {
		t.Fatalf("legitimate client during the flood: %q", got)
	}
	waitMetric(t, e, "guardian_handshake_failures_total", 33, "reason", "shed")
	// The shed conns were closed by the server: the oldest 33 read EOF, the newest 7 wait.
	closed := 0
	for _, c := range stalled {
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && !strings.Contains(err.Error(), "timeout") {
			closed++
		}
	}
	if closed != 33 {
		t.Errorf("%d stalled conns closed by the server; want the 33 oldest", closed)
	}
}
