package main

import (
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/pkitest"
)

const reloadConfig = `
listen: "127.0.0.1:0"
admin: { listen: "127.0.0.1:0", cert: server.pem, key: server.key, client_ca: [ca.pem], allow: ["uri:spiffe://guardian.demo/admin"] }
revocation: { store: memory }
audiences:
  - name: api
    sni: [localhost]
    cert: %CERT%.pem
    key: %CERT%.key
    client_ca: [%CAS%]
%PUB%`

const pubAudience = `  - { name: pub, sni: [public.localhost], cert: server.pem, key: server.key, client_auth: none }
`

func writeReloadConfig(t *testing.T, file, cert, cas, pub string) {
	t.Helper()
	c := strings.NewReplacer("%CERT%", cert, "%CAS%", cas, "%PUB%", pub).Replace(reloadConfig)
	if err := os.WriteFile(file, []byte(c), 0o644); err != nil {
		t.Fatal(err)
	}
}

// SIGHUP: the new audiences apply without dropping the conns they still trust; a conn whose
// CA left the pool and a conn of a removed audience are closed; the new server certificate
// serves new handshakes; a broken file is refused and the running configuration stays.
func TestServeReload(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	other, _ := pkitest.New("partner CA")
	os.WriteFile(filepath.Join(dir, "partner-ca.pem"), other.CertPEM(), 0o644)
	if err := other.MustIssue(t, pkitest.Opts{CommonName: "partner", URIs: []string{"spiffe://partner/x"}}).WriteFiles(dir, "partner"); err != nil {
		t.Fatal(err)
	}
	ca := loadTestCA(t, dir)
	if err := ca.MustIssue(t, pkitest.Opts{CommonName: "localhost", DNS: []string{"localhost"}}).WriteFiles(dir, "server2"); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, dir, strings.NewReplacer("%CERT%", "server", "%CAS%", "ca.pem, partner-ca.pem", "%PUB%", pubAudience).Replace(reloadConfig))
	d := s.demoView()
	kept := openStream(t, d.client(t, "client"), s.addr)
	partner := openStream(t, d.client(t, "partner"), s.addr)
	pubResp, err := d.sniClient(t, "", "public.localhost").Get("https://public.localhost/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer pubResp.Body.Close()
	pubEnded := make(chan struct{})
	go func() { io.Copy(io.Discard, pubResp.Body); close(pubEnded) }()

	// A broken file: refused, nothing changes.
	os.WriteFile(s.file, []byte("audiences: [ { name: api, sni: [localhost] "), 0o644)
	if err := s.node.Reload(); err == nil || !strings.Contains(err.Error(), s.file) {
		t.Fatalf("Reload of a broken file: %v; want a refusal naming the file", err)
	}
	metric := func(name string) string {
		t.Helper()
		resp, err := d.client(t, "admin").Get("https://" + s.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, name+" ") {
				return strings.TrimPrefix(l, name+" ")
			}
		}
		return ""
	}
	eventuallyT(t, "the broken reload counted", func() bool { return metric(`guardian_config_reloads_total{result="error"}`) == "1" })
	if streamEnds(partner, 200*time.Millisecond) {
		t.Fatal("a refused reload closed a conn")
	}
	select {
	case <-pubEnded:
		t.Fatal("a refused reload closed the public audience's conn")
	default:
	}

	// The partner CA leaves api's pool, pub is gone, and api serves a new certificate.
	writeReloadConfig(t, s.file, "server2", "ca.pem", "")
	if err := s.node.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if !streamEnds(partner, 10*time.Second) {
		t.Fatal("the partner's conn still open 10s after its CA left the pool")
	}
	select {
	case <-pubEnded:
	case <-time.After(10 * time.Second):
		t.Fatal("the removed audience's conn still open 10s after the reload")
	}
	if streamEnds(kept, 300*time.Millisecond) {
		t.Fatal("a conn the new configuration still trusts was closed")
	}
	resp, err := d.client(t, "client2").Get("https://" + local(s.addr) + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got, want := resp.TLS.PeerCertificates[0].SerialNumber, mustCert(t, filepath.Join(dir, "server2.pem")).SerialNumber; got.Cmp(want) != 0 {
		t.Fatalf("a new handshake got server certificate %x; want the reloaded one %x", got, want)
	}
	if _, err := d.client(t, "partner").Get("https://" + local(s.addr) + "/"); err == nil {
		t.Fatal("a partner certificate was served after its CA left the pool")
	}
	if metric(`guardian_evictions_total{listener="data",reason="policy"}`) != "2" {
		t.Errorf("policy evictions = %q; want 2 (partner, pub)", metric(`guardian_evictions_total{listener="data",reason="policy"}`))
	}
}

// The real signals, to runServe: SIGHUP reloads (here: the public audience is removed, so
// its handshakes fail), SIGTERM stops it.
func TestRunServeSignals(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "guardian.yaml")
	writeReloadConfig(t, file, "server", "ca.pem", pubAudience)
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- runServe([]string{"-config", file}, out, io.Discard) }()
	var addr string
	eventuallyT(t, "guardian serve listening", func() bool {
		if i := strings.Index(out.String(), "listening on "); i >= 0 {
			addr = strings.Fields(out.String()[i+len("listening on "):])[0]
			return true
		}
		return false
	})
	d := &runningDemo{dir: dir, addr: addr}
	pubOK := func() bool {
		resp, err := d.sniClient(t, "", "public.localhost").Get("https://public.localhost/")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}
	if !pubOK() {
		t.Fatal("public audience not served before the reload")
	}
	writeReloadConfig(t, file, "server", "ca.pem", "")
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	eventuallyT(t, "SIGHUP applying the new audiences", func() bool { return !pubOK() })
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("runServe after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("runServe still running 20s after SIGTERM")
	}
}

// A CRL whose CA no audience trusts yet is refused; a reload that adds the CA to an
// audience trusts its CRL too, and reads it again at once: a certificate it lists is refused,
// while another of that CA is served.
func TestServeReloadTrustsANewCAsCRL(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	partner, _ := pkitest.New("partner CA")
	os.WriteFile(filepath.Join(dir, "partner-ca.pem"), partner.CertPEM(), 0o644)
	listed := partner.MustIssue(t, pkitest.Opts{CommonName: "listed"})
	for name, l := range map[string]*pkitest.Leaf{"listed": listed, "unlisted": partner.MustIssue(t, pkitest.Opts{CommonName: "unlisted"})} {
		if err := l.WriteFiles(dir, name); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "partner.crl"), partner.MustCRL(t, pkitest.CRLOpts{Number: 1,
		Entries: []x509.RevocationListEntry{pkitest.Revoked(listed.Cert.SerialNumber, 1)}}), 0o644)
	config := func(cas string) string {
		return fmt.Sprintf(`
listen: "127.0.0.1:0"
revocation: { store: memory, crl: [ { file: partner.crl, every: 1h } ] }
audiences:
  - { name: api, sni: [localhost], cert: server.pem, key: server.key, client_ca: [%s] }
`, cas)
	}
	s := startServe(t, dir, config("ca.pem"))
	d := s.demoView()
	served := func(name string) bool {
		resp, err := d.client(t, name).Get("https://" + local(s.addr) + "/")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}
	if served("unlisted") {
		t.Fatal("a partner certificate was served before any audience trusts the partner CA")
	}
	if err := os.WriteFile(s.file, []byte(config("ca.pem, partner-ca.pem")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.node.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	eventuallyT(t, "the partner CA trusted after the reload", func() bool { return served("unlisted") })
	eventuallyT(t, "the partner CRL applied after the reload", func() bool { return !served("listed") })
	if !served("client") {
		t.Fatal("a certificate of the first CA was refused after the reload")
	}
}
