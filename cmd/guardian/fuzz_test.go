package main

import (
	"encoding/json"
	"testing"

	"github.com/guardian-mtls/guardian/internal/testpki"
	"github.com/guardian-mtls/guardian/revoke"
)

// Certificate files given to --cert, --issuer-cert and --admin-ca: any bytes give
// certificates or an error, never a panic.
func FuzzParseCerts(f *testing.F) {
	leaf := testpki.NewCA(f).MustIssue(f, testpki.Opts{CommonName: "f", URIs: []string{"spiffe://a/b"}})
	f.Add(leaf.CertPEM())
	f.Add(leaf.Cert.Raw)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		certs, err := parseCerts(b)
		if err != nil {
			return
		}
		for _, k := range revoke.Kinds {
			if key, err := revoke.KeyFor(certs[0], k); err == nil {
				if again, err := revoke.ParseKey(string(key)); err != nil || again != key {
					t.Fatalf("KeyFor(%s) = %q, which ParseKey makes %q, %v", k, key, again, err)
				}
			}
		}
	})
}

// The admin API's revoke body: decoded and validated, or refused.
func FuzzRevokeRequest(f *testing.F) {
	f.Add([]byte(`{"key":"uri:spiffe://a/b","reason":"keyCompromise"}`))
	f.Add([]byte(`{"key":"sha256:00","reason":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var req revokeRequest
		if json.Unmarshal(b, &req) != nil {
			return
		}
		k, err := revoke.ParseKey(req.Key)
		if err != nil {
			return
		}
		if _, err := revoke.ParseReason(req.Reason); err != nil {
			return
		}
		set, _ := revoke.NewSet(revoke.SetOptions{})
		if _, err := set.Add(revoke.SourceAPI, revoke.Entry{Key: k}); err != nil {
			t.Fatalf("a parsed key %q was refused by the Set: %v", k, err)
		}
	})
}
