package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	xocsp "golang.org/x/crypto/ocsp"

	"github.com/redis/go-redis/v9"

	"github.com/guardian-mtls/guardian/internal/pemfile"
	"github.com/guardian-mtls/guardian/internal/redistest"
	"github.com/guardian-mtls/guardian/pkitest"
)

// loadTestCA reads the CA that writePKI wrote, to sign CRLs with.
func loadTestCA(t *testing.T, dir string) *pkitest.CA {
	t.Helper()
	certs, err := pemfile.LoadCerts(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return &pkitest.CA{Cert: certs[0], Key: key.(crypto.Signer)}
}

func serialOf(t *testing.T, dir, name string) *big.Int {
	t.Helper()
	certs, err := pemfile.LoadCerts(filepath.Join(dir, name+".pem"))
	if err != nil {
		t.Fatal(err)
	}
	return certs[0].SerialNumber
}

// guardian serve takes revocations from a CRL file and from CRLs pushed with `guardian crl
// push`, and each ends the live conn of the certificate it lists, not the others'.
func TestServeCRLFileAndPush(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	ca := loadTestCA(t, dir)
	crlFile := filepath.Join(dir, "ca.crl")
	writeCRL := func(number int64, names ...string) {
		var entries []x509.RevocationListEntry
		for _, n := range names {
			entries = append(entries, pkitest.Revoked(serialOf(t, dir, n), 1))
		}
		der := ca.MustCRL(t, pkitest.CRLOpts{Number: number, Entries: entries})
		tmp := crlFile + ".tmp"
		if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Rename(tmp, crlFile)
	}
	writeCRL(1)
	srv := redistest.Start(t, redistest.Options{})
	cfg := fmt.Sprintf(serveConfig, fmt.Sprintf("store: redis\n  redis: { url: %q }\n  crl: [ { file: ca.crl, every: 50ms } ]", srv.URL()), "")
	s := startServe(t, dir, cfg)
	d := s.demoView()
	victim := openStream(t, d.client(t, "client"), s.addr)
	other := openStream(t, d.client(t, "client2"), s.addr)

	writeCRL(2, "client")
	if !streamEnds(victim, 10*time.Second) {
		t.Fatal("client's stream still flowing 10s after the CRL file listed it")
	}
	if streamEnds(other, 200*time.Millisecond) {
		t.Fatal("client2's stream ended with a CRL that does not list it")
	}

	// A newer CRL of the same CA, pushed through Redis, lists client2 as well.
	der := ca.MustCRL(t, pkitest.CRLOpts{Number: 3, Entries: []x509.RevocationListEntry{
		pkitest.Revoked(serialOf(t, dir, "client"), 1), pkitest.Revoked(serialOf(t, dir, "client2"), 1)}})
	pushed := filepath.Join(dir, "pushed.crl")
	if err := os.WriteFile(pushed, der, 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := d.cli(t, "crl", "push", pushed, "--redis", srv.URL(), "--issuer-cert", filepath.Join(dir, "ca.pem"))
	if code != 0 || !strings.Contains(out, "number 3, 2 entries") {
		t.Fatalf("crl push: exit %d: %s", code, out)
	}
	if !streamEnds(other, 10*time.Second) {
		t.Fatal("client2's stream still flowing 10s after the pushed CRL listed it")
	}
	out, code = d.cli(t, append([]string{"crl", "list"}, d.adminArgs("admin")...)...)
	if code != 0 || !strings.Contains(out, "CN=guardian demo CA") || !strings.Contains(out, "  3  ") || !strings.Contains(out, "redis") {
		t.Fatalf("crl list: exit %d:\n%s\nwant the demo CA's CRL number 3 from redis", code, out)
	}
	// Refused in the handshake: a certificate admin.allow does not list holds no admin conn.
	if out, code := d.cli(t, append([]string{"crl", "list"}, d.adminArgs("server")...)...); code == 0 || !strings.Contains(out, "tls:") {
		t.Fatalf("crl list with a non-admin certificate: exit %d: %s", code, out)
	}
	// A CRL signed by another CA is refused by the CLI before it reaches Redis.
	foreign, _ := pkitest.New("guardian demo CA")
	bad := filepath.Join(dir, "foreign.crl")
	os.WriteFile(bad, foreign.MustCRL(t, pkitest.CRLOpts{Number: 9}), 0o644)
	if out, code := d.cli(t, "crl", "push", bad, "--redis", srv.URL(), "--issuer-cert", filepath.Join(dir, "ca.pem")); code == 0 || !strings.Contains(out, "signature") {
		t.Fatalf("a foreign CRL pushed: exit %d: %s", code, out)
	}
	if out, code := d.cli(t, "crl", "push", filepath.Join(dir, "ca.pem"), "--redis", srv.URL()); code == 0 || !strings.Contains(out, "CERTIFICATE") {
		t.Fatalf("a certificate pushed as a CRL: exit %d: %s", code, out)
	}
}

// A configured CRL that cannot be read makes the node stale: audiences with on_stale:
// closed refuse new handshakes and /readyz says why, until the CRL is in force.
func TestServeUnreadableCRLIsStale(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	cfg := fmt.Sprintf(serveConfig, fmt.Sprintf("store: memory\n  crl: [ { url: \"http://%s/ca.crl\", refresh: 1h, timeout: 1s } ]", addr), "")
	s := startServe(t, dir, cfg)
	d := s.demoView()
	if _, err := d.client(t, "client").Get("https://" + local(s.addr) + "/"); err == nil {
		t.Fatal("an on_stale: closed audience served while its CRL could not be read")
	}
	resp, err := d.client(t, "admin").Get("https://" + s.admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode == 200 || !strings.Contains(string(body), "not loaded") {
		t.Fatalf("/readyz = %s %q; want not ready, naming the CRL", resp.Status, body)
	}
}

// An audience with ocsp mode hard serves a client its responder calls good, and ends the
// live conn when a background re-check hears "revoked"; the other client's conn stays.
func TestServeOCSPHard(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	ca := loadTestCA(t, dir)
	var mu sync.Mutex
	revoked := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req, err := xocsp.ParseRequest(body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		mu.Lock()
		tmpl := xocsp.Response{Status: xocsp.Good, SerialNumber: req.SerialNumber, ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour)}
		if revoked[req.SerialNumber.String()] {
			tmpl.Status, tmpl.RevokedAt = xocsp.Revoked, time.Now().Add(-time.Second)
		}
		mu.Unlock()
		der, _ := xocsp.CreateResponse(ca.Cert, ca.Cert, tmpl, ca.Key)
		w.Write(der)
	}))
	defer srv.Close()
	cfg := fmt.Sprintf(serveConfig, fmt.Sprintf("store: memory\n  ocsp: { mode: hard, responder: %q, max_age: 1s, recheck: 100ms }", srv.URL), "")
	s := startServe(t, dir, cfg)
	d := s.demoView()
	victim := openStream(t, d.client(t, "client"), s.addr)
	other := openStream(t, d.client(t, "client2"), s.addr)
	mu.Lock()
	revoked[serialOf(t, dir, "client").String()] = true
	mu.Unlock()
	if !streamEnds(victim, 10*time.Second) {
		t.Fatal("client's stream still flowing 10s after its responder said revoked")
	}
	if streamEnds(other, 300*time.Millisecond) {
		t.Fatal("client2's stream ended; its responder says good")
	}
	if _, err := d.client(t, "client").Get("https://" + local(s.addr) + "/"); err == nil {
		t.Fatal("a revoked client was served a new conn")
	}
}

// The CLI's --config reaches a fleet's Redis the way guardian serve does, TLS and ACL user
// included: a rediss:// Redis whose certificate only the configured CA vouches for.
func TestCLIConfigUsesRedisTLS(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	ca := loadTestCA(t, dir)
	if err := ca.MustIssue(t, pkitest.Opts{CommonName: "redis", DNS: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}).WriteFiles(dir, "redis"); err != nil {
		t.Fatal(err)
	}
	srv := redistest.Start(t, redistest.Options{
		TLS:   &redistest.TLSFiles{Cert: filepath.Join(dir, "redis.pem"), Key: filepath.Join(dir, "redis.key"), CA: filepath.Join(dir, "ca.pem")},
		Users: []string{"default off", "guardian on >s3cret ~{guardian}:* +@all"},
	})
	cfg := filepath.Join(dir, "guardian.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(serveConfig, fmt.Sprintf("store: redis\n  redis: { url: %q, ca: ca.pem }", "rediss://guardian:s3cret@"+srv.Addr()+"/0"), "")), 0o644)
	d := &runningDemo{dir: dir}
	if out, code := d.cli(t, "revoke", "--config", cfg, "--uri", clientURI); code != 0 {
		t.Fatalf("revoke --config over TLS: exit %d: %s", code, out)
	}
	if out, code := d.cli(t, "list", "--config", cfg); code != 0 || !strings.Contains(out, clientURI) {
		t.Fatalf("list --config over TLS: exit %d: %s", code, out)
	}
}

// guardian restarted on a Redis fleet: the revocations are in force from the first conn the
// new process accepts (it reads Redis's snapshot before it listens), including one written
// while no node was running.
func TestServeRedisRestartEnforcesFromTheFirstConn(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	srv := redistest.Start(t, redistest.Options{})
	cfg := fmt.Sprintf(serveConfig, fmt.Sprintf("store: redis\n  redis: { url: %q }", srv.URL()), "")
	s := startServe(t, dir, cfg)
	d := s.demoView()
	if out, code := d.cli(t, "revoke", "--redis", srv.URL(), "--uri", clientURI); code != 0 {
		t.Fatalf("revoke: %s", out)
	}
	s.stop()
	// Written while no node runs.
	if out, code := d.cli(t, "revoke", "--redis", srv.URL(), "--cert", filepath.Join(dir, "client2.pem")); code != 0 {
		t.Fatalf("revoke while down: %s", out)
	}
	s2 := startServe(t, dir, cfg)
	d2 := s2.demoView()
	for _, name := range []string{"client", "client2"} {
		if _, err := d2.client(t, name).Get("https://" + local(s2.addr) + "/"); err == nil {
			t.Fatalf("%s, revoked in Redis, was served on the restarted node's first conns", name)
		}
	}
	resp, err := d2.client(t, "admin").Get("https://" + local(s2.addr) + "/")
	if err != nil {
		t.Fatalf("an unrevoked client refused after the restart: %v", err)
	}
	resp.Body.Close()
}

// Two CAs with one DN and different keys (a key rollover) each push a CRL through Redis:
// each keeps its own slot there, so a node that starts afterwards loads both, and
// `guardian crl list` tells them apart by key (issue 13, item 4).
func TestCRLPushSameDNKeepsBothCRLs(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	var pems []string
	for i, name := range []string{"old", "new"} {
		ca, err := pkitest.New("rolling CA")
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, name+"-ca.pem"), ca.CertPEM(), 0o644)
		pems = append(pems, name+"-ca.pem")
		file := filepath.Join(dir, name+".crl")
		os.WriteFile(file, ca.MustCRL(t, pkitest.CRLOpts{Number: int64(10 - 9*i), Entries: []x509.RevocationListEntry{pkitest.Revoked(big.NewInt(int64(5+i)), 1)}}), 0o644)
		d := &runningDemo{dir: dir}
		if out, code := d.cli(t, "crl", "push", file, "--redis", srv.URL(), "--issuer-cert", filepath.Join(dir, name+"-ca.pem")); code != 0 {
			t.Fatalf("crl push %s: %s", name, out)
		}
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	if n, _ := rdb.HLen(context.Background(), "{guardian}:crls").Result(); n != 2 {
		t.Fatalf("Redis holds %d CRL slots after two same-DN CAs pushed; want 2", n)
	}
	s := startServe(t, dir, fmt.Sprintf(serveConfig, fmt.Sprintf("store: redis\n  redis: { url: %q }", srv.URL()), "")+
		fmt.Sprintf("  - { name: rolling, sni: [public.localhost], cert: server.pem, key: server.key, client_ca: [%s, %s] }\n", pems[0], pems[1]))
	d := s.demoView()
	var out string
	eventuallyT(t, "both CRLs in force on a node started after the pushes", func() bool {
		out, _ = d.cli(t, append([]string{"crl", "list"}, d.adminArgs("admin")...)...)
		return strings.Count(out, "CN=rolling CA") == 2
	})
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || strings.Fields(lines[1])[3] == strings.Fields(lines[2])[3] {
		t.Fatalf("crl list:\n%s\nwant two rows with different keys", out)
	}
}
