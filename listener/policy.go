package listener

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/guardian-mtls/guardian/revoke"
)

// Policy admits the clients whose verified chain matches one of its patterns; an audience
// with a Policy refuses the others in the handshake (full and resumed alike). Build one
// with ParsePolicy.
type Policy struct {
	rules []rule
}

type rule struct {
	text  string
	match func(leaf *x509.Certificate, leafKeys []revoke.Key, chain []*x509.Certificate) bool
}

// ParsePolicy parses identity patterns, any one of which admits a client:
//
//	uri:spiffe://prod/payments/*   a URI SAN; * is one path segment, a final ** one or more
//	dns:*.svc.internal             a DNS SAN; a leading *. is one label
//	email:ops@example.com          an email SAN
//	subject:CN=billing,O=Acme      every attribute given is in the subject DN (RFC 4514), and
//	                               the DN holds no other value of a type named (one CN only)
//	spki:<hex> / sha256:<hex>      the client certificate's key or the certificate itself
//	issuer:<hex>                   a CA (its certificate's SHA-256) in the verified chain
//
// Names are compared in the canonical forms of revocation keys (revoke.KeysOf): DNS names
// and email domains case-folded, hex lower-cased.
func ParsePolicy(patterns ...string) (*Policy, error) {
	if len(patterns) == 0 {
		return nil, errors.New("listener: an allow policy needs at least one pattern")
	}
	p := &Policy{}
	for i, s := range patterns {
		r, err := parseRule(s)
		if err != nil {
			return nil, fmt.Errorf("listener: allow[%d] %q: %w", i, s, err)
		}
		p.rules = append(p.rules, r)
	}
	return p, nil
}

// String returns the patterns, comma-separated.
func (p *Policy) String() string {
	out := make([]string, len(p.rules))
	for i, r := range p.rules {
		out[i] = r.text
	}
	return strings.Join(out, ", ")
}

// Admits returns the pattern that admits a client of these verified chains, or "" and false.
func (p *Policy) Admits(chains [][]*x509.Certificate) (pattern string, ok bool) {
	for _, ch := range chains {
		if len(ch) == 0 {
			continue
		}
		leafKeys := revoke.KeysOf(ch[:1])
		for _, r := range p.rules {
			if r.match(ch[0], leafKeys, ch) {
				return r.text, true
			}
		}
	}
	return "", false
}

func parseRule(s string) (rule, error) {
	kind, v, ok := strings.Cut(s, ":")
	if !ok || v == "" {
		return rule{}, errors.New("want KIND:VALUE, KIND one of uri, dns, email, subject, spki, sha256, issuer")
	}
	r := rule{text: s}
	switch kind {
	case "uri":
		segs := strings.Split(v, "/")
		for i, seg := range segs {
			if strings.Contains(seg, "*") && seg != "*" && seg != "**" {
				return rule{}, fmt.Errorf("%q: * and ** stand for whole path segments", seg)
			}
			if seg == "**" && i != len(segs)-1 {
				return rule{}, errors.New("** stands for the rest of the path: it must be the last segment")
			}
		}
		if !strings.Contains(v, "*") {
			k, err := revoke.ParseKey(s)
			if err != nil {
				return rule{}, err
			}
			return exactKey(r, k), nil
		}
		r.match = func(_ *x509.Certificate, keys []revoke.Key, _ []*x509.Certificate) bool {
			for _, k := range keys {
				if u, ok := strings.CutPrefix(string(k), "uri:"); ok && globSegments(segs, strings.Split(u, "/")) {
					return true
				}
			}
			return false
		}
		return r, nil
	case "dns":
		if rest, ok := strings.CutPrefix(v, "*."); ok {
			k, err := revoke.ParseKey("dns:" + rest)
			if err != nil {
				return rule{}, err
			}
			if strings.Contains(rest, "*") {
				return rule{}, errors.New("only a leading *. label may be a wildcard")
			}
			suffix := "." + strings.TrimPrefix(string(k), "dns:")
			r.match = func(_ *x509.Certificate, keys []revoke.Key, _ []*x509.Certificate) bool {
				for _, k := range keys {
					if d, ok := strings.CutPrefix(string(k), "dns:"); ok {
						if label, ok := strings.CutSuffix(d, suffix); ok && label != "" && !strings.ContainsAny(label, ".*") {
							return true
						}
					}
				}
				return false
			}
			return r, nil
		}
		if strings.Contains(v, "*") {
			return rule{}, errors.New("only a leading *. label may be a wildcard")
		}
		k, err := revoke.ParseKey(s)
		if err != nil {
			return rule{}, err
		}
		return exactKey(r, k), nil
	case "email", "spki", "sha256":
		k, err := revoke.ParseKey(s)
		if err != nil {
			return rule{}, err
		}
		// The leaf's own keys only: a CA's pin is issuer:.
		return exactKey(r, k), nil
	case "issuer":
		k, err := revoke.ParseKey("sha256:" + v)
		if err != nil {
			return rule{}, err
		}
		want := strings.TrimPrefix(string(k), "sha256:")
		r.match = func(_ *x509.Certificate, _ []revoke.Key, chain []*x509.Certificate) bool {
			for _, c := range chain[1:] {
				if sum := sha256.Sum256(c.Raw); hex.EncodeToString(sum[:]) == want {
					return true
				}
			}
			return false
		}
		return r, nil
	case "subject":
		attrs, err := parseDN(v)
		if err != nil {
			return rule{}, err
		}
		r.match = func(leaf *x509.Certificate, _ []revoke.Key, _ []*x509.Certificate) bool {
			// Every value the certificate holds of a type the pattern names must be one the
			// pattern gives: a certificate with CN=billing and CN=ops is not billing alone
			// (Go reports the last CN, ops; another reader may take the first).
			for _, got := range leaf.Subject.Names {
				named, listed := false, false
				for _, want := range attrs {
					if got.Type.Equal(want.Type) {
						named = true
						s, ok := got.Value.(string)
						listed = listed || (ok && s == want.Value)
					}
				}
				if named && !listed {
					return false
				}
			}
			for _, want := range attrs {
				found := false
				for _, got := range leaf.Subject.Names {
					if s, ok := got.Value.(string); ok && got.Type.Equal(want.Type) && s == want.Value {
						found = true
						break
					}
				}
				if !found {
					return false
				}
			}
			return true
		}
		return r, nil
	}
	return rule{}, fmt.Errorf("unknown kind %q; want uri, dns, email, subject, spki, sha256 or issuer", kind)
}

// exactKey matches a leaf identity key exactly, in its canonical form.
func exactKey(r rule, k revoke.Key) rule {
	r.match = func(_ *x509.Certificate, keys []revoke.Key, _ []*x509.Certificate) bool {
		for _, got := range keys {
			if got == k {
				return true
			}
		}
		return false
	}
	return r
}

// globSegments matches path segments against a pattern's: * is any one segment, a final **
// one or more. A wildcard never matches an empty, dot or dot-dot segment, nor one holding a
// percent-escape (%2F would be a slash to some readers): SPIFFE IDs allow none of them.
func globSegments(pat, segs []string) bool {
	wild := func(s string) bool { return s != "" && s != "." && s != ".." && !strings.Contains(s, "%") }
	for i, p := range pat {
		if p == "**" {
			if len(segs) <= i {
				return false
			}
			for _, s := range segs[i:] {
				if !wild(s) {
					return false
				}
			}
			return true
		}
		if i >= len(segs) || (p == "*" && !wild(segs[i])) || (p != "*" && p != segs[i]) {
			return false
		}
	}
	return len(segs) == len(pat)
}

// dnAttributes are the attribute names a subject pattern may use (RFC 4514 and RFC 4519).
var dnAttributes = map[string]asn1.ObjectIdentifier{
	"CN": {2, 5, 4, 3}, "SERIALNUMBER": {2, 5, 4, 5}, "C": {2, 5, 4, 6}, "L": {2, 5, 4, 7},
	"ST": {2, 5, 4, 8}, "STREET": {2, 5, 4, 9}, "O": {2, 5, 4, 10}, "OU": {2, 5, 4, 11},
	"POSTALCODE": {2, 5, 4, 17}, "UID": {0, 9, 2342, 19200300, 100, 1, 1}, "DC": {0, 9, 2342, 19200300, 100, 1, 25},
}

type dnAttr struct {
	Type  asn1.ObjectIdentifier
	Value string
}

// parseDN reads an RFC 4514 DN string (name=value pairs separated by , or +, values with
// backslash escapes, \, or \2C) into attributes.
func parseDN(s string) ([]dnAttr, error) {
	var out []dnAttr
	for len(s) > 0 {
		name, rest, ok := strings.Cut(s, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want NAME=VALUE", s)
		}
		oid, known := dnAttributes[strings.ToUpper(strings.TrimSpace(name))]
		if !known {
			return nil, fmt.Errorf("attribute %q: want one of CN, O, OU, C, L, ST, STREET, POSTALCODE, SERIALNUMBER, UID, DC", name)
		}
		var v strings.Builder
		i := 0
		for ; i < len(rest); i++ {
			c := rest[i]
			if c == ',' || c == '+' {
				break
			}
			if c != '\\' {
				v.WriteByte(c)
				continue
			}
			if i+1 >= len(rest) {
				return nil, errors.New("a trailing backslash")
			}
			if n := rest[i+1]; strings.IndexByte(`,+"\<>;=# `, n) >= 0 {
				v.WriteByte(n)
				i++
				continue
			}
			if i+2 >= len(rest) {
				return nil, errors.New("a backslash escape must be a special character or two hex digits")
			}
			b, err := hex.DecodeString(rest[i+1 : i+3])
			if err != nil {
				return nil, errors.New("a backslash escape must be a special character or two hex digits")
			}
			v.Write(b)
			i += 2
		}
		if v.Len() == 0 {
			return nil, fmt.Errorf("attribute %s has no value", name)
		}
		out = append(out, dnAttr{oid, v.String()})
		if i >= len(rest) {
			break
		}
		s = rest[i+1:]
		if s == "" {
			return nil, errors.New("a trailing separator")
		}
	}
	return out, nil
}
