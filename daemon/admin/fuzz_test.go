package admin

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"

	"github.com/guardian-mtls/guardian/revoke"
)

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
		var req RevokeRequest
		if decodeOne(bytes.NewReader(b), &req) != nil {
			return
		}
		var again RevokeRequest
		if err := json.Unmarshal(b, &again); err != nil || again != req {
			t.Fatalf("the API accepted %q as %+v; json.Unmarshal gives %+v, %v", b, req, again, err)
		}
		if decodeOne(bytes.NewReader(append(slices.Clip(b), `{"key":"uri:spiffe://x/y"}`...)), new(RevokeRequest)) == nil {
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
