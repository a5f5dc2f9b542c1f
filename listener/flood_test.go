package listener_test

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/pkitest"
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
	cl := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "legit"}), false)
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

// Slow clients under the cap — each sends half a ClientHello, or nothing, and stalls — are
// all cut at the handshake timeout, and counted; a legitimate client is served meanwhile and
// after.
func TestSlowHandshakesCutAtTimeout(t *testing.T) {
	e := newEnv(t, envOpts{timeout: 300 * time.Millisecond})
	hello := []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03} // a record header and the start of a ClientHello
	var slow []net.Conn
	for i := range 30 {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if i%2 == 0 {
			if _, err := c.Write(hello); err != nil {
				t.Fatal(err)
			}
		}
		slow = append(slow, c)
	}
	cl := e.client(e.root.MustIssue(t, pkitest.Opts{CommonName: "legit"}), false)
	if got := cl.get(t, "/"); !strings.Contains(got, "cn=legit") {
		t.Fatalf("legitimate client among the slow ones: %q", got)
	}
	for i, c := range slow {
		// Closed by the server: a read ends with EOF (or an alert), not our own deadline.
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(c); err != nil && strings.Contains(err.Error(), "timeout") {
			t.Fatalf("slow client %d not cut within 10s of a 300 ms handshake timeout", i)
		}
	}
	waitMetric(t, e, "guardian_handshake_failures_total", 30, "reason", "timeout")
	if got := cl.get(t, "/"); !strings.Contains(got, "cn=legit") {
		t.Fatalf("legitimate client after the slow ones were cut: %q", got)
	}
}
