package clip

import "unicode/utf8"

// Ellipsis is what String appends to a string it cut.
const Ellipsis = "…"

// String returns s if it is at most n bytes long; otherwise its first n bytes followed by
// Ellipsis, less the first bytes of a UTF-8 sequence the cut would split (at most
// utf8.UTFMax-1 of them), so that valid UTF-8 stays valid. A negative n counts as 0. The
// result is never longer than max(n, 0)+len(Ellipsis) bytes.
func String(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := max(n, 0) // < len(s)
	// A continuation byte at s[i] means the cut splits a sequence: move the cut back to the
	// sequence's first byte. A valid sequence has at most UTFMax-1 continuation bytes, so
	// that bounds the walk also for invalid input (a run of continuation bytes).
	for k := 0; k < utf8.UTFMax-1 && i > 0 && !utf8.RuneStart(s[i]); k++ {
		i--
	}
	return s[:i] + Ellipsis
}
