package revoke_test

import (
	"testing"

	"github.com/guardian-mtls/guardian/revoke"
)

// ReasonFromCode names RFC 5280 section 5.3.1's codes, and every name it returns is one
// ParseReason accepts back unchanged.
func TestReasonFromCode(t *testing.T) {
	want := map[int]revoke.Reason{
		-1: "unspecified", 0: "unspecified", 1: "keyCompromise", 2: "cACompromise", 3: "affiliationChanged",
		4: "superseded", 5: "cessationOfOperation", 6: "certificateHold", 7: "unspecified",
		8: "removeFromCRL", 9: "privilegeWithdrawn", 10: "aACompromise", 11: "unspecified", 255: "unspecified",
	}
	for code, name := range want {
		got := revoke.ReasonFromCode(code)
		if got != name {
			t.Errorf("ReasonFromCode(%d) = %q; want %q", code, got, name)
		}
		if back, err := revoke.ParseReason(string(got)); err != nil || back != got {
			t.Errorf("ParseReason(%q) = %q, %v; want it unchanged", got, back, err)
		}
	}
}
