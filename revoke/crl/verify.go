package crl

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Signature algorithm identifiers, as the DER contents of their OIDs.
var (
	oidRSAPSS = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a}
	sigAlgs   = []struct {
		oid []byte
		alg x509.SignatureAlgorithm
	}{
		{[]byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05}, x509.SHA1WithRSA},
		{[]byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b}, x509.SHA256WithRSA},
		{[]byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c}, x509.SHA384WithRSA},
		{[]byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d}, x509.SHA512WithRSA},
		{[]byte{0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01}, x509.ECDSAWithSHA1},
		{[]byte{0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}, x509.ECDSAWithSHA256},
		{[]byte{0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03}, x509.ECDSAWithSHA384},
		{[]byte{0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04}, x509.ECDSAWithSHA512},
		{[]byte{0x2b, 0x65, 0x70}, x509.PureEd25519},
	}
	pssHashes = []struct {
		oid []byte
		alg x509.SignatureAlgorithm
	}{
		{[]byte{0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01}, x509.SHA256WithRSAPSS},
		{[]byte{0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02}, x509.SHA384WithRSAPSS},
		{[]byte{0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03}, x509.SHA512WithRSAPSS},
	}
)

// signatureAlgorithm maps an AlgorithmIdentifier (DER) to crypto/x509's name for it;
// UnknownSignatureAlgorithm when it is none that crypto/x509 verifies.
func signatureAlgorithm(ai cryptobyte.String) x509.SignatureAlgorithm {
	var seq, oid cryptobyte.String
	if !ai.ReadASN1(&seq, cbasn1.SEQUENCE) || !seq.ReadASN1(&oid, cbasn1.OBJECT_IDENTIFIER) {
		return x509.UnknownSignatureAlgorithm
	}
	for _, a := range sigAlgs {
		if bytes.Equal(oid, a.oid) {
			return a.alg
		}
	}
	if !bytes.Equal(oid, oidRSAPSS) {
		return x509.UnknownSignatureAlgorithm
	}
	// RSASSA-PSS-params: the hash is in [0]; crypto/x509 verifies PSS with the salt as long
	// as the hash and MGF1 over the same hash, and so rejects other parameters itself.
	var params, hashAlg, hashOID cryptobyte.String
	if !seq.ReadASN1(&params, cbasn1.SEQUENCE) ||
		!params.ReadASN1(&hashAlg, cbasn1.Tag(0).ContextSpecific().Constructed()) ||
		!hashAlg.ReadASN1(&hashAlg, cbasn1.SEQUENCE) || !hashAlg.ReadASN1(&hashOID, cbasn1.OBJECT_IDENTIFIER) {
		return x509.UnknownSignatureAlgorithm
	}
	for _, h := range pssHashes {
		if bytes.Equal(hashOID, h.oid) {
			return h.alg
		}
	}
	return x509.UnknownSignatureAlgorithm
}

// ErrSignature is wrapped by CheckSignatureFrom's errors.
var ErrSignature = errors.New("crl: signature check failed")

// CheckSignatureFrom checks that issuer signed the CRL: the CRL's issuer is the
// certificate's subject, the certificate is a CA allowed to sign CRLs, the key identifiers
// agree when both are present, and the signature verifies.
func (c *CRL) CheckSignatureFrom(issuer *x509.Certificate) error {
	if !bytes.Equal(c.RawIssuer, issuer.RawSubject) {
		return fmt.Errorf("%w: the CRL's issuer is not %q", ErrSignature, issuer.Subject)
	}
	if !issuer.BasicConstraintsValid || !issuer.IsCA {
		return fmt.Errorf("%w: %q is not a CA certificate", ErrSignature, issuer.Subject)
	}
	if issuer.KeyUsage != 0 && issuer.KeyUsage&x509.KeyUsageCRLSign == 0 {
		return fmt.Errorf("%w: %q may not sign CRLs (no cRLSign key usage)", ErrSignature, issuer.Subject)
	}
	if len(c.AuthorityKeyID) > 0 && len(issuer.SubjectKeyId) > 0 && !bytes.Equal(c.AuthorityKeyID, issuer.SubjectKeyId) {
		return fmt.Errorf("%w: signed by another key of %q (authority key ID %x, the certificate's is %x)",
			ErrSignature, issuer.Subject, c.AuthorityKeyID, issuer.SubjectKeyId)
	}
	if c.SignatureAlgorithm == x509.UnknownSignatureAlgorithm {
		return fmt.Errorf("%w: unknown signature algorithm", ErrSignature)
	}
	if err := issuer.CheckSignature(c.SignatureAlgorithm, c.RawTBS, c.Signature); err != nil {
		return fmt.Errorf("%w: %v", ErrSignature, err)
	}
	return nil
}
