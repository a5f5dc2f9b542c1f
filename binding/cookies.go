package binding

import (
	"errors"
	"slices"
	"strconv"
	"strings"
)

// Limits of guardian's own cookie parse. Browsers keep at most about 180 cookies per site
// and nginx's default header buffer is 8 KiB per line; a request past these is refused,
// never let through unchecked (Go's r.Cookies() returns nothing past 3,000 pairs, which
// an upstream's parser does not do).
const (
	DefaultMaxCookies     = 300
	DefaultMaxCookieBytes = 16 << 10
)

var (
	errTooManyCookies  = errors.New("binding: too many cookie pairs")
	errCookiesTooLarge = errors.New("binding: Cookie fields too large")
)

// cookiePair is one name=value of a Cookie field, as sent, white space trimmed.
type cookiePair struct {
	name, value string
	eq          bool // the pair had an '=': "a=" is an empty value, "a" none
}

func (p cookiePair) String() string {
	if !p.eq {
		return p.name
	}
	return p.name + "=" + p.value
}

// splitCookies tokenises every Cookie field as RFC 6265 section 5.4 and the common
// servers do: pairs separated by ';', each split at its first '='. It keeps every pair,
// valid or not, so that nothing an upstream could read goes unseen; fields holds each
// HTTP/1.1 Cookie line or HTTP/2 cookie field.
func splitCookies(fields []string, maxPairs, maxBytes int) ([]cookiePair, error) {
	size := 0
	for _, f := range fields {
		size += len(f)
	}
	if size > maxBytes {
		return nil, errCookiesTooLarge
	}
	var out []cookiePair
	for _, f := range fields {
		for seg := range strings.SplitSeq(f, ";") {
			seg = trimSpace(seg)
			if seg == "" {
				continue
			}
			name, value, eq := strings.Cut(seg, "=")
			out = append(out, cookiePair{name: trimSpace(name), value: trimSpace(value), eq: eq})
			if len(out) > maxPairs {
				return nil, errTooManyCookies
			}
		}
	}
	return out, nil
}

// trimSpace trims what net/textproto.TrimString trims: ASCII space, tab, CR and LF.
func trimSpace(s string) string {
	return strings.Trim(s, " \t\r\n")
}

// nameCandidates yields every name some upstream parser could read in one pair: the pair's
// own name when it is one word, and the name of every word the pair holds after a separator —
// in its value or in its name (Python's http.cookies ends a pair at white space and drops a
// leading "$x" or "secure" word; RFC 2965 parsers split on commas). hidden is true for all but
// the pair's own name.
func nameCandidates(p cookiePair, yield func(name string, hidden bool) bool) {
	// The whole name first: PHP reads "ci session" as ci_session.
	if !yield(p.name, false) {
		return
	}
	seg := p.name
	if p.eq {
		seg += "=" + p.value
	}
	first := true
	for seg != "" {
		i := indexSeparator(seg)
		word := seg
		if i >= 0 {
			word, seg = seg[:i], trimSeparators(seg[i:])
		} else {
			seg = ""
		}
		name, _, _ := strings.Cut(word, "=")
		if first && name == p.name {
			first = false
			continue // the pair's own name, yielded above
		}
		first = false
		if name != "" && !yield(name, true) {
			return
		}
	}
}

// isSeparator: what ends a cookie pair for some common parser — white space as Python's
// str.strip and regular expressions read it in a header decoded as Latin-1 (\x1c-\x1f,
// \x85 and \xa0 among it), and the comma. Bytes, not runes: a header need not be UTF-8, and a
// 0x85 or 0xa0 inside a UTF-8 sequence is white space to a Latin-1 reader.
func isSeparator(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\r', '\v', '\f', 0x1c, 0x1d, 0x1e, 0x1f, 0x85, 0xa0, ',':
		return true
	}
	return false
}

func indexSeparator(s string) int {
	for i := 0; i < len(s); i++ {
		if isSeparator(s[i]) {
			return i
		}
	}
	return -1
}

func trimSeparators(s string) string {
	for len(s) > 0 && isSeparator(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isSeparator(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}

// canonicalName is a cookie name as the most permissive common parser would read it:
// unquoted and unescaped (Python's http.cookies), percent-decoded and with '.' and ' '
// read as '_' and a "[…]" suffix dropped (PHP), case-folded. Two names with one canonical
// form may both reach an upstream as the same cookie.
func canonicalName(s string) string {
	s = decodeName(s)
	if i := strings.IndexByte(s, '['); i >= 0 {
		s = s[:i]
	}
	return phpName(s)
}

// canonicalNames are the forms a name takes for the common parsers: canonicalName's, and
// PHP's other readings of it — an unmatched '[' read as '_' (PHP 8), the name cut at a
// NUL byte.
func canonicalNames(s string) []string {
	out := []string{canonicalName(s)}
	raw := decodeName(s)
	if i := strings.IndexByte(raw, 0); i >= 0 {
		out = appendNew(out, phpName(strings.ReplaceAll(raw[:i], "[", "_")))
	}
	return appendNew(out, phpName(strings.ReplaceAll(raw, "[", "_")))
}

func appendNew(names []string, n string) []string {
	if slices.Contains(names, n) {
		return names
	}
	return append(names, n)
}

// decodeName undoes what the permissive parsers undo in a name: the separators around
// it, a pair of double quotes, backslash escapes, and percent-encoding, twice over.
func decodeName(s string) string {
	s = trimSeparators(s)
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = s[1 : len(s)-1]
	}
	s = unescape(s)
	for range 3 { // %2573 is %73 is s for a parser that decodes twice
		d, changed := percentDecode(s)
		if !changed {
			break
		}
		s = d
	}
	return s
}

// phpName reads '.' and ' ' as '_' (PHP's rule for request variable names) and folds case.
func phpName(s string) string {
	s = strings.NewReplacer(".", "_", " ", "_").Replace(trimSeparators(s))
	return strings.ToLower(s)
}

// unescape undoes backslash escapes, Python's three-digit octal ones included.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		if i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			b.WriteByte((s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0'))
			i += 3
			continue
		}
		i++
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

func percentDecode(s string) (string, bool) {
	if !strings.Contains(s, "%") {
		return s, false
	}
	var b strings.Builder
	changed := false
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				changed = true
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String(), changed
}

// isToken reports whether s is an RFC 9110 token: what a cookie name must be.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}
