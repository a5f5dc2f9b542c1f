package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/guardian-mtls/guardian/revoke"
)

type adminFlags struct{ url, cert, key, ca string }

func (a *adminFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.url, "admin", "", "admin API `URL` of a node, e.g. https://127.0.0.1:9443")
	fs.StringVar(&a.cert, "admin-cert", "", "admin client certificate `FILE`")
	fs.StringVar(&a.key, "admin-key", "", "admin client key `FILE`")
	fs.StringVar(&a.ca, "admin-ca", "", "`FILE` of the CA that signed the admin API's server certificate")
}

func (a *adminFlags) client() (*adminClient, error) {
	return newAdminClient(a.url, a.cert, a.key, a.ca)
}

type selector struct {
	cert, by, serial, issuerCert, fingerprint, spki, uri, dns, email, subject, key string
}

func (s *selector) register(fs *flag.FlagSet) {
	fs.StringVar(&s.cert, "cert", "", "certificate `FILE` to deny (its serial key unless --by says otherwise)")
	fs.StringVar(&s.by, "by", "serial", "with --cert: which `KIND` of key to derive: serial, sha256, spki, uri, dns, email, subject")
	fs.StringVar(&s.serial, "serial", "", "serial number in `HEX`, with --issuer-cert")
	fs.StringVar(&s.issuerCert, "issuer-cert", "", "the issuing CA's certificate `FILE`, with --serial")
	fs.StringVar(&s.fingerprint, "fingerprint", "", "SHA-256 of a certificate (leaf or CA) in `HEX`")
	fs.StringVar(&s.spki, "spki", "", "SHA-256 of a SubjectPublicKeyInfo in `HEX`: every cert of that key")
	fs.StringVar(&s.uri, "uri", "", "a `URI` SAN identity, e.g. spiffe://prod/payments")
	fs.StringVar(&s.dns, "dns", "", "a DNS SAN `NAME`")
	fs.StringVar(&s.email, "email", "", "an email SAN `ADDRESS`")
	fs.StringVar(&s.subject, "subject", "", "a subject `DN` in RFC 4514 form")
	fs.StringVar(&s.key, "key", "", "a key in canonical `FORM`, e.g. sha256:9f86…")
}

// resolve turns exactly one selector into a canonical key.
func (s *selector) resolve() (revoke.Key, error) {
	set := 0
	for _, v := range []string{s.cert, s.serial, s.fingerprint, s.spki, s.uri, s.dns, s.email, s.subject, s.key} {
		if v != "" {
			set++
		}
	}
	if set != 1 {
		return "", errors.New("give exactly one of --cert, --serial, --fingerprint, --spki, --uri, --dns, --email, --subject, --key")
	}
	switch {
	case s.cert != "":
		certs, err := loadCerts(s.cert)
		if err != nil {
			return "", err
		}
		return revoke.KeyFor(certs[0], revoke.Kind(strings.ToLower(s.by)))
	case s.serial != "":
		if s.issuerCert == "" {
			return "", errors.New("--serial needs --issuer-cert: serials are unique per issuer only")
		}
		certs, err := loadCerts(s.issuerCert)
		if err != nil {
			return "", err
		}
		return revoke.ParseKey("serial:" + hexSHA256(certs[0].RawSubject) + ":" + s.serial)
	case s.fingerprint != "":
		return revoke.ParseKey("sha256:" + s.fingerprint)
	case s.spki != "":
		return revoke.ParseKey("spki:" + s.spki)
	case s.uri != "":
		return revoke.ParseKey("uri:" + s.uri)
	case s.dns != "":
		return revoke.ParseKey("dns:" + s.dns)
	case s.email != "":
		return revoke.ParseKey("email:" + s.email)
	case s.subject != "":
		return revoke.ParseKey("subject:" + s.subject)
	}
	return revoke.ParseKey(s.key)
}

func hexSHA256(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func runRevoke(args []string, stdout, stderr io.Writer, add bool) error {
	name := map[bool]string{true: "revoke", false: "unrevoke"}[add]
	fs := newFlags(name, stderr)
	var af adminFlags
	var sel selector
	af.register(fs)
	sel.register(fs)
	reason := ""
	if add {
		fs.StringVar(&reason, "reason", "", "RFC 5280 `REASON`, e.g. keyCompromise, superseded (default unspecified)")
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	key, err := sel.resolve()
	if err != nil {
		return err
	}
	if add {
		if _, err := revoke.ParseReason(reason); err != nil {
			return err
		}
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	if !add {
		if err := c.do("DELETE", "/v1/revocations?key="+url.QueryEscape(string(key)), nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "unrevoked %s\n", key)
		return nil
	}
	var resp revokeResponse
	if err := c.do("POST", "/v1/revocations", revokeRequest{Key: string(key), Reason: reason}, &resp); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revoked %s (%s)\n%s: %d live conn(s) matched and closed\n", key, resp.Entry.Reason, af.url, resp.Matched)
	return nil
}

func runList(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("list", stderr)
	var af adminFlags
	af.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var entries []revoke.Entry
	if err := c.do("GET", "/v1/revocations", nil, &entries); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tREASON\tSOURCE\tREVOKED AT")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Key, e.Reason, e.Source, e.RevokedAt.Format(time.RFC3339))
	}
	return tw.Flush()
}

func runConns(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("conns", stderr)
	var af adminFlags
	af.register(fs)
	verbose := fs.Bool("v", false, "print every key of each conn")
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	var conns []connView
	if err := c.do("GET", "/v1/conns", nil, &conns); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REMOTE\tAUDIENCE\tAGE\tIDENTITY")
	for _, v := range conns {
		id := v.Subject
		if len(v.URIs) > 0 {
			id = v.URIs[0]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Remote, v.Audience, time.Since(v.Since).Round(time.Second), id)
		if *verbose {
			for _, k := range v.Keys {
				fmt.Fprintf(tw, "\t\t\t  %s\n", k)
			}
		}
	}
	return tw.Flush()
}
