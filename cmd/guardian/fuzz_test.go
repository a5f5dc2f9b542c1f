package main

import (
	"bytes"
	"encoding/json"
	"slices"
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
		for _, k := range revoke.AllKinds() {
			if key, err := revoke.KeyFor(certs[0], k); err == nil {
				if again, err := revoke.ParseKey(string(key)); err != nil || again != key {
					t.Fatalf("KeyFor(%s) = %q, which ParseKey makes %q, %v", k, key, again, err)
				}
			}
		}
	})
}

// The admin API's revoke body, through the decoder the handler uses: decoded and
// validated, or refused. A body it accepts is one object that json.Unmarshal (which
// refuses trailing data) reads the same, and the same body with a second object after it
// is refused.
func FuzzRevokeRequest(f *testing.F) {
	f.Add([]byte(`{"key":"uri:spiffe://a/b","reason":"keyCompromise"}`))
	f.Add([]byte(`{"key":"sha256:00","reason":"x"}`))
	f.Add([]byte(`{"key":"uri:spiffe://a/b"}{"key":"uri:spiffe://a/c"}`))
	f.Add([]byte(`{"key":"uri:spiffe://a/b"} trailing`))
	f.Add([]byte("{\"key\":\"uri:spiffe://a/b\"}\n"))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var req revokeRequest
		if decodeOne(bytes.NewReader(b), &req) != nil {
			return
		}
		var again revokeRequest
		if err := json.Unmarshal(b, &again); err != nil || again != req {
			t.Fatalf("the API accepted %q as %+v; json.Unmarshal gives %+v, %v", b, req, again, err)
		}
		if decodeOne(bytes.NewReader(append(slices.Clip(b), `{"key":"uri:spiffe://x/y"}`...)), new(revokeRequest)) == nil {
			t.Fatalf("the API accepts %q followed by a second object", b)
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
