// Package pemfile reads certificates from files as operators hand them over: every
// certificate of a PEM bundle, or one DER certificate. The daemon, its admin client and the
// CLI all read certificates through it.
package pemfile

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
)

// LoadCerts reads every certificate of a PEM file, or one DER certificate; an error names
// the file.
func LoadCerts(file string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	certs, err := ParseCerts(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return certs, nil
}

// ParseCerts reads every certificate of PEM input (blocks of other types are skipped), or
// one DER certificate.
func ParseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return nil, errors.New("no PEM certificate and not a DER certificate")
		}
		out = append(out, c)
	}
	return out, nil
}

// LoadPool reads the certificates of files into a pool.
func LoadPool(files ...string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	for _, f := range files {
		certs, err := LoadCerts(f)
		if err != nil {
			return nil, err
		}
		for _, c := range certs {
			pool.AddCert(c)
		}
	}
	return pool, nil
}
