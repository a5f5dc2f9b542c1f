package revoke

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Short attribute names that pkix.RDNSequence.String prints, and so accepts back.
var attrOIDs = map[string]asn1.ObjectIdentifier{
	"C":            {2, 5, 4, 6},
	"O":            {2, 5, 4, 10},
	"OU":           {2, 5, 4, 11},
	"CN":           {2, 5, 4, 3},
	"SERIALNUMBER": {2, 5, 4, 5},
	"L":            {2, 5, 4, 7},
	"ST":           {2, 5, 4, 8},
	"STREET":       {2, 5, 4, 9},
	"POSTALCODE":   {2, 5, 4, 17},
}

// canonSubject parses an RFC 4514 distinguished name and re-serialises it the way
// KeysOf renders a certificate's subject, so that "cn = Alice , O=Acme" and
// "CN=Alice,O=Acme" are the same key.
func canonSubject(s string) (string, error) {
	rdns, err := splitDN(s)
	if err != nil {
		return "", err
	}
	// RFC 4514 writes the last RDN of the DER sequence first.
	seq := make(pkix.RDNSequence, len(rdns))
	for i, rdn := range rdns {
		set := make(pkix.RelativeDistinguishedNameSET, 0, len(rdn))
		for _, atv := range rdn {
			eq := strings.IndexByte(atv, '=')
			if eq <= 0 {
				return "", fmt.Errorf("subject: %q is not TYPE=VALUE", atv)
			}
			typ, val := strings.Trim(atv[:eq], " "), trimDN(atv[eq+1:])
			oid, ok := attrOIDs[strings.ToUpper(typ)]
			if !ok {
				oid, err = parseOID(typ)
				if err != nil {
					return "", fmt.Errorf("subject: attribute type %q: %v", typ, err)
				}
			}
			var v any
			if strings.HasPrefix(val, "#") {
				der, err := hex.DecodeString(val[1:])
				if err != nil {
					return "", fmt.Errorf("subject: value %q: bad hex", val)
				}
				var rv asn1.RawValue
				if rest, err := asn1.Unmarshal(der, &rv); err != nil || len(rest) != 0 {
					return "", fmt.Errorf("subject: value %q: not one DER value", val)
				}
				v = rv
			} else {
				u, err := unescapeDN(val)
				if err != nil {
					return "", fmt.Errorf("subject: value %q: %v", val, err)
				}
				for i := 0; i < len(u); i++ {
					if u[i] < 0x20 || u[i] == 0x7f {
						return "", fmt.Errorf("subject: value %q has a control character", val)
					}
				}
				v = u
			}
			set = append(set, pkix.AttributeTypeAndValue{Type: oid, Value: v})
		}
		seq[len(rdns)-1-i] = set
	}
	out := seq.String()
	if out == "" {
		return "", errors.New("subject: empty")
	}
	return out, nil
}

func parseOID(s string) (asn1.ObjectIdentifier, error) {
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return nil, errors.New("unknown short name and not a dotted OID")
	}
	oid := make(asn1.ObjectIdentifier, len(parts))
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return nil, errors.New("not a dotted OID")
		}
		oid[i] = n
	}
	return oid, nil
}

// splitDN splits on unescaped ',' into RDNs and on unescaped '+' into attributes.
func splitDN(s string) ([][]string, error) {
	var rdns [][]string
	var cur []string
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '\\':
			if i+1 >= len(s) {
				return nil, errors.New("subject: trailing backslash")
			}
			b.WriteByte(c)
			b.WriteByte(s[i+1])
			i++
		case ',', ';':
			cur = append(cur, b.String())
			b.Reset()
			rdns = append(rdns, cur)
			cur = nil
		case '+':
			cur = append(cur, b.String())
			b.Reset()
		default:
			b.WriteByte(c)
		}
	}
	cur = append(cur, b.String())
	rdns = append(rdns, cur)
	return rdns, nil
}

func unescapeDN(v string) (string, error) {
	if !strings.Contains(v, "\\") {
		return v, nil
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '\\' {
			b.WriteByte(v[i])
			continue
		}
		if i+1 >= len(v) {
			return "", errors.New("trailing backslash")
		}
		if i+2 < len(v) && isHex(v[i+1:i+3]) {
			x, _ := hex.DecodeString(v[i+1 : i+3])
			b.Write(x)
			i += 2
			continue
		}
		b.WriteByte(v[i+1])
		i++
	}
	return b.String(), nil
}

// trimDN drops the spaces RFC 4514 allows around a value, keeping an escaped trailing one.
func trimDN(v string) string {
	v = strings.TrimLeft(v, " ")
	for strings.HasSuffix(v, " ") && !strings.HasSuffix(v, "\\ ") {
		v = v[:len(v)-1]
	}
	return v
}
