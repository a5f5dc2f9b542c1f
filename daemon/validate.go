package daemon

import (
	"fmt"
	"net"
	"net/url"
	"reflect"
	"slices"
	"strings"

	"github.com/golang-jwt/jwt/v5"

	"github.com/guardian-mtls/guardian/binding"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/ocsp"
)

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
	// YAML refuses a negative duration as it reads one; a Config built in code is checked
	// here: a negative idle_timeout would mean none, a negative dial timeout every dial
	// failing.
	if path := negativeDuration(reflect.ValueOf(c).Elem(), ""); path != "" {
		return configError(f, path, "negative duration")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return configError(f, "listen", "%q is not host:port", c.Listen)
	}
	if pp := c.ProxyProtocol; pp != nil {
		if len(pp.Trusted) == 0 {
			return configError(f, "proxy_protocol.trusted", "required: the load balancers' addresses (CIDRs or IPs)")
		}
		if _, err := pp.prefixes(); err != nil {
			return configError(f, "proxy_protocol.trusted", "%v", err)
		}
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
			// redis:///0 is go-redis's localhost:6379; a unix socket is an absolute path.
			u, err := url.Parse(rc.URL)
			if err != nil || !slices.Contains([]string{"redis", "rediss", "unix"}, u.Scheme) || (u.Scheme == "unix" && !strings.HasPrefix(u.Path, "/")) {
				return configError(f, "revocation.redis.url", "%q is not a redis://host:port[/db], rediss://… or unix:///path URL", rc.URL)
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
		case cs.FromCertificates && (cs.File != "" || cs.URL != "" || cs.Every != 0):
			return configError(f, field, "from_certificates finds its URLs in the certificates: no file, url or every with it")
		case cs.FromCertificates:
		case cs.Wait != 0:
			return configError(f, field+".wait", "is for from_certificates")
		case (cs.File == "") == (cs.URL == ""):
			return configError(f, field, "set file or url, or from_certificates: true, one of them")
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
	if a.tcp() {
		u, err := url.Parse(a.Upstream)
		switch {
		case err != nil || (u.Scheme == "tcp" && (u.Hostname() == "" || u.Port() == "" || u.Path != "")) || (u.Scheme == "unix" && (u.Host != "" || !strings.HasPrefix(u.Path, "/"))):
			return configError(f, field+".upstream", "%q: want tcp://host:port or unix:///absolute/path", a.Upstream)
		case a.SessionBinding != nil || a.TokenBinding != nil || len(a.Routes) > 0 || a.UnderscoreHeaders != "":
			return configError(f, field, "session_binding, token_binding, routes and underscore_headers are for HTTP audiences; upstream %s splices bytes", a.Upstream)
		}
		if a.ProxyProtocolUpstream != "" && a.ProxyProtocolUpstream != "v2" {
			return configError(f, field+".proxy_protocol_upstream", "%q; want v2", a.ProxyProtocolUpstream)
		}
	} else if a.ProxyProtocolUpstream != "" {
		return configError(f, field+".proxy_protocol_upstream", "is for TCP audiences (upstream tcp:// or unix://); an HTTP upstream gets X-Forwarded-For and X-Forwarded-Client-Cert")
	} else if a.Upstream != "" {
		if why := checkURL(a.Upstream, "http", "https"); why != "" {
			return configError(f, field+".upstream", "%s; or tcp://host:port, unix:///path for bytes spliced", why)
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
	if len(a.Allow) > 0 {
		if a.ClientAuth == "none" {
			return configError(f, field+".allow", "admits clients by their certificate, but client_auth is none")
		}
		if _, err := listener.ParsePolicy(a.Allow...); err != nil {
			return configError(f, field+".allow", "%v", err)
		}
	}
	for j, rt := range a.Routes {
		rf := fmt.Sprintf("%s.routes[%d]", field, j)
		switch {
		case !strings.HasPrefix(rt.Path, "/"):
			return configError(f, rf+".path", "%q: want a path prefix starting with /", rt.Path)
		case a.ClientAuth == "none":
			return configError(f, rf, "admits clients by their certificate, but client_auth is none")
		}
		if _, err := listener.ParsePolicy(rt.Allow...); err != nil {
			return configError(f, rf+".allow", "%v", err)
		}
	}
	switch a.CRLUnavailable {
	case "", "open", "closed":
	default:
		return configError(f, field+".crl_unavailable", "%q; want open or closed", a.CRLUnavailable)
	}
	if _, err := binding.ParseClientCertHeaders(a.ClientCertHeader); err != nil {
		return configError(f, field+".client_cert_header", "%q; want xfcc, rfc9440 or both", a.ClientCertHeader)
	}
	if a.ClientCertHeader != "" && a.tcp() {
		return configError(f, field+".client_cert_header", "is for HTTP upstreams; a TCP upstream learns the client from proxy_protocol_upstream: v2")
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

// negativeDuration returns the field path of the first negative Duration in v, or "".
func negativeDuration(v reflect.Value, path string) string {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			return negativeDuration(v.Elem(), path)
		}
	case reflect.Struct:
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if !f.IsExported() || name == "" || name == "-" {
				continue
			}
			if f.Type == reflect.TypeFor[Duration]() {
				if v.Field(i).Int() < 0 {
					return join(path, name)
				}
				continue
			}
			if p := negativeDuration(v.Field(i), join(path, name)); p != "" {
				return p
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			if p := negativeDuration(v.Index(i), fmt.Sprintf("%s[%d]", path, i)); p != "" {
				return p
			}
		}
	}
	return ""
}
