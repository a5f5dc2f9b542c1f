// Package pkitest is a small certificate authority for tests, examples and throw-away
// development PKIs, as net/http/httptest is a server for tests: roots, intermediates and
// leaves with chosen serials, SANs and validity; CRLs; OCSP responses (through
// golang.org/x/crypto/ocsp). `guardian pki init` and guardian's own tests and examples use
// it; so can an embedder's tests.
//
//	ca := pkitest.NewCA(t)
//	server := ca.MustIssue(t, pkitest.Opts{DNS: []string{"localhost"}})
//	alice := ca.MustIssue(t, pkitest.Opts{CommonName: "alice", URIs: []string{"spiffe://example/alice"}})
//	crl := ca.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: []x509.RevocationListEntry{pkitest.Revoked(alice.Cert.SerialNumber, 1)}})
//
// It is for tests and development only: keys are generated in memory and written
// unencrypted, and nothing is checked for production use. It never talks to the network.
package pkitest
