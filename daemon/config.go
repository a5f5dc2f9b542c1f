package daemon

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.yaml.in/yaml/v3"

	"github.com/guardian-mtls/guardian/binding"
	"github.com/guardian-mtls/guardian/internal/pemfile"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/ocsp"
)

// Config is guardian.yaml: what a Node runs. Load or Parse read one; a Config built in
// code is given its defaults and validated by New.
type Config struct {
	Listen           string   `yaml:"listen"`
	HandshakeTimeout Duration `yaml:"handshake_timeout"`
	// ShutdownTimeout is how long in-flight requests may run after SIGTERM (default 10s).
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// MaxHandshakes bounds handshakes in progress; past it the oldest is shed (default 1024).
	MaxHandshakes int `yaml:"max_handshakes"`
	// MaxConns bounds the conns held, in their handshake or served (0: no bound). Unset,
	// it is the process's file descriptor limit less a reserve for upstreams, Redis and
	// files. At the bound, conns without a client certificate are shed first.
	MaxConns   *int             `yaml:"max_conns"`
	Admin      AdminConfig      `yaml:"admin"`
	Revocation RevocationConfig `yaml:"revocation"`
	Audiences  []AudienceConfig `yaml:"audiences"`

	// file is where it was read from, for errors; relative paths are relative to its
	// directory ("" for a Config built in code: relative to the working directory).
	file string
}

// AdminConfig is the admin listener: mTLS with its own CA.
type AdminConfig struct {
	Listen   string   `yaml:"listen"`
	Cert     string   `yaml:"cert"`
	Key      string   `yaml:"key"`
	ClientCA []string `yaml:"client_ca"`
	// Allow lists the identity keys (e.g. uri:spiffe://ops/admin) whose certificates may use
	// the API; empty means any certificate the admin CA verifies.
	Allow []string `yaml:"allow"`
}

// RevocationConfig says where revocations come from.
type RevocationConfig struct {
	Store        string         `yaml:"store"` // redis | embedded | memory
	Redis        RedisConfig    `yaml:"redis"`
	Embedded     EmbeddedConfig `yaml:"embedded"`
	MaxStaleness Duration       `yaml:"max_staleness"`
	Expired      string         `yaml:"expired"` // evict | keep
	CRL          []CRLConfig    `yaml:"crl"`
	// CRLIssuers are CA certificates whose CRLs are trusted besides the audiences'
	// client_ca (an intermediate, whose CRL a root in client_ca does not vouch for).
	CRLIssuers []string   `yaml:"crl_issuers"`
	OCSP       OCSPConfig `yaml:"ocsp"`
}

// OCSPConfig is how guardian asks OCSP responders. Each audience chooses its mode; mode here
// is the default for audiences that do not.
type OCSPConfig struct {
	Mode string `yaml:"mode"` // off | soft | hard
	// Timeout bounds a handshake's wait for an answer that is not cached (default 2s).
	Timeout Duration `yaml:"timeout"`
	// MaxAge caps how long an answer is used, and is its lifetime without nextUpdate (1h).
	MaxAge Duration `yaml:"max_age"`
	// Recheck is how often live conns' certificates are looked at, to re-ask before their
	// answers expire (default 30s).
	Recheck Duration `yaml:"recheck"`
	// Responder, if set, is asked instead of each certificate's AIA OCSP URL.
	Responder string `yaml:"responder"`
	// MaxResponseSize caps a response in bytes (default 64 KiB).
	MaxResponseSize int64 `yaml:"max_response_size"`
}

// AudienceOCSP is an audience's OCSP policy.
type AudienceOCSP struct {
	Mode string `yaml:"mode"` // off | soft | hard; default revocation.ocsp.mode
}

// CRLConfig is one CRL source: a file or a URL. CRLs pushed through Redis (guardian crl
// push) need no entry here.
type CRLConfig struct {
	File string `yaml:"file"`
	URL  string `yaml:"url"`
	// Every is how often a file is checked for changes (default 2s).
	Every Duration `yaml:"every"`
	// Refresh is the longest time between fetches of a URL (default 5m); a CRL whose
	// nextUpdate comes sooner is fetched then.
	Refresh Duration `yaml:"refresh"`
	// Timeout bounds one fetch (default 30s).
	Timeout Duration `yaml:"timeout"`
	// MaxSize caps the CRL in bytes (default 128 MiB).
	MaxSize int64 `yaml:"max_size"`
}

// RedisConfig selects a single server (url), Sentinel (master_name + addrs) or Cluster
// (addrs without master_name).
type RedisConfig struct {
	URL        string   `yaml:"url"`
	Addrs      []string `yaml:"addrs"`
	MasterName string   `yaml:"master_name"`
	Username   string   `yaml:"username"`
	Password   string   `yaml:"password"`
	DB         int      `yaml:"db"`
	TLS        bool     `yaml:"tls"`
	CA         string   `yaml:"ca"`
	Prefix     string   `yaml:"prefix"`
	MaxLen     int64    `yaml:"max_len"`
	// NodeID names this node in heartbeats; default host name and listen port.
	NodeID string `yaml:"node_id"`
}

// EmbeddedConfig is the local store's file.
type EmbeddedConfig struct {
	Path string `yaml:"path"`
}

// AudienceConfig is one audience on the port.
type AudienceConfig struct {
	Name       string   `yaml:"name"`
	SNI        []string `yaml:"sni"`
	Default    bool     `yaml:"default"`
	Cert       string   `yaml:"cert"`
	Key        string   `yaml:"key"`
	ClientAuth string   `yaml:"client_auth"` // none | optional | require
	ClientCA   []string `yaml:"client_ca"`
	OnStale    string   `yaml:"on_stale"` // open | closed
	Upstream   string   `yaml:"upstream"`
	// UpstreamTimeouts bound the proxy's dial, its wait for the response headers, and how
	// long an idle upstream conn is kept (defaults 5s, 60s, 90s). Streams and WebSockets
	// run for as long as both sides keep them.
	UpstreamTimeouts UpstreamTimeouts      `yaml:"upstream_timeouts"`
	SessionBinding   *SessionBindingConfig `yaml:"session_binding"`
	TokenBinding     *TokenBindingConfig   `yaml:"token_binding"`
	OCSP             AudienceOCSP          `yaml:"ocsp"`
	// IdleTimeout closes a conn with no request in flight for this long, from its
	// handshake on (default 30s where client_auth is none or optional, else 5m).
	IdleTimeout Duration `yaml:"idle_timeout"`
	// MinBodyRate is the average, in bytes a second, a request body must keep up after
	// its first idle_timeout (default 500 where client_auth is none or optional, else none;
	// 0: none), as Apache's mod_reqtimeout MinRate.
	MinBodyRate *int `yaml:"min_body_rate"`
	// MaxUpstreamConns bounds the conns to the upstream (default: three quarters of the
	// descriptors kept beside max_conns, shared among the audiences with an upstream, 16 to
	// 1024 each).
	MaxUpstreamConns int `yaml:"max_upstream_conns"`
	// MaxConns bounds the audience's conns (unset or 0: no bound of its own).
	MaxConns int `yaml:"max_conns"`
	// MaxConnsPerClient bounds one client address's conns (default 256 where client_auth
	// is none or optional, else none; 0: no bound).
	MaxConnsPerClient *int `yaml:"max_conns_per_client"`
	// UnderscoreHeaders is what happens to request headers with '_' in their names:
	// drop (the default, as nginx), allow, or reject (400).
	UnderscoreHeaders string `yaml:"underscore_headers"`
}

// UpstreamTimeouts are an audience's proxy timeouts.
type UpstreamTimeouts struct {
	Dial           Duration `yaml:"dial"`
	ResponseHeader Duration `yaml:"response_header"`
	Idle           Duration `yaml:"idle"`
}

// SessionBindingConfig binds the named session cookies (set by the upstream or the echo) to
// the client certificate of the conn they were set on.
type SessionBindingConfig struct {
	Cookies []string `yaml:"cookies"`
	// Key is a file holding the sealing key (at least 32 bytes); nodes of a fleet share
	// it. Keys lists several, for rotation: the first seals, every one opens.
	Key  string   `yaml:"key"`
	Keys []string `yaml:"keys"`
}

// keyFiles are the session binding's key files, the sealing one first.
func (sb *SessionBindingConfig) keyFiles() []string {
	if sb.Key != "" {
		return append([]string{sb.Key}, sb.Keys...)
	}
	return sb.Keys
}

// TokenBindingConfig requires an RFC 8705 certificate-bound JWT on every request.
type TokenBindingConfig struct {
	Issuer     string   `yaml:"issuer"`
	Audience   string   `yaml:"audience"`
	Keys       []string `yaml:"keys"`       // PEM public keys or certificates, or HMAC secret files
	Algorithms []string `yaml:"algorithms"` // the allow-list, e.g. [ES256]
	Leeway     Duration `yaml:"leeway"`     // default 30s
}

// Duration is a time.Duration written as "10s" in YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: bad duration %q (want e.g. 10s, 5m)", n.Line, s)
	}
	if v < 0 {
		return fmt.Errorf("line %d: negative duration %q", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// configError names the file and the field.
func configError(file, field, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %s", file, field, fmt.Sprintf(format, args...))
}

// Load reads, parses and validates a configuration file; nothing is started.
func Load(file string) (*Config, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	return Parse(file, b)
}

// File returns the file the configuration was read from, or "".
func (c *Config) File() string { return c.file }

// name is the configuration's name in errors.
func (c *Config) name() string {
	if c.file == "" {
		return "configuration"
	}
	return c.file
}

// maxConfigBytes bounds a configuration file.
const maxConfigBytes = 4 << 20

// Parse parses and validates the configuration b, read from file (relative paths are
// relative to its directory); unknown fields are refused.
func Parse(file string, b []byte) (*Config, error) {
	if len(b) > maxConfigBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", file, maxConfigBytes)
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %v", file, strings.ReplaceAll(err.Error(), "yaml: unmarshal errors:\n  ", ""))
	}
	c.file = file
	c.applyDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// applyDefaults fills in what the configuration leaves unset. It is idempotent, and runs
// before validate, which then checks the result and changes nothing.
func (c *Config) applyDefaults() {
	setDur := func(d *Duration, def time.Duration) {
		if *d == 0 {
			*d = Duration(def)
		}
	}
	setStr := func(s *string, def string) {
		if *s == "" {
			*s = def
		}
	}
	setStr(&c.Listen, ":8443")
	setDur(&c.HandshakeTimeout, 10*time.Second)
	setDur(&c.ShutdownTimeout, 10*time.Second)
	r := &c.Revocation
	setStr(&r.Store, "embedded")
	if r.Store == "embedded" {
		setStr(&r.Embedded.Path, "guardian.db")
	}
	setDur(&r.MaxStaleness, 30*time.Second)
	setStr(&r.Expired, "evict")
	setDur(&r.OCSP.Recheck, 30*time.Second)
	for i := range c.Audiences {
		a := &c.Audiences[i]
		setStr(&a.ClientAuth, "require")
		setStr(&a.OnStale, "open")
		setStr(&a.OCSP.Mode, r.OCSP.Mode)
		if a.Upstream != "" {
			ut := &a.UpstreamTimeouts
			setDur(&ut.Dial, 5*time.Second)
			setDur(&ut.ResponseHeader, 60*time.Second)
			setDur(&ut.Idle, 90*time.Second)
		}
		anonymous := a.ClientAuth != "require"
		if anonymous {
			setDur(&a.IdleTimeout, 30*time.Second)
		} else {
			setDur(&a.IdleTimeout, 5*time.Minute)
		}
		// Bounds for audiences whose clients may be anonymous; unset means the default,
		// 0 means none.
		for _, b := range []struct {
			v    **int
			anon int
		}{{&a.MinBodyRate, 500}, {&a.MaxConnsPerClient, 256}} {
			if *b.v == nil {
				n := 0
				if anonymous {
					n = b.anon
				}
				*b.v = &n
			}
		}
	}
}

// checkURL says what is wrong with raw as a URL of one of schemes with a host, or "".
func checkURL(raw string, schemes ...string) string {
	u, err := url.Parse(raw)
	if err == nil && slices.Contains(schemes, u.Scheme) && (u.Host != "" || u.Scheme == "unix") {
		return ""
	}
	want := make([]string, len(schemes))
	for i, s := range schemes {
		want[i] = s + "://"
	}
	return fmt.Sprintf("%q is not a %s URL", raw, strings.Join(want, " or "))
}

// validate checks a configuration whose defaults are applied; it reads no file and
// changes nothing.
func (c *Config) validate() error {
	f := c.name()
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return configError(f, "listen", "%q is not host:port", c.Listen)
	}
	if c.MaxHandshakes < 0 {
		return configError(f, "max_handshakes", "negative")
	}
	if c.MaxConns != nil && *c.MaxConns < 0 {
		return configError(f, "max_conns", "negative")
	}
	r := &c.Revocation
	switch r.Store {
	case "redis", "embedded", "memory":
	default:
		return configError(f, "revocation.store", "%q; want redis, embedded or memory", r.Store)
	}
	if r.Store == "redis" {
		rc := r.Redis
		switch {
		case rc.URL == "" && len(rc.Addrs) == 0:
			return configError(f, "revocation.redis", "store is redis but neither url nor addrs is set")
		case rc.URL != "" && len(rc.Addrs) > 0:
			return configError(f, "revocation.redis", "set url (one server) or addrs (sentinel or cluster), not both")
		case rc.URL != "":
			if why := checkURL(rc.URL, "redis", "rediss", "unix"); why != "" {
				return configError(f, "revocation.redis.url", "%s", why)
			}
		}
	}
	switch r.Expired {
	case "evict", "keep":
	default:
		return configError(f, "revocation.expired", "%q; want evict or keep", r.Expired)
	}
	for i, cs := range r.CRL {
		field := fmt.Sprintf("revocation.crl[%d]", i)
		switch {
		case (cs.File == "") == (cs.URL == ""):
			return configError(f, field, "set file or url, one of them")
		case cs.URL != "":
			if why := checkURL(cs.URL, "http", "https"); why != "" {
				return configError(f, field+".url", "%s", why)
			}
			if cs.Every != 0 {
				return configError(f, field+".every", "is for files; a URL has refresh")
			}
		default:
			if cs.Refresh != 0 || cs.Timeout != 0 {
				return configError(f, field, "refresh and timeout are for URLs; a file has every")
			}
		}
		if cs.MaxSize < 0 {
			return configError(f, field+".max_size", "negative")
		}
	}
	if len(r.CRL) > 0 && len(r.CRLIssuers) == 0 && !anyClientCA(c.Audiences) {
		return configError(f, "revocation.crl", "no CA is trusted to sign CRLs: give audiences a client_ca, or list the CAs in revocation.crl_issuers")
	}
	if _, err := ocsp.ParseMode(r.OCSP.Mode); err != nil {
		return configError(f, "revocation.ocsp.mode", "%q; want off, soft or hard", r.OCSP.Mode)
	}
	if r.OCSP.Responder != "" {
		if why := checkURL(r.OCSP.Responder, "http", "https"); why != "" {
			return configError(f, "revocation.ocsp.responder", "%s", why)
		}
	}
	if r.OCSP.MaxResponseSize < 0 {
		return configError(f, "revocation.ocsp.max_response_size", "negative")
	}
	if c.Admin.Listen != "" {
		a := &c.Admin
		if a.Cert == "" || a.Key == "" || len(a.ClientCA) == 0 {
			return configError(f, "admin", "listen is set, so cert, key and client_ca are required (the admin API is mTLS only)")
		}
		for i, k := range a.Allow {
			if _, err := revoke.ParseKey(k); err != nil {
				return configError(f, fmt.Sprintf("admin.allow[%d]", i), "%v", err)
			}
		}
	}
	if len(c.Audiences) == 0 {
		return configError(f, "audiences", "at least one audience is required")
	}
	names := map[string]bool{}
	for i := range c.Audiences {
		if err := c.validateAudience(i, names); err != nil {
			return err
		}
	}
	return nil
}

func (c *Config) validateAudience(i int, names map[string]bool) error {
	f := c.name()
	a := &c.Audiences[i]
	field := fmt.Sprintf("audiences[%d]", i)
	if a.Name == "" {
		return configError(f, field+".name", "required")
	}
	if names[a.Name] {
		return configError(f, field+".name", "%q is used by another audience", a.Name)
	}
	names[a.Name] = true
	if a.Cert == "" || a.Key == "" {
		return configError(f, field, "cert and key are required")
	}
	switch a.ClientAuth {
	case "none", "optional", "require":
	default:
		return configError(f, field+".client_auth", "%q; want none, optional or require", a.ClientAuth)
	}
	if a.ClientAuth != "none" && len(a.ClientCA) == 0 {
		return configError(f, field+".client_ca", "client_auth is %s, so client_ca is required", a.ClientAuth)
	}
	switch a.OnStale {
	case "open", "closed":
	default:
		return configError(f, field+".on_stale", "%q; want open or closed", a.OnStale)
	}
	if a.Upstream != "" {
		if why := checkURL(a.Upstream, "http", "https"); why != "" {
			return configError(f, field+".upstream", "%s", why)
		}
	} else if a.UpstreamTimeouts != (UpstreamTimeouts{}) {
		return configError(f, field+".upstream_timeouts", "set, but the audience has no upstream")
	}
	if m, err := ocsp.ParseMode(a.OCSP.Mode); err != nil {
		return configError(f, field+".ocsp.mode", "%q; want off, soft or hard", a.OCSP.Mode)
	} else if m != ocsp.Off && a.ClientAuth == "none" {
		return configError(f, field+".ocsp.mode", "is %s, but the audience asks for no client certificate", a.OCSP.Mode)
	}
	if sb := a.SessionBinding; sb != nil {
		if len(sb.Cookies) == 0 {
			return configError(f, field+".session_binding.cookies", "name the session cookies to bind")
		}
		if len(sb.keyFiles()) == 0 {
			return configError(f, field+".session_binding.key", "required: a file with a key of at least 32 bytes (or keys: a list, the sealing one first)")
		}
		if a.ClientAuth != "require" {
			return configError(f, field+".session_binding", "binds sessions to client certificates, but client_auth is %s: a session set without a certificate would be bound to none; use client_auth: require", a.ClientAuth)
		}
	}
	if a.MaxConns < 0 {
		return configError(f, field+".max_conns", "negative")
	}
	if a.MaxUpstreamConns < 0 {
		return configError(f, field+".max_upstream_conns", "negative")
	}
	if *a.MinBodyRate < 0 {
		return configError(f, field+".min_body_rate", "negative")
	}
	if *a.MaxConnsPerClient < 0 {
		return configError(f, field+".max_conns_per_client", "negative")
	}
	if _, err := binding.ParseUnderscores(a.UnderscoreHeaders); err != nil {
		return configError(f, field+".underscore_headers", "%q; want drop, allow or reject", a.UnderscoreHeaders)
	}
	if tb := a.TokenBinding; tb != nil {
		switch {
		case tb.Issuer == "" || tb.Audience == "":
			return configError(f, field+".token_binding", "issuer and audience are required")
		case len(tb.Keys) == 0:
			return configError(f, field+".token_binding.keys", "at least one key file is required")
		case len(tb.Algorithms) == 0:
			return configError(f, field+".token_binding.algorithms", "an explicit allow-list is required, e.g. [ES256]")
		case a.ClientAuth == "none":
			return configError(f, field+".token_binding", "binds tokens to client certificates, but client_auth is none")
		}
		for j, alg := range tb.Algorithms {
			if jwt.GetSigningMethod(alg) == nil || strings.EqualFold(alg, "none") {
				return configError(f, fmt.Sprintf("%s.token_binding.algorithms[%d]", field, j), "%q is not a JWT signature algorithm guardian accepts", alg)
			}
		}
	}
	return nil
}

// ocspModes returns each audience's OCSP mode, by name, for those that use OCSP.
func (c *Config) ocspModes() map[string]ocsp.Mode {
	out := map[string]ocsp.Mode{}
	for _, a := range c.Audiences {
		if m, _ := ocsp.ParseMode(a.OCSP.Mode); m != ocsp.Off {
			out[a.Name] = m
		}
	}
	return out
}

func anyClientCA(auds []AudienceConfig) bool {
	for _, a := range auds {
		if len(a.ClientCA) > 0 {
			return true
		}
	}
	return false
}

// crlIssuers loads the CAs whose CRLs are trusted: every audience's client_ca, and
// revocation.crl_issuers.
func (c *Config) crlIssuers() ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	add := func(file, field string) error {
		certs, err := pemfile.LoadCerts(c.path(file))
		if err != nil {
			return configError(c.name(), field, "%v", err)
		}
		out = append(out, certs...)
		return nil
	}
	for i, a := range c.Audiences {
		for j, f := range a.ClientCA {
			if err := add(f, fmt.Sprintf("audiences[%d].client_ca[%d]", i, j)); err != nil {
				return nil, err
			}
		}
	}
	for i, f := range c.Revocation.CRLIssuers {
		if err := add(f, fmt.Sprintf("revocation.crl_issuers[%d]", i)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// path resolves p relative to the configuration file's directory.
func (c *Config) path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(filepath.Dir(c.file), p)
}

// audiences loads every audience's files into listener.Audience values. An audience whose
// ocsp mode is not off checks client certificates with checker, after guardian's own check.
func (c *Config) audiences(checker *ocsp.Checker) ([]listener.Audience, error) {
	var out []listener.Audience
	for i, a := range c.Audiences {
		field := fmt.Sprintf("audiences[%d]", i)
		cert, err := tls.LoadX509KeyPair(c.path(a.Cert), c.path(a.Key))
		if err != nil {
			return nil, configError(c.name(), field+".cert", "%v", err)
		}
		la := listener.Audience{Name: a.Name, SNI: a.SNI, Default: a.Default, Certificates: []tls.Certificate{cert}}
		switch a.ClientAuth {
		case "none":
			la.ClientAuth = tls.NoClientCert
		case "optional":
			la.ClientAuth = tls.VerifyClientCertIfGiven
		case "require":
			la.ClientAuth = tls.RequireAndVerifyClientCert
		}
		if len(a.ClientCA) > 0 {
			la.ClientCAs, err = c.pool(a.ClientCA, field+".client_ca")
			if err != nil {
				return nil, err
			}
		}
		if a.OnStale == "closed" {
			la.OnStale = listener.StaleClosed
		}
		la.IdleTimeout, la.MaxConns, la.MaxConnsPerClient = time.Duration(a.IdleTimeout), a.MaxConns, *a.MaxConnsPerClient
		la.MinBodyRate = *a.MinBodyRate
		if m, _ := ocsp.ParseMode(a.OCSP.Mode); m != ocsp.Off && checker != nil {
			la.TLS = &tls.Config{VerifyConnection: checker.VerifyConnection(m)}
		}
		out = append(out, la)
	}
	return out, nil
}

func (c *Config) pool(files []string, field string) (*x509.CertPool, error) {
	var paths []string
	for _, p := range files {
		paths = append(paths, c.path(p))
	}
	pool, err := pemfile.LoadPool(paths...)
	if err != nil {
		return nil, configError(c.name(), field, "%v", err)
	}
	return pool, nil
}

// vet reads what validate cannot (the files) and refuses configurations that open an
// audience or the admin API without saying so; what is risky but can be meant comes back
// as warnings, each naming its field, for serve to log once.
func (c *Config) vet() (warnings []string, err error) {
	f := c.name()
	if c.Admin.Listen != "" && len(c.Admin.Allow) == 0 {
		admin, err := c.certs(c.Admin.ClientCA, "admin.client_ca")
		if err != nil {
			return nil, err
		}
		adminPool := x509.NewCertPool()
		for _, ad := range admin {
			adminPool.AddCert(ad)
		}
		for i, a := range c.Audiences {
			for j, file := range a.ClientCA {
				cas, err := c.certs([]string{file}, fmt.Sprintf("audiences[%d].client_ca[%d]", i, j))
				if err != nil {
					return nil, err
				}
				for _, ca := range cas {
					shared := false
					for _, ad := range admin {
						shared = shared || bytes.Equal(ca.RawSubjectPublicKeyInfo, ad.RawSubjectPublicKeyInfo)
					}
					// An audience CA that an admin CA issued: its clients verify against the
					// admin pool too, with the intermediate they send.
					if _, err := ca.Verify(x509.VerifyOptions{Roots: adminPool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
						shared = true
					}
					if shared {
						return nil, configError(f, "admin.allow", "empty, and admin.client_ca trusts %q, a client CA of audience %q: every client of that audience could use the admin API (revoke anyone). List the admin identities in admin.allow, or give the admin API a CA of its own", ca.Subject.String(), a.Name)
					}
				}
			}
		}
		warnings = append(warnings, configError(f, "admin.allow", "empty: every certificate admin.client_ca verifies may revoke, unrevoke and reseed; list the admin identities (e.g. uri:spiffe://ops/admin)").Error())
	}
	for i, a := range c.Audiences {
		field := fmt.Sprintf("audiences[%d]", i)
		for j, o := range c.Audiences {
			if j == i || a.Upstream == "" || !sameUpstream(a.Upstream, o.Upstream) {
				continue
			}
			if a.SessionBinding != nil && o.SessionBinding == nil {
				warnings = append(warnings, configError(f, fmt.Sprintf("audiences[%d].upstream", j), "the upstream of audience %q, which binds sessions, without session_binding: a session ID sent to %q reaches %s unchecked", a.Name, o.Name, o.Upstream).Error())
			}
			if a.TokenBinding != nil && o.TokenBinding == nil {
				warnings = append(warnings, configError(f, fmt.Sprintf("audiences[%d].upstream", j), "the upstream of audience %q, which binds tokens, without token_binding: a token sent to %q reaches %s unchecked", a.Name, o.Name, o.Upstream).Error())
			}
		}
		if a.ClientAuth == "optional" && a.Upstream != "" {
			warnings = append(warnings, configError(f, field+".client_auth", "optional with an upstream: requests without a client certificate reach %s; it must tell them apart by X-Forwarded-Client-Cert", a.Upstream).Error())
		}
		if a.ClientAuth == "require" && a.OnStale == "open" && time.Duration(c.Revocation.MaxStaleness) > time.Hour {
			warnings = append(warnings, configError(f, field+".on_stale", "open, with revocation.max_staleness %s: a revocation may go unenforced on this audience for that long while the source is unreachable", time.Duration(c.Revocation.MaxStaleness)).Error())
		}
		if tb := a.TokenBinding; tb != nil {
			for j, file := range tb.Keys {
				b, err := os.ReadFile(c.path(file))
				if err != nil {
					return nil, configError(f, fmt.Sprintf("%s.token_binding.keys[%d]", field, j), "%v", err)
				}
				k, err := binding.ParseKey(b)
				if err != nil {
					return nil, configError(f, fmt.Sprintf("%s.token_binding.keys[%d]", field, j), "%v", err)
				}
				fits := false
				for _, alg := range tb.Algorithms {
					fits = fits || binding.KeyVerifies(alg, k)
				}
				if !fits {
					warnings = append(warnings, configError(f, fmt.Sprintf("%s.token_binding.keys[%d]", field, j), "a %T verifies none of the algorithms %v: no token will pass with it", k, tb.Algorithms).Error())
				}
			}
		}
	}
	return warnings, nil
}

// sameUpstream reports whether two upstream URLs reach the same server (scheme and host).
func sameUpstream(a, b string) bool {
	ua, err1 := url.Parse(a)
	ub, err2 := url.Parse(b)
	return err1 == nil && err2 == nil && b != "" && strings.EqualFold(ua.Scheme, ub.Scheme) && strings.EqualFold(ua.Host, ub.Host)
}

// certs loads the certificates of files.
func (c *Config) certs(files []string, field string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, file := range files {
		cs, err := pemfile.LoadCerts(c.path(file))
		if err != nil {
			return nil, configError(c.name(), field, "%v", err)
		}
		out = append(out, cs...)
	}
	return out, nil
}
