package pkitest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// CA is a certificate authority: a root, or an intermediate under another CA.
type CA struct {
	Cert   *x509.Certificate
	Key    crypto.Signer
	Parent *CA // nil for a root
}

// New returns a fresh self-signed root CA named name.
func New(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"guardian test"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key}, nil
}

// NewCA is New for tests: it fails tb on error.
func NewCA(tb testing.TB) *CA {
	tb.Helper()
	ca, err := New("guardian test root")
	if err != nil {
		tb.Fatal(err)
	}
	return ca
}

// Intermediate issues a CA certificate under ca.
func (ca *CA) Intermediate(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randSerial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"guardian test"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(5 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, Parent: ca}, nil
}

// MustIntermediate is Intermediate for tests.
func (ca *CA) MustIntermediate(tb testing.TB, name string) *CA {
	tb.Helper()
	sub, err := ca.Intermediate(name)
	if err != nil {
		tb.Fatal(err)
	}
	return sub
}

// Root returns the root at the top of ca's chain.
func (ca *CA) Root() *CA {
	for ca.Parent != nil {
		ca = ca.Parent
	}
	return ca
}

// Pool returns a pool holding ca's root.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Root().Cert)
	return p
}

// CertPEM returns ca's certificate in PEM.
func (ca *CA) CertPEM() []byte { return certPEM(ca.Cert) }

// Opts describes a leaf certificate. Zero fields get sensible defaults: a random 128-bit
// serial, validity from an hour ago to a day from now, and client and server usage.
type Opts struct {
	CommonName string
	Serial     *big.Int
	DNS        []string
	IPs        []net.IP
	URIs       []string
	Emails     []string
	NotBefore  time.Time
	NotAfter   time.Time
	// EKU replaces the default extended key usages (client and server auth).
	EKU []x509.ExtKeyUsage
	// OCSP lists OCSP responder URLs for the AIA extension.
	OCSP []string
	// CRLDistributionPoints lists the URLs of the CRLs that cover the certificate.
	CRLDistributionPoints []string
}

// Leaf is an issued end-entity certificate with its key and the intermediates above it.
type Leaf struct {
	Cert  *x509.Certificate
	Key   crypto.Signer
	Chain []*x509.Certificate // leaf first, then intermediates; the root is not included
}

// Issue signs a leaf under ca.
func (ca *CA) Issue(o Opts) (*Leaf, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	if o.Serial == nil {
		o.Serial = randSerial()
	}
	if o.NotBefore.IsZero() {
		o.NotBefore = now.Add(-time.Hour)
	}
	if o.NotAfter.IsZero() {
		o.NotAfter = now.Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          o.Serial,
		Subject:               pkix.Name{CommonName: o.CommonName, Organization: []string{"guardian test"}},
		NotBefore:             o.NotBefore,
		NotAfter:              o.NotAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		OCSPServer:            o.OCSP,
		CRLDistributionPoints: o.CRLDistributionPoints,
		DNSNames:              o.DNS,
		IPAddresses:           o.IPs,
		EmailAddresses:        o.Emails,
	}
	if o.EKU != nil {
		tmpl.ExtKeyUsage = o.EKU
	}
	for _, s := range o.URIs {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("pkitest: URI SAN %q: %w", s, err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	l := &Leaf{Cert: cert, Key: key, Chain: []*x509.Certificate{cert}}
	for p := ca; p.Parent != nil; p = p.Parent {
		l.Chain = append(l.Chain, p.Cert)
	}
	return l, nil
}

// MustIssue is Issue for tests.
func (ca *CA) MustIssue(tb testing.TB, o Opts) *Leaf {
	tb.Helper()
	l, err := ca.Issue(o)
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

// TLS returns the leaf as a tls.Certificate carrying its intermediates.
func (l *Leaf) TLS() tls.Certificate {
	c := tls.Certificate{PrivateKey: l.Key, Leaf: l.Cert}
	for _, x := range l.Chain {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// CertPEM returns the leaf and its intermediates in PEM.
func (l *Leaf) CertPEM() []byte {
	var out []byte
	for _, c := range l.Chain {
		out = append(out, certPEM(c)...)
	}
	return out
}

// KeyPEM returns the private key in PKCS #8 PEM.
func (l *Leaf) KeyPEM() []byte {
	der, err := x509.MarshalPKCS8PrivateKey(l.Key)
	if err != nil {
		panic(err) // an ECDSA key from this package always marshals
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// WriteFiles writes name.pem and name.key into dir (key mode 0600).
func (l *Leaf) WriteFiles(dir, name string) error {
	if err := os.WriteFile(filepath.Join(dir, name+".pem"), l.CertPEM(), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+".key"), l.KeyPEM(), 0o600)
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func randSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n.Add(n, big.NewInt(1))
}

// CRLOpts describes a CRL for CA.CRL. Zero times mean an hour ago and a day from now.
type CRLOpts struct {
	Number     int64
	ThisUpdate time.Time
	NextUpdate time.Time
	Entries    []x509.RevocationListEntry
}

// CRL returns a CRL (DER) that ca signs.
func (ca *CA) CRL(o CRLOpts) ([]byte, error) {
	now := time.Now()
	if o.ThisUpdate.IsZero() {
		o.ThisUpdate = now.Add(-time.Hour)
	}
	if o.NextUpdate.IsZero() {
		o.NextUpdate = now.Add(24 * time.Hour)
	}
	return x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(o.Number),
		ThisUpdate:                o.ThisUpdate,
		NextUpdate:                o.NextUpdate,
		RevokedCertificateEntries: o.Entries,
	}, ca.Cert, ca.Key)
}

// MustCRL is CRL for tests.
func (ca *CA) MustCRL(tb testing.TB, o CRLOpts) []byte {
	tb.Helper()
	der, err := ca.CRL(o)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}

// Revoked is a CRL entry for serial, revoked an hour ago with reason code reason (0: none).
func Revoked(serial *big.Int, reason int) x509.RevocationListEntry {
	return x509.RevocationListEntry{SerialNumber: serial, RevocationTime: time.Now().Add(-time.Hour).UTC().Truncate(time.Second), ReasonCode: reason}
}

// OCSPOpts describes an OCSP answer for CA.OCSP.
type OCSPOpts struct {
	// Status is ocsp.Good, ocsp.Revoked or ocsp.Unknown (golang.org/x/crypto/ocsp).
	Status int
	// RevokedAt and Reason (an RFC 5280 CRLReason code) are for ocsp.Revoked.
	RevokedAt time.Time
	Reason    int
	// Zero times mean a minute ago and an hour from now.
	ThisUpdate, NextUpdate time.Time
}

// OCSP returns the CA's signed OCSP response about leaf, which it issued.
func (ca *CA) OCSP(leaf *x509.Certificate, o OCSPOpts) ([]byte, error) {
	now := time.Now()
	if o.ThisUpdate.IsZero() {
		o.ThisUpdate = now.Add(-time.Minute)
	}
	if o.NextUpdate.IsZero() {
		o.NextUpdate = now.Add(time.Hour)
	}
	return ocsp.CreateResponse(ca.Cert, ca.Cert, ocsp.Response{
		Status: o.Status, SerialNumber: leaf.SerialNumber, RevokedAt: o.RevokedAt, RevocationReason: o.Reason,
		ThisUpdate: o.ThisUpdate, NextUpdate: o.NextUpdate,
	}, ca.Key)
}
