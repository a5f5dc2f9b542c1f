package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/need"
)

// startMosquitto runs a real mosquitto broker on a free loopback port, logging to the
// returned buffer.
func startMosquitto(t *testing.T) (addr string, log func() string) {
	t.Helper()
	need.Tool(t, "mosquitto")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	conf, logFile := filepath.Join(dir, "mosquitto.conf"), filepath.Join(dir, "mosquitto.log")
	os.WriteFile(conf, []byte(fmt.Sprintf("user root\nlistener %s 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest file %s\nlog_type all\n", port, logFile)), 0o644)
	cmd := exec.Command("mosquitto", "-c", conf)
	log = func() string { b, _ := os.ReadFile(logFile); return string(b) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	eventuallyT(t, "mosquitto listening", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr, log
}

// subscriber is a mosquitto_sub through guardian with one client certificate.
type subscriber struct {
	mu    sync.Mutex
	lines []string
}

func (s *subscriber) has(msg string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.lines {
		if strings.HasSuffix(l, " "+msg) {
			return true
		}
	}
	return false
}

func subscribe(t *testing.T, dir, guardianAddr, name string) *subscriber {
	t.Helper()
	need.Tool(t, "mosquitto_sub")
	_, port, _ := net.SplitHostPort(guardianAddr)
	cmd := exec.Command("mosquitto_sub", "-h", "localhost", "-p", port, "--cafile", filepath.Join(dir, "ca.pem"),
		"--cert", filepath.Join(dir, name+".pem"), "--key", filepath.Join(dir, name+".key"), "--tls-alpn", "mqtt",
		"-i", name, "-t", "devices/#", "-v")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	s := &subscriber{}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.mu.Lock()
			s.lines = append(s.lines, sc.Text())
			s.mu.Unlock()
		}
	}()
	return s
}

// An MQTT broker behind a TCP audience: bytes spliced both ways, messages flow to two
// subscribers with client certificates; revoking one subscriber's certificate ends its conn
// at once — the broker sees that client go — while the other keeps receiving, and the
// revoked one's reconnects are refused.
func TestServeTCPAudienceWithMosquitto(t *testing.T) {
	need.Tool(t, "mosquitto_pub")
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	broker, brokerLog := startMosquitto(t)
	cfg := fmt.Sprintf(`
listen: "127.0.0.1:0"
admin: { listen: "127.0.0.1:0", cert: server.pem, key: server.key, client_ca: [ca.pem], allow: ["uri:spiffe://guardian.demo/admin"] }
revocation: { store: memory }
audiences:
  - { name: devices, sni: [localhost], cert: server.pem, key: server.key, client_ca: [ca.pem], upstream: "tcp://%s", alpn: [mqtt] }
`, broker)
	s := startServe(t, dir, cfg)
	d := s.demoView()
	alice := subscribe(t, dir, s.addr, "client")
	bob := subscribe(t, dir, s.addr, "client2")
	n := 0
	publish := func() string {
		t.Helper()
		n++
		msg := fmt.Sprintf("reading-%d", n)
		host, port, _ := net.SplitHostPort(broker)
		if out, err := exec.Command("mosquitto_pub", "-h", host, "-p", port, "-t", "devices/meter", "-m", msg).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_pub: %v\n%s", err, out)
		}
		return msg
	}
	eventuallyT(t, "both subscribers receiving through guardian", func() bool {
		m := publish()
		time.Sleep(100 * time.Millisecond)
		return alice.has(m) && bob.has(m)
	})

	out, code := d.cli(t, append([]string{"revoke", "--cert", filepath.Join(dir, "client.pem")}, d.adminArgs("admin")...)...)
	if code != 0 || !strings.Contains(out, "1 live conn(s) matched") {
		t.Fatalf("revoke: exit %d:\n%s", code, out)
	}
	defer func() {
		if t.Failed() {
			t.Logf("broker log:\n%s", brokerLog())
		}
	}()
	eventuallyT(t, "the broker seeing the revoked subscriber go", func() bool {
		l := brokerLog()
		return strings.Contains(l, "Client client closed its connection") || strings.Contains(l, "Client client disconnected") ||
			strings.Contains(l, "Socket error on client client,")
	})
	for range 3 {
		m := publish()
		eventuallyT(t, "bob receiving "+m, func() bool { return bob.has(m) })
		if alice.has(m) {
			t.Fatalf("the revoked subscriber received %s", m)
		}
	}
	// mosquitto_sub reconnects by itself; guardian refuses it in the handshake.
	eventuallyT(t, "the revoked subscriber's reconnect refused", func() bool {
		return metricOf(t, s, `guardian_handshake_failures_total{listener="data",reason="revoked"}`) >= 1
	})
}
