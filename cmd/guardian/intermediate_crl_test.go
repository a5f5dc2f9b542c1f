package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/need"
)

// opensslIntermediate is the most common client PKI, run by the real openssl: an offline
// root, an intermediate that issues client certificates with random 20-byte serials
// (`openssl ca -rand_serial`) and publishes the CRL (`openssl ca -gencrl`).
type opensslIntermediate struct {
	t   *testing.T
	dir string
}

func (o *opensslIntermediate) run(args ...string) {
	o.t.Helper()
	cmd := exec.Command("openssl", args...)
	cmd.Dir = o.dir
	if out, err := cmd.CombinedOutput(); err != nil {
		o.t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func newOpensslIntermediate(t *testing.T, dir string) *opensslIntermediate {
	t.Helper()
	need.Tool(t, "openssl")
	o := &opensslIntermediate{t: t, dir: dir}
	ec := []string{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"}
	o.run(append([]string{"req", "-x509", "-keyout", "root.key", "-out", "root.pem", "-subj", "/O=Acme/CN=Acme Offline Root", "-days", "30",
		"-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"}, ec...)...)
	o.run(append([]string{"req", "-keyout", "inter.key", "-out", "inter.csr", "-subj", "/O=Acme/CN=Acme Devices Intermediate"}, ec...)...)
	os.WriteFile(filepath.Join(dir, "inter.ext"), []byte("basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n"), 0o644)
	o.run("x509", "-req", "-in", "inter.csr", "-CA", "root.pem", "-CAkey", "root.key", "-CAcreateserial", "-days", "30", "-extfile", "inter.ext", "-out", "inter.pem")
	os.WriteFile(filepath.Join(dir, "index.txt"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "crlnumber"), []byte("1000\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "inter.cnf"), []byte(fmt.Sprintf(`[ ca ]
default_ca = inter
[ inter ]
dir = %s
database = $dir/index.txt
new_certs_dir = $dir
crlnumber = $dir/crlnumber
serial = $dir/serial
certificate = $dir/inter.pem
private_key = $dir/inter.key
default_md = sha256
default_days = 7
default_crl_days = 7
policy = any
copy_extensions = none
x509_extensions = client
crl_extensions = crl_ext
unique_subject = no
[ any ]
commonName = supplied
[ client ]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
[ crl_ext ]
authorityKeyIdentifier = keyid:always
`, dir)), 0o644)
	return o
}

// issue makes NAME.pem (the client certificate, then the intermediate: the chain a client
// sends) and NAME.key, with a random serial.
func (o *opensslIntermediate) issue(name string) {
	o.t.Helper()
	o.run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", name+".key", "-out", name+".csr", "-subj", "/CN="+name)
	o.run("ca", "-batch", "-config", "inter.cnf", "-rand_serial", "-in", name+".csr", "-out", name+".leaf.pem", "-notext")
	leaf, err := os.ReadFile(filepath.Join(o.dir, name+".leaf.pem"))
	if err != nil {
		o.t.Fatal(err)
	}
	inter, err := os.ReadFile(filepath.Join(o.dir, "inter.pem"))
	if err != nil {
		o.t.Fatal(err)
	}
	os.WriteFile(filepath.Join(o.dir, name+".pem"), append(leaf, inter...), 0o644)
}

// revoke revokes name's certificate and publishes a new CRL to inter.crl, atomically.
func (o *opensslIntermediate) revoke(names ...string) {
	o.t.Helper()
	for _, n := range names {
		o.run("ca", "-config", "inter.cnf", "-revoke", n+".leaf.pem", "-crl_reason", "keyCompromise")
	}
	o.run("ca", "-config", "inter.cnf", "-gencrl", "-out", "inter.crl.tmp")
	if err := os.Rename(filepath.Join(o.dir, "inter.crl.tmp"), filepath.Join(o.dir, "inter.crl")); err != nil {
		o.t.Fatal(err)
	}
}

// A CRL that the intermediate signs, with only the offline root in client_ca, needs no
// configuration: until a client presents the intermediate the CRL is held and the audience
// is stale (/readyz says why); the first client to present it — a revoked one — is refused
// in that very handshake; a good one is served, and its live conn closes when the next CRL
// lists it.
func TestServeCRLOfAnIntermediateWithOpenSSL(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	o := newOpensslIntermediate(t, dir)
	o.issue("alice")
	o.issue("bob")
	o.revoke("alice")
	cfg := `
listen: "127.0.0.1:0"
admin: { listen: "127.0.0.1:0", cert: server.pem, key: server.key, client_ca: [ca.pem], allow: ["uri:spiffe://guardian.demo/admin"] }
revocation:
  store: memory
  crl: [ { file: inter.crl, every: 50ms } ]
audiences:
  - { name: devices, sni: [localhost], cert: server.pem, key: server.key, client_auth: require, client_ca: [root.pem], on_stale: closed }
`
	s := startServe(t, dir, cfg)
	d := s.demoView()
	code, body := s.readyz(t)
	if code != 503 || !strings.Contains(body, "Acme Devices Intermediate") || !strings.Contains(body, "no client has presented it") {
		t.Fatalf("/readyz before any client: %d %q; want 503 naming the intermediate the CRL waits for", code, body)
	}
	// The first client ever to present the intermediate is the revoked one: refused, on
	// first contact, though the audience was stale when its ClientHello came.
	if resp, err := d.client(t, "alice").Get("https://" + local(s.addr) + "/"); err == nil {
		resp.Body.Close()
		t.Fatalf("alice, revoked by the intermediate's CRL, was served: %s", resp.Status)
	}
	if n := metricOf(t, s, `guardian_handshake_failures_total{listener="data",reason="revoked"}`); n != 1 {
		t.Fatalf("revoked refusals = %v; want 1 (alice refused as revoked, not as stale)", n)
	}
	if code, body := s.readyz(t); code != 200 {
		t.Fatalf("/readyz once the intermediate is known: %d %q; want ready", code, body)
	}
	bob := openStream(t, d.client(t, "bob"), s.addr)
	if !strings.Contains(s.log.String(), "CRL issuer learned from a client's verified chain") {
		t.Errorf("no log line for the learned issuer:\n%s", s.log)
	}
	o.revoke("bob")
	if !streamEnds(bob, 10*time.Second) {
		t.Fatal("bob's live stream still flowing 10s after the intermediate's next CRL listed him")
	}
	if resp, err := d.client(t, "bob").Get("https://" + local(s.addr) + "/"); err == nil {
		resp.Body.Close()
		t.Fatal("bob served a new conn after his revocation")
	}
}
