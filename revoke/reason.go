package revoke

import "fmt"

// Reason is an RFC 5280 CRLReason name, e.g. "keyCompromise".
type Reason string

// ReasonUnspecified is the reason of an entry that gives none, and the name of every code
// RFC 5280 does not define.
const ReasonUnspecified Reason = "unspecified"

// reasonCodes is the one table of reasons: RFC 5280 section 5.3.1's CRLReason, by code,
// which CRL entries and OCSP answers (RFC 6960 section 4.2.1) both carry. 7 is not used.
// ReasonFromCode, ParseReason, AllReasons and ReasonCodeRevokes all read it.
var reasonCodes = [...]Reason{
	0: ReasonUnspecified, 1: "keyCompromise", 2: "cACompromise", 3: "affiliationChanged", 4: "superseded",
	5: "cessationOfOperation", 6: "certificateHold", 8: "removeFromCRL", 9: "privilegeWithdrawn", 10: "aACompromise",
}

// codeRemoveFromCRL is removeFromCRL's code: RFC 5280 has it only in delta CRLs, for a
// certificate released from hold (or expired), so it revokes nothing.
const codeRemoveFromCRL = 8

// AllReasons returns the RFC 5280 reason names, in the order of their codes: a new slice
// on every call.
func AllReasons() []Reason {
	out := make([]Reason, 0, len(reasonCodes))
	for _, r := range reasonCodes {
		if r != "" {
			out = append(out, r)
		}
	}
	return out
}

// ReasonFromCode returns the name of an RFC 5280 CRLReason code, as a CRL entry or an OCSP
// answer carries it; "unspecified" for a code RFC 5280 does not define (7, negative, above 10).
func ReasonFromCode(code int) Reason {
	if code < 0 || code >= len(reasonCodes) || reasonCodes[code] == "" {
		return ReasonUnspecified
	}
	return reasonCodes[code]
}

// ReasonCodeRevokes reports whether a CRL entry, or an OCSP answer of status revoked, that
// carries this CRLReason code revokes its certificate: every code does but removeFromCRL
// (8), which says that the certificate is no longer revoked. CRLs and OCSP both ask it, so
// that the two never disagree about one CA's word.
func ReasonCodeRevokes(code int) bool { return code != codeRemoveFromCRL }

// ParseReason accepts an RFC 5280 reason name in any case; "" means unspecified.
func ParseReason(s string) (Reason, error) {
	if s == "" {
		return ReasonUnspecified, nil
	}
	for _, r := range reasonCodes {
		if r != "" && len(s) == len(r) && equalFold(s, string(r)) {
			return r, nil
		}
	}
	return "", fmt.Errorf("revoke: unknown reason %q; want an RFC 5280 name such as keyCompromise or superseded", s)
}

func equalFold(a, b string) bool {
	for i := 0; i < len(a); i++ {
		x, y := a[i]|0x20, b[i]|0x20
		if x != y {
			return false
		}
	}
	return true
}
