package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/pkitest"
)

// serverSerial is the serial of the certificate a new handshake gets.
func serverSerial(t *testing.T, addr string, ca *pkitest.CA, client *pkitest.Leaf) *big.Int {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{client.TLS()}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
	}
}

// Certificate files that change are applied without SIGHUP: a rotation by rename, a
// Kubernetes ..data symlink swap; a half-written pair (a new certificate with the old key) or
// a truncated PEM is not applied — the last good pair stays, the failure is counted — until
// the pair is whole; a server certificate rotation closes no conn, a CA leaving the client CA
// bundle closes the conns it verified.
func TestCertificateFilesAreWatched(t *testing.T) {
	dir, ca, client := testPKI(t)
	other := pkitest.NewCA(t)
	partner := other.MustIssue(t, pkitest.Opts{CommonName: "partner"})
	// Kubernetes' layout: the files are symlinks through ..data to a timestamped directory.
	k8s := filepath.Join(dir, "secret")
	publish := func(name string, cert, key, bundle []byte) {
		t.Helper()
		d := filepath.Join(k8s, name)
		os.MkdirAll(d, 0o700)
		os.WriteFile(filepath.Join(d, "tls.crt"), cert, 0o600)
		os.WriteFile(filepath.Join(d, "tls.key"), key, 0o600)
		os.WriteFile(filepath.Join(d, "ca.crt"), bundle, 0o600)
		tmp := filepath.Join(k8s, "..data_tmp")
		os.Remove(tmp)
		if err := os.Symlink(name, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(k8s, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	issue := func() (cert, key []byte, serial *big.Int) {
		l := ca.MustIssue(t, pkitest.Opts{CommonName: "localhost", DNS: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
		if err := l.WriteFiles(dir, "tmp"); err != nil {
			t.Fatal(err)
		}
		cert, _ = os.ReadFile(filepath.Join(dir, "tmp.pem"))
		key, _ = os.ReadFile(filepath.Join(dir, "tmp.key"))
		return cert, key, l.Cert.SerialNumber
	}
	both := append(ca.CertPEM(), other.CertPEM()...)
	c1, k1, _ := issue()
	publish("..2026_a", c1, k1, both)
	for _, f := range []string{"tls.crt", "tls.key", "ca.crt"} {
		os.Symlink(filepath.Join("..data", f), filepath.Join(k8s, f))
	}
	cfg := testConfig(dir, "")
	a := &cfg.Audiences[0]
	a.Cert, a.Key, a.ClientCA = filepath.Join(k8s, "tls.crt"), filepath.Join(k8s, "tls.key"), []string{filepath.Join(k8s, "ca.crt")}
	reg := prometheus.NewRegistry()
	n := runNode(t, cfg, Options{Metrics: reg})
	addr := n.Addr().String()
	dial := func(l *pkitest.Leaf, roots *x509.CertPool) *tls.Conn {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{l.TLS()}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	live := dial(client, ca.Pool())
	partnerConn := dial(partner, ca.Pool())
	open := func(c *tls.Conn) bool {
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		ne, ok := err.(net.Error)
		return ok && ne.Timeout()
	}

	// A Kubernetes swap to a new pair: applied; the live conn stays.
	c2, k2, s2 := issue()
	publish("..2026_b", c2, k2, both)
	eventually(t, "the swapped certificate served", func() bool { return serverSerial(t, addr, ca, client).Cmp(s2) == 0 })
	if !open(live) {
		t.Fatal("a server certificate rotation closed a live conn")
	}

	// Half-written: a new certificate with the old key, then a truncated PEM: neither
	// applies; the last good pair stays served.
	c3, k3, s3 := issue()
	publish("..2026_c", c3, k2, both)
	eventually(t, "the mismatched pair counted", func() bool {
		return metrictest.Value(t, reg, "guardian_file_reloads_total", "result", "error") >= 1
	})
	if serverSerial(t, addr, ca, client).Cmp(s2) != 0 {
		t.Fatal("a certificate with another's key was applied")
	}
	publish("..2026_d", c3[:len(c3)/2], k3, both)
	eventually(t, "the truncated certificate counted", func() bool {
		return metrictest.Value(t, reg, "guardian_file_reloads_total", "result", "error") >= 2
	})
	if serverSerial(t, addr, ca, client).Cmp(s2) != 0 {
		t.Fatal("a truncated certificate was applied")
	}
	// The pair whole: applied.
	publish("..2026_e", c3, k3, both)
	eventually(t, "the whole pair served", func() bool { return serverSerial(t, addr, ca, client).Cmp(s3) == 0 })

	// The certificate file deleted, then a directory in its place: refused, counted, the
	// last good pair stays served; put back, nothing changes.
	errorsSoFar := metrictest.Value(t, reg, "guardian_file_reloads_total", "result", "error")
	crt := filepath.Join(k8s, "tls.crt")
	os.Remove(crt)
	eventually(t, "the deleted certificate counted", func() bool {
		return metrictest.Value(t, reg, "guardian_file_reloads_total", "result", "error") > errorsSoFar
	})
	os.Mkdir(crt, 0o700)
	eventually(t, "the directory in its place counted", func() bool {
		return metrictest.Value(t, reg, "guardian_file_reloads_total", "result", "error") > errorsSoFar+1
	})
	if serverSerial(t, addr, ca, client).Cmp(s3) != 0 || !open(live) {
		t.Fatal("a deleted certificate file changed what is served, or closed a conn")
	}
	os.Remove(crt)
	os.Symlink(filepath.Join("..data", "tls.crt"), crt)

	// The partner CA leaves the bundle: its conn is closed, the other stays.
	publish("..2026_f", c3, k3, ca.CertPEM())
	eventually(t, "the partner's conn closed", func() bool { return !open(partnerConn) })
	if !open(live) {
		t.Fatal("a conn of the CA still in the bundle was closed")
	}
}
