package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/guardian-mtls/guardian/daemon"
	"github.com/guardian-mtls/guardian/daemon/admin"
	"github.com/guardian-mtls/guardian/internal/pemfile"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

type adminFlags struct{ url, cert, key, ca string }

func (a *adminFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.url, "admin", "", "admin API `URL` of a node, e.g. https://127.0.0.1:9443")
	fs.StringVar(&a.cert, "admin-cert", "", "admin client certificate `FILE`")
	fs.StringVar(&a.key, "admin-key", "", "admin client key `FILE`")
	fs.StringVar(&a.ca, "admin-ca", "", "`FILE` of the CA that signed the admin API's server certificate")
}

func (a *adminFlags) client() (*admin.Client, error) {
	if err := flagURL("--admin", a.url, "the admin API's URL, e.g. https://127.0.0.1:9443 (it speaks HTTPS only)", "https"); err != nil {
		return nil, err
	}
	if a.url == "" || a.cert == "" || a.key == "" || a.ca == "" {
		return nil, errors.New("--admin, --admin-cert, --admin-key and --admin-ca are all required")
	}
	return admin.NewClient(admin.ClientConfig{URL: a.url, Cert: a.cert, Key: a.key, CA: a.ca})
}

// flagURL says what is wrong with a flag's URL, naming the flag and the accepted forms.
func flagURL(name, v, want string, schemes ...string) error {
	if v == "" {
		return nil // "required" is the caller's to say
	}
	u, err := url.Parse(v)
	switch {
	case !strings.Contains(v, "://"):
		return fmt.Errorf("%s %q: not a URL; want %s", name, v, want)
	case err != nil:
		return fmt.Errorf("%s %q: %v; want %s", name, v, errors.Unwrap(err), want)
	case !slices.Contains(schemes, u.Scheme):
		return fmt.Errorf("%s %q: scheme %s; want %s", name, v, u.Scheme, want)
	case u.Host == "" && u.Scheme != "unix":
		return fmt.Errorf("%s %q: no host; want %s", name, v, want)
	}
	return nil
}

type selector struct {
	cert, by, serial, issuerCert, fingerprint, spki, uri, dns, email, subject, key string
}

func (s *selector) register(fs *flag.FlagSet) {
	fs.StringVar(&s.cert, "cert", "", "certificate `FILE` to deny: a CA's spki key (every certificate of that CA key, cross-signed copies included), a leaf's serial key, unless --by says otherwise")
	fs.StringVar(&s.by, "by", "", "with --cert: which `KIND` of key to derive: serial, sha256 (that one certificate) or spki; for a leaf also uri, dns, email, subject")
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

// resolve turns exactly one selector into a canonical key; for --cert it also says which
// key it chose and why, for the operator to read before it is applied.
func (s *selector) resolve() (revoke.Key, string, error) {
	set := 0
	for _, v := range []string{s.cert, s.serial, s.fingerprint, s.spki, s.uri, s.dns, s.email, s.subject, s.key} {
		if v != "" {
			set++
		}
	}
	if set != 1 {
		return "", "", errors.New("give exactly one of --cert, --serial, --fingerprint, --spki, --uri, --dns, --email, --subject, --key")
	}
	if s.by != "" && s.cert == "" {
		return "", "", errors.New("--by applies to --cert only")
	}
	if s.cert != "" {
		switch revoke.Kind(strings.ToLower(strings.TrimSpace(s.by))) {
		case "", revoke.KindSerial, revoke.KindSHA256, revoke.KindSPKI, revoke.KindURI, revoke.KindDNS, revoke.KindEmail, revoke.KindSubject:
		default:
			return "", "", fmt.Errorf("--by %q: unknown kind; with --cert use serial, sha256 or spki (for a leaf also uri, dns, email or subject)", s.by)
		}
		return s.certKey()
	}
	key, err := s.flagKey()
	return key, "", err
}

// certKey derives --cert's key. A CA's default is its spki key: a CA is usually also
// present as cross-signed or re-issued copies (other serials, other fingerprints, the same
// key), and a conn through any of them must be hit. A leaf's default stays its serial key.
func (s *selector) certKey() (revoke.Key, string, error) {
	certs, err := pemfile.LoadCerts(s.cert)
	if err != nil {
		return "", "", err
	}
	c := certs[0]
	isCA := c.BasicConstraintsValid && c.IsCA
	what := map[bool]string{true: "a CA certificate", false: "a leaf certificate"}[isCA]
	kind := revoke.Kind(strings.ToLower(strings.TrimSpace(s.by)))
	explicit := s.by != ""
	switch {
	case !explicit && isCA:
		kind = revoke.KindSPKI
	case !explicit:
		kind = revoke.KindSerial
	}
	switch kind {
	case revoke.KindSerial, revoke.KindSHA256, revoke.KindSPKI:
	case revoke.KindURI, revoke.KindDNS, revoke.KindEmail, revoke.KindSubject:
		if isCA {
			return "", "", fmt.Errorf("--by %s: %s is a CA certificate, and %s keys match only a conn's leaf, never its CA: use --by spki (every certificate of the CA's key), sha256 (this one certificate) or serial", s.by, s.cert, kind)
		}
	default:
		return "", "", fmt.Errorf("--by %q: unknown kind; with --cert use serial, sha256 or spki (for a leaf also uri, dns, email or subject)", s.by)
	}
	key, err := revoke.KeyFor(c, kind)
	if err != nil {
		return "", "", err
	}
	why := fmt.Sprintf("%s is %s: denying its %s key", s.cert, what, kind)
	switch {
	case explicit && kind == revoke.KindSHA256:
		why += ", as --by says: this one certificate only"
	case explicit:
		why += ", as --by says"
	case isCA:
		why += ", which every certificate of that CA key matches, cross-signed copies included (--by sha256 for this one certificate only)"
	default:
		why += " (its issuer and serial number)"
	}
	return key, why, nil
}

// flagKey is the key of a selector that names it, not a certificate file.
func (s *selector) flagKey() (revoke.Key, error) {
	switch {
	case s.serial != "":
		if s.issuerCert == "" {
			return "", errors.New("--serial needs --issuer-cert: serials are unique per issuer only")
		}
		certs, err := pemfile.LoadCerts(s.issuerCert)
		if err != nil {
			return "", err
		}
		return revoke.SerialKeyHex(certs[0].RawSubject, s.serial)
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

// targetFlags choose where the CLI acts: a node's admin API, or Redis directly.
type targetFlags struct {
	adminFlags
	redis, config, prefix string
}

func (t *targetFlags) register(fs *flag.FlagSet) {
	t.adminFlags.register(fs)
	fs.StringVar(&t.redis, "redis", "", "act on Redis directly at `URL` (redis:// or rediss://) instead of a node")
	fs.StringVar(&t.config, "config", "", "act on the Redis of this guardian.yaml `FILE`")
	fs.StringVar(&t.prefix, "prefix", "", "Redis key `PREFIX` of the fleet (default: the config's, else guardian)")
}

// target is where revocations are written and read.
type target interface {
	revoke(ctx context.Context, e revoke.Entry) (version uint64, matched int, err error)
	unrevoke(ctx context.Context, k revoke.Key) error
	list(ctx context.Context) ([]revoke.Entry, error)
	fleet(ctx context.Context) ([]redisfeed.NodeStatus, error)
	// waitApplied waits until every live node has applied version, or ctx ends.
	waitApplied(ctx context.Context, version uint64) (nodes []redisfeed.NodeStatus, missing []string, err error)
	name() string
}

func (t *targetFlags) open() (target, error) {
	set := 0
	for _, v := range []string{t.url, t.redis, t.config} {
		if v != "" {
			set++
		}
	}
	if set != 1 {
		return nil, errors.New("give one of --admin URL (a node's admin API), --redis URL, or --config FILE")
	}
	if t.url != "" {
		c, err := t.client()
		if err != nil {
			return nil, err
		}
		return &adminTarget{c}, nil
	}
	if err := flagURL("--redis", t.redis, "redis://host:port[/db], rediss://host:port for TLS, or unix:///path/to/redis.sock", "redis", "rediss", "unix"); err != nil {
		return nil, err
	}
	cc := redisfeed.ClientConfig{URL: t.redis}
	prefix := t.prefix
	if t.config != "" {
		cfg, err := daemon.Load(t.config)
		if err != nil {
			return nil, err
		}
		if cfg.Revocation.Store != "redis" {
			return nil, fmt.Errorf("%s: revocation.store is %s, not redis: use --admin with a node of it", t.config, cfg.Revocation.Store)
		}
		if cc, err = cfg.RedisClientConfig(); err != nil {
			return nil, err
		}
		if prefix == "" {
			prefix = cfg.Revocation.Redis.Prefix
		}
	}
	rdb, err := redisfeed.NewClient(cc)
	if err != nil {
		return nil, err
	}
	return &redisTarget{s: redisfeed.NewStore(rdb, prefix, 0)}, nil
}

type adminTarget struct{ c *admin.Client }

func (a *adminTarget) name() string { return a.c.URL() }

func (a *adminTarget) revoke(ctx context.Context, e revoke.Entry) (uint64, int, error) {
	resp, err := a.c.Revoke(ctx, e.Key, e.Reason)
	return resp.Version, resp.Matched, err
}

func (a *adminTarget) unrevoke(ctx context.Context, k revoke.Key) error { return a.c.Unrevoke(ctx, k) }

func (a *adminTarget) list(ctx context.Context) ([]revoke.Entry, error) { return a.c.Revocations(ctx) }

func (a *adminTarget) fleet(ctx context.Context) ([]redisfeed.NodeStatus, error) {
	return a.c.Fleet(ctx)
}

func (a *adminTarget) waitApplied(ctx context.Context, version uint64) ([]redisfeed.NodeStatus, []string, error) {
	return a.c.WaitApplied(ctx, version)
}

type redisTarget struct{ s *redisfeed.Store }

func (r *redisTarget) name() string { return "redis" }

func (r *redisTarget) revoke(ctx context.Context, e revoke.Entry) (uint64, int, error) {
	v, err := r.s.Revoke(ctx, e)
	return v, -1, err
}

func (r *redisTarget) unrevoke(ctx context.Context, k revoke.Key) error {
	_, changed, err := r.s.Unrevoke(ctx, k)
	if err == nil && !changed {
		err = fmt.Errorf("not revoked: %s", k)
	}
	return err
}

func (r *redisTarget) list(ctx context.Context) ([]revoke.Entry, error) {
	entries, bad, err := r.s.Entries(ctx)
	for f, e := range bad {
		fmt.Fprintf(os.Stderr, "warning: malformed entry %q in Redis: %v\n", f, e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Key < entries[j].Key })
	return entries, err
}

func (r *redisTarget) fleet(ctx context.Context) ([]redisfeed.NodeStatus, error) {
	return r.s.LiveNodes(ctx)
}

func (r *redisTarget) waitApplied(ctx context.Context, version uint64) ([]redisfeed.NodeStatus, []string, error) {
	return r.s.WaitApplied(ctx, version)
}

func runRevoke(args []string, stdout, stderr io.Writer, add bool) error {
	name := map[bool]string{true: "revoke", false: "unrevoke"}[add]
	fs := newFlags(name, stderr)
	var tf targetFlags
	var sel selector
	tf.register(fs)
	sel.register(fs)
	reason := ""
	if add {
		fs.StringVar(&reason, "reason", "", "RFC 5280 `REASON`, e.g. keyCompromise, superseded (default unspecified)")
	}
	wait := fs.Duration("wait", 0, "wait up to `DURATION` until every live node has applied the change, and report each")
	if err := parse(fs, args); err != nil {
		return err
	}
	key, why, err := sel.resolve()
	if err != nil {
		return err
	}
	if why != "" {
		fmt.Fprintln(stdout, why)
	}
	r, err := revoke.ParseReason(reason)
	if err != nil {
		return err
	}
	tgt, err := tf.open()
	if err != nil {
		return err
	}
	ctx := context.Background()
	if !add {
		if err := tgt.unrevoke(ctx, key); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "unrevoked %s\n", key)
		return nil
	}
	e := revoke.Entry{Key: key, Reason: r, RevokedAt: time.Now().UTC(), Source: "cli"}
	version, matched, err := tgt.revoke(ctx, e)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revoked %s (%s), version %d\n", key, r, version)
	if matched >= 0 {
		fmt.Fprintf(stdout, "%s: %d live conn(s) matched and closed\n", tgt.name(), matched)
	}
	if *wait <= 0 {
		return nil
	}
	return waitFleet(ctx, tgt, key, version, *wait, stdout)
}

// waitFleet waits, with the target's own wait, until every live node has applied version,
// and reports each node.
func waitFleet(ctx context.Context, tgt target, key revoke.Key, version uint64, wait time.Duration, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	nodes, missing, err := tgt.waitApplied(ctx, version)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tAPPLIED\tMATCHED CONNS\tLIVE CONNS")
	for _, n := range nodes {
		m := "-"
		if c, ok := n.Matched[string(key)]; ok && n.Applied >= version {
			m = fmt.Sprint(c)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\n", n.ID, n.Applied, m, n.Conns)
	}
	tw.Flush()
	switch {
	case len(nodes) == 0:
		return fmt.Errorf("no live node reported within %s", wait)
	case len(missing) > 0:
		return fmt.Errorf("%d node(s) did not confirm version %d within %s: %s", len(missing), version, wait, strings.Join(missing, ", "))
	}
	fmt.Fprintf(stdout, "all %d live node(s) applied version %d\n", len(nodes), version)
	return nil
}

func runList(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("list", stderr)
	var tf targetFlags
	tf.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	tgt, err := tf.open()
	if err != nil {
		return err
	}
	entries, err := tgt.list(context.Background())
	if err != nil {
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
	var tf targetFlags
	tf.register(fs)
	verbose := fs.Bool("v", false, "print every key of each conn")
	closeID := fs.Uint64("close", 0, "close the live conn of this `ID` (the ID column) without revoking its certificate")
	if err := parse(fs, args); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if *closeID != 0 && tf.url == "" {
		return errors.New("--close closes a conn on one node: give that node's --admin URL (Redis knows heartbeats, not conns)")
	}
	if tf.url == "" {
		// Redis knows each live node's heartbeat, not its conns one by one.
		tgt, err := tf.open()
		if err != nil {
			return err
		}
		nodes, err := tgt.fleet(context.Background())
		if err != nil {
			return err
		}
		fmt.Fprintln(tw, "NODE\tLIVE CONNS\tAPPLIED\tEVICTIONS\tHEARD")
		for _, n := range nodes {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s ago\n", n.ID, n.Conns, n.Applied, n.Evictions, time.Since(n.At).Round(time.Second))
		}
		fmt.Fprintln(tw, "(per-conn detail: guardian conns --admin URL of a node)")
		return tw.Flush()
	}
	c, err := tf.client()
	if err != nil {
		return err
	}
	if *closeID != 0 {
		if err := c.CloseConn(context.Background(), *closeID); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "closed conn %d\n", *closeID)
		return nil
	}
	conns, err := c.Conns(context.Background())
	if err != nil {
		return err
	}
	fmt.Fprintln(tw, "ID\tREMOTE\tAUDIENCE\tAGE\tIDENTITY")
	for _, v := range conns {
		id := v.Subject
		if len(v.URIs) > 0 {
			id = v.URIs[0]
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", v.ID, v.Remote, v.Audience, time.Since(v.Since).Round(time.Second), id)
		if *verbose {
			if v.AllowedBy != "" {
				fmt.Fprintf(tw, "\t\t\t\t  allowed by %s\n", v.AllowedBy)
			}
			for _, k := range v.Keys {
				fmt.Fprintf(tw, "\t\t\t\t  %s\n", k)
			}
		}
	}
	return tw.Flush()
}

func runReseed(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("reseed", stderr)
	var af adminFlags
	af.register(fs)
	yes := fs.Bool("yes", false, "write the entries back (without it, only show them)")
	if err := parse(fs, args); err != nil {
		return err
	}
	c, err := af.client()
	if err != nil {
		return err
	}
	resp, err := c.Reseed(context.Background(), *yes)
	if err != nil {
		return err
	}
	if len(resp.Missing) == 0 {
		fmt.Fprintln(stdout, "Redis holds every entry this node has; nothing to reseed")
		return nil
	}
	fmt.Fprintf(stdout, "this node holds %d entries that Redis lacks:\n", len(resp.Missing))
	for _, e := range resp.Missing {
		fmt.Fprintf(stdout, "  %s\t%s\t%s\n", e.Key, e.Reason, e.RevokedAt.Format(time.RFC3339))
	}
	if !*yes {
		fmt.Fprintln(stdout, "check them, then run again with --yes to write them back")
		return nil
	}
	fmt.Fprintf(stdout, "wrote %d entries back to Redis at version %d; every node resyncs\n", resp.Written, resp.Version)
	return nil
}
