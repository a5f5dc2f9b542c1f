package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/guardian-mtls/guardian/pkitest"
)

// The demo PKI's identities.
const (
	clientURI  = "spiffe://guardian.demo/client"
	client2URI = "spiffe://guardian.demo/client2"
	adminURI   = "spiffe://guardian.demo/admin"
)

func runPKI(args []string, stdout, stderr io.Writer) error {
	if len(args) < 1 || args[0] != "init" {
		fmt.Fprintln(stderr, "usage: guardian pki init DIR")
		return errUsage
	}
	fs := newFlags("pki init", stderr)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: guardian pki init DIR")
		return errUsage
	}
	dir := fs.Arg(0)
	if err := writePKI(dir); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote a dev PKI to %s: ca.pem, server.pem/.key (localhost), client.pem/.key, client2.pem/.key, admin.pem/.key\n", dir)
	return nil
}

// writePKI writes a fresh CA and the demo's server, client and admin certificates to dir.
func writePKI(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	ca, err := pkitest.New("guardian demo CA")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca.CertPEM(), 0o644); err != nil {
		return err
	}
	caKey, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: caKey}), 0o600); err != nil {
		return err
	}
	year := time.Now().Add(365 * 24 * time.Hour)
	certs := []struct {
		name string
		opts pkitest.Opts
	}{
		{"server", pkitest.Opts{CommonName: "localhost", DNS: []string{"localhost", "public.localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, NotAfter: year}},
		{"client", pkitest.Opts{CommonName: "client", URIs: []string{clientURI}, NotAfter: year}},
		{"client2", pkitest.Opts{CommonName: "client2", URIs: []string{client2URI}, NotAfter: year}},
		{"admin", pkitest.Opts{CommonName: "admin", URIs: []string{adminURI}, NotAfter: year}},
	}
	for _, c := range certs {
		leaf, err := ca.Issue(c.opts)
		if err != nil {
			return err
		}
		if err := leaf.WriteFiles(dir, c.name); err != nil {
			return fmt.Errorf("write %s: %w", c.name, err)
		}
	}
	return nil
}
