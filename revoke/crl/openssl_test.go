package crl_test

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guardian-mtls/guardian/internal/need"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/crl"
)

// opensslCA is a CA run by the real openssl binary, with an index file that says which
// serials are revoked (openssl ca's database).
type opensslCA struct {
	t    *testing.T
	dir  string
	cert *x509.Certificate
}

func newOpensslCA(t *testing.T) *opensslCA {
	t.Helper()
	need.Tool(t, "openssl")
	dir := t.TempDir()
	o := &opensslCA{t: t, dir: dir}
	o.run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", filepath.Join(dir, "ca.key"), "-out", filepath.Join(dir, "ca.pem"), "-subj", "/CN=openssl test CA",
		"-days", "30", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
	cnf := fmt.Sprintf(`[ ca ]
default_ca = CA_default
[ CA_default ]
dir = %s
database = $dir/index.txt
crlnumber = $dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
default_crl_days = 7
crl_extensions = crl_ext
[ crl_ext ]
authorityKeyIdentifier = keyid:always
`, dir)
	o.write("ca.cnf", cnf)
	o.write("crlnumber", "1000\n")
	b, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if o.cert, err = x509.ParseCertificate(blk.Bytes); err != nil {
		t.Fatal(err)
	}
	return o
}

func (o *opensslCA) write(name, s string) {
	o.t.Helper()
	if err := os.WriteFile(filepath.Join(o.dir, name), []byte(s), 0o600); err != nil {
		o.t.Fatal(err)
	}
}

func (o *opensslCA) run(args ...string) []byte {
	o.t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		o.t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// gencrl writes the index (one line per serial: "R reason", "R" or "V") and has openssl
// make a CRL from it, in PEM.
func (o *opensslCA) gencrl(index [][2]string) []byte {
	o.t.Helper()
	var b strings.Builder
	for i, e := range index {
		status, revoked := "R", "251101120000Z"
		switch {
		case e[1] == "valid":
			status, revoked = "V", ""
		case e[1] != "":
			revoked += "," + e[1]
		}
		fmt.Fprintf(&b, "%s\t301231235959Z\t%s\t%s\tunknown\t/CN=c%d\n", status, revoked, e[0], i)
	}
	o.write("index.txt", b.String())
	out := filepath.Join(o.dir, "crl.pem")
	o.run("ca", "-config", filepath.Join(o.dir, "ca.cnf"), "-gencrl", "-out", out)
	crlPEM, err := os.ReadFile(out)
	if err != nil {
		o.t.Fatal(err)
	}
	return crlPEM
}

func (o *opensslCA) key(serialHex string) revoke.Key {
	n, ok := new(big.Int).SetString(serialHex, 16)
	if !ok {
		o.t.Fatalf("bad serial %q", serialHex)
	}
	return revoke.KeySerialKey(o.cert.RawSubject, o.cert.RawSubjectPublicKeyInfo, n)
}

// CRLs that `openssl ca -gencrl` makes — v2, a CRL number, reason codes, 20-byte serials,
// serials whose DER needs a leading zero byte — are read and applied correctly, and a
// second CRL after a hold is released and a new certificate revoked is applied as a diff.
func TestOpensslCRLs(t *testing.T) {
	o := newOpensslCA(t)
	set := newSet(t)
	var changes []revoke.Change
	set.Subscribe(func(c revoke.Change) { changes = append(changes, c) })
	a := newApplier(t, set, nil, o.cert)

	const (
		twenty   = "7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF01" // 20 bytes
		twenty0  = "8AFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF02" // 20 bytes; 21 in DER, with a leading 0x00
		leading0 = "FF00000000000001"                         // a leading 0x00 in DER
	)
	index := [][2]string{
		{"01", "keyCompromise"}, {"02", "certificateHold"}, {twenty, "superseded"}, {twenty0, "CACompromise"},
		{leading0, ""}, {"05", "valid"}, {"06", "removeFromCRL"},
	}
	first := o.gencrl(index)
	res, err := a.Apply(first, "openssl")
	if err != nil {
		t.Fatal(err)
	}
	if res.Number == nil || res.Number.Int64() != 0x1000 || res.Entries != 5 {
		t.Fatalf("applied number %v with %d entries; want 4096 and 5 (a valid and a removeFromCRL serial are not revoked)", res.Number, res.Entries)
	}
	want := map[string]revoke.Reason{"01": "keyCompromise", "02": "certificateHold", twenty: "superseded", twenty0: "cACompromise", leading0: "unspecified"}
	for serial, reason := range want {
		e, ok := set.Lookup(o.key(serial))
		if !ok || e.Reason != reason || e.RevokedAt.Year() != 2025 {
			t.Errorf("serial %s: %+v, %v; want revoked in 2025 for %s", serial, e, ok, reason)
		}
	}
	for _, serial := range []string{"05", "06", "03"} {
		if set.Has(o.key(serial)) {
			t.Errorf("serial %s is revoked; it should not be", serial)
		}
	}
	// The standard library agrees on the serials.
	blk, _ := pem.Decode(first)
	std, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(std.RevokedCertificateEntries) != 6 { // crypto/x509 lists the removeFromCRL entry too
		t.Fatalf("crypto/x509 read %d entries; want 6", len(std.RevokedCertificateEntries))
	}

	// Serial 02 leaves hold, 09 is revoked.
	index[1] = [2]string{"02", "valid"}
	index = append(index, [2]string{"09", "keyCompromise"})
	res, err = a.Apply(o.gencrl(index), "openssl")
	if err != nil {
		t.Fatal(err)
	}
	last := changes[len(changes)-1]
	if res.Number.Int64() != 0x1001 || len(last.Added) != 1 || last.Added[0].Key != o.key("09") ||
		len(last.Removed) != 1 || last.Removed[0] != o.key("02") {
		t.Fatalf("number %v, change %+v; want 4097 adding 09 and removing 02", res.Number, last)
	}
	if set.Has(o.key("02")) || !set.Has(o.key("09")) {
		t.Errorf("after the second CRL: 02 revoked %v, 09 revoked %v; want false, true", set.Has(o.key("02")), set.Has(o.key("09")))
	}
	// The first CRL again is a rollback, and changes nothing.
	if _, err := a.Apply(first, "openssl"); !errors.Is(err, crl.ErrRollback) {
		t.Fatalf("the first CRL again: %v; want ErrRollback", err)
	}
	if set.Has(o.key("02")) || !set.Has(o.key("09")) {
		t.Error("a refused rollback changed the Set")
	}
}
