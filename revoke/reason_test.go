package revoke_test

import (
	"slices"
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

// AllReasons lists every name ReasonFromCode gives, in the order of their codes, and
// AllReasons and AllKinds hand out copies: a caller that writes to one changes nothing.
func TestAllReasonsAndKindsAreCopies(t *testing.T) {
	var named []revoke.Reason
	for code := 0; code <= 10; code++ {
		if code != 7 {
			named = append(named, revoke.ReasonFromCode(code))
		}
	}
	rs := revoke.AllReasons()
	if !slices.Equal(rs, named) {
		t.Fatalf("AllReasons() = %q; want %q", rs, named)
	}
	rs[1] = "whatever"
	if got, err := revoke.ParseReason("keyCompromise"); err != nil || got != "keyCompromise" || revoke.AllReasons()[1] != "keyCompromise" {
		t.Fatalf("after writing to AllReasons' slice: ParseReason = %q, %v; AllReasons()[1] = %q", got, err, revoke.AllReasons()[1])
	}
	if _, err := revoke.ParseReason("whatever"); err == nil {
		t.Fatal("a name written into AllReasons' slice parses")
	}

	ks := revoke.AllKinds()
	if len(ks) != 8 || ks[0] != revoke.KindSerial || ks[7] != revoke.KindSubject {
		t.Fatalf("AllKinds() = %q", ks)
	}
	ks[0] = "bogus"
	if revoke.AllKinds()[0] != revoke.KindSerial {
		t.Fatal("writing to AllKinds' slice changed the next one")
	}
	if _, err := revoke.ParseKey("bogus:x"); err == nil {
		t.Fatal("a kind written into AllKinds' slice parses")
	}
}

// Every CRLReason code revokes but removeFromCRL (8), which CRLs and OCSP both read as no
// longer revoked.
func TestReasonCodeRevokes(t *testing.T) {
	for code := -1; code <= 11; code++ {
		if got := revoke.ReasonCodeRevokes(code); got != (code != 8) {
			t.Errorf("ReasonCodeRevokes(%d) = %v", code, got)
		}
	}
}
