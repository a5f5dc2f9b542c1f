package pemfile_test

import (
	"testing"

	"github.com/guardian-mtls/guardian/internal/pemfile"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// Certificate files given to --cert, --issuer-cert and --admin-ca: any bytes give
// certificates or an error, never a panic.
func FuzzParseCerts(f *testing.F) {
	leaf := pkitest.NewCA(f).MustIssue(f, pkitest.Opts{CommonName: "f", URIs: []string{"spiffe://a/b"}})
	f.Add(leaf.CertPEM())
	f.Add(leaf.Cert.Raw)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := pemfile.ParseCerts(b)
		if err != nil {
			return
		}
		for _, k := range revoke.AllKinds() {
			if key, err := revoke.KeyFor(certs[0], k); err == nil {
				if again, err := revoke.ParseKey(string(key)); err != nil || again != key {
					t.Fatalf("KeyFor(%s) = %q, which ParseKey makes %q, %v", k, key, again, err)
				}
			}
		}
	})
}
