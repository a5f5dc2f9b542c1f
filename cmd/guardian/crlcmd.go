package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/guardian-mtls/guardian/internal/pemfile"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/crl"
)

// runCRL is "guardian crl push FILE", which stores a CRL in Redis, where every node of the
// fleet loads it and applies it as it applies a CRL from a file or a URL; and "guardian crl
// list", which shows a node's CRLs in force.
func runCRL(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "list" {
		return runCRLList(args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "push" {
		fmt.Fprintln(stderr, "usage: guardian crl push FILE (--redis URL | --config FILE) [--prefix P] [--issuer-cert CA.pem]\n       guardian crl list --admin URL --admin-cert F --admin-key F --admin-ca F")
		return errUsage
	}
	fs := newFlags("crl push", stderr)
	var t targetFlags
	t.register(fs)
	issuerCert := fs.String("issuer-cert", "", "check the CRL's signature against this CA certificate `FILE` before pushing")
	var file string
	rest := args[1:]
	if len(rest) > 0 && len(rest[0]) > 0 && rest[0][0] != '-' {
		file, rest = rest[0], rest[1:]
	}
	if err := parse(fs, rest); err != nil {
		return err
	}
	if file == "" {
		fmt.Fprintln(stderr, "guardian crl push: which CRL FILE?")
		return errUsage
	}
	if t.url != "" {
		return errors.New("crl push writes to Redis: give --redis URL or --config FILE (a node's admin API does not take CRLs)")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if len(b) > crl.DefaultMaxSize {
		return fmt.Errorf("%s: %w (%d bytes)", file, crl.ErrTooLarge, len(b))
	}
	c, err := crl.Parse(b)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	n, err := c.Count()
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if _, err := crl.NewTable(c); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	if *issuerCert != "" {
		certs, err := pemfile.LoadCerts(*issuerCert)
		if err != nil {
			return err
		}
		if err := c.CheckSignatureFrom(certs[0]); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
	}
	tgt, err := t.open()
	if err != nil {
		return err
	}
	rt := tgt.(*redisTarget)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Pushed as DER: nodes read it as they read any CRL. Its slot in Redis is its CA key's
	// where the CRL names the key (authorityKeyIdentifier), so the CRL of a CA that shares
	// another's DN — a look-alike, or the same CA's next key — never overwrites the other's.
	v, err := rt.s.PushCRL(ctx, crlSlot(c), c.Raw)
	if err != nil {
		return err
	}
	number := "none"
	if c.Number != nil {
		number = c.Number.String()
	}
	fmt.Fprintf(stdout, "pushed the CRL of %s (number %s, %d entries, next update %s) as change %d; every node checks and applies it\n",
		crlIssuerName(c), number, n, c.NextUpdate.Format(time.RFC3339), v)
	return nil
}

// crlSlot names a CRL's place in Redis: the issuer DN's hash, with its key identifier when
// the CRL has one.
func crlSlot(c *crl.CRL) string {
	if len(c.AuthorityKeyID) == 0 {
		return revoke.IssuerHash(c.RawIssuer)
	}
	h := sha256.New()
	h.Write(c.RawIssuer)
	h.Write([]byte{0})
	h.Write(c.AuthorityKeyID)
	return hex.EncodeToString(h.Sum(nil))
}

func crlIssuerName(c *crl.CRL) string {
	if s := c.IssuerString(); s != "" {
		return s
	}
	return revoke.IssuerHash(c.RawIssuer)
}

func runCRLList(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("crl list", stderr)
	var af adminFlags
	af.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	views, err := c.CRLs(context.Background())
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ISSUER\tKEY\tNUMBER\tENTRIES\tTHIS UPDATE\tNEXT UPDATE\tORIGIN\tSTALE")
	for _, v := range views {
		next := "-"
		if !v.NextUpdate.IsZero() {
			next = v.NextUpdate.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%.16s\t%s\t%d\t%s\t%s\t%s\t%v\n", v.Subject, v.IssuerKey, v.Number, v.Entries, v.ThisUpdate.Format(time.RFC3339), next, v.Origin, v.Stale)
	}
	return tw.Flush()
}
