package daemon

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
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
	MaxConns *int `yaml:"max_conns"`
	// ProxyProtocol, when set, puts the data port behind load balancers that send the
	// PROXY protocol (v1 or v2): a conn from a trusted one must carry a header, whose
	// client address is then the conn's everywhere; a header from anyone else is refused.
	ProxyProtocol *ProxyProtocolConfig `yaml:"proxy_protocol"`
	Admin         AdminConfig          `yaml:"admin"`
	Revocation    RevocationConfig     `yaml:"revocation"`
	Audiences     []AudienceConfig     `yaml:"audiences"`

	// file is where it was read from, for errors; relative paths are relative to its
	// directory ("" for a Config built in code: relative to the working directory).
	file string
}

// ProxyProtocolConfig names the load balancers trusted to send PROXY headers.
type ProxyProtocolConfig struct {
	// Trusted are their addresses: CIDRs or single IPs.
	Trusted []string `yaml:"trusted"`
	// Optional lets a trusted balancer's conn come without a header (a health check).
	Optional bool `yaml:"optional"`
	// Timeout bounds the wait for the header (default 5s).
	Timeout Duration `yaml:"timeout"`
}

// prefixes are the trusted sources as prefixes; a single IP is its own /32 or /128.
func (p *ProxyProtocolConfig) prefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range p.Trusted {
		if pfx, err := netip.ParsePrefix(s); err == nil {
			out = append(out, pfx.Masked())
			continue
		}
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR or an IP address", s)
		}
		out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
	}
	return out, nil
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

// CRLConfig is one CRL source: a file, a URL, or the distribution points of the
// certificates clients present. CRLs pushed through Redis (guardian crl push) need no entry
// here.
type CRLConfig struct {
	File string `yaml:"file"`
	URL  string `yaml:"url"`
	// FromCertificates follows the HTTP CRL Distribution Points of the certificates in
	// clients' verified chains (leaves and CAs), each as a URL source (refresh, timeout and
	// max_size apply).
	FromCertificates bool `yaml:"from_certificates"`
	// Wait bounds how long a handshake waits for a distribution point's first fetch
	// (from_certificates only; default 2s); see the audiences' crl_unavailable.
	Wait Duration `yaml:"wait"`
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
	// Upstream is an http:// or https:// URL (the audience proxies HTTP), or tcp://host:port
	// or unix:///path (it splices bytes: MQTT, a database protocol, gRPC passed through).
	Upstream string `yaml:"upstream"`
	// CRLUnavailable is what a handshake does when a CRL its certificates name in their
	// distribution points (revocation.crl from_certificates) cannot be had within its wait:
	// open (serve, logged) or closed (refuse, reason crl_unavailable). Default open.
	CRLUnavailable string `yaml:"crl_unavailable"`
	// ClientCertHeader is how an HTTP upstream learns the client certificate: xfcc
	// (X-Forwarded-Client-Cert, the default), rfc9440 (Client-Cert and Client-Cert-Chain)
	// or both. guardian owns all three: a client's are removed, in any spelling.
	ClientCertHeader string `yaml:"client_cert_header"`
	// ProxyProtocolUpstream, "v2" for a TCP audience, sends the upstream a PROXY v2 header
	// ahead of the client's bytes: the client's address, the SNI, ALPN, TLS version and
	// cipher, and the client certificate's CN, SHA-256 and URI SANs as TLVs.
	ProxyProtocolUpstream string `yaml:"proxy_protocol_upstream"`
	// ALPN lists the protocols the audience offers in the handshake; default h2 and
	// http/1.1 for HTTP audiences, none for TCP ones (e.g. [mqtt]).
	ALPN []string `yaml:"alpn"`
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
	// MaxConnLifetime ends every conn this old (unset: never), so that each client
	// handshakes, and is checked, again at least this often: an HTTP conn gracefully
	// (Connection: close, or GOAWAY, then cut at most idle_timeout later), a TCP conn at once.
	MaxConnLifetime Duration `yaml:"max_conn_lifetime"`
	// MaxConns bounds the audience's conns (unset or 0: no bound of its own).
	MaxConns int `yaml:"max_conns"`
	// MaxConnsPerClient bounds one client address's conns (default 256 where client_auth
	// is none or optional, else none; 0: no bound).
	MaxConnsPerClient *int `yaml:"max_conns_per_client"`
	// UnderscoreHeaders is what happens to request headers with '_' in their names:
	// drop (the default, as nginx), allow, or reject (400).
	UnderscoreHeaders string `yaml:"underscore_headers"`
	// Allow admits only the clients whose verified certificate matches one of these
	// patterns (listener.ParsePolicy: uri:, dns:, email:, subject:, spki:, sha256:,
	// issuer:), refusing the others in the handshake; unset admits every verified client.
	Allow []string `yaml:"allow"`
	// Routes narrow path prefixes to allow patterns of their own: a request under one whose
	// client none admits gets 403.
	Routes []RouteConfig `yaml:"routes"`
}

// tcp reports whether the audience splices bytes to a TCP or unix-socket upstream.
func (a *AudienceConfig) tcp() bool {
	return strings.HasPrefix(a.Upstream, "tcp://") || strings.HasPrefix(a.Upstream, "unix://")
}

// RouteConfig is a path prefix and the clients admitted to it.
type RouteConfig struct {
	Path  string   `yaml:"path"`
	Allow []string `yaml:"allow"`
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
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err == nil {
		if err := unknownField(&doc, reflect.TypeFor[Config](), ""); err != nil {
			return nil, fmt.Errorf("%s:%w", file, err)
		}
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
