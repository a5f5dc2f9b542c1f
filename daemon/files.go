package daemon

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/guardian-mtls/guardian/binding"
	"github.com/guardian-mtls/guardian/internal/pemfile"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/ocsp"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// This file holds what reads a configuration's files: certificates, keys, CA pools.

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
		if len(a.Allow) > 0 {
			la.Allow, _ = listener.ParsePolicy(a.Allow...) // validated with the config
		}
		la.MaxConnLifetime = time.Duration(a.MaxConnLifetime)
		if !a.tcp() {
			la.LifetimeGrace = time.Duration(a.IdleTimeout) // for the requests in flight
		}
		switch {
		case len(a.ALPN) > 0:
			la.NextProtos = a.ALPN
		case a.tcp():
			la.NextProtos = []string{} // none: the listener's default is HTTP's
		}
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

// Vet reads what validation cannot (the files) and refuses configurations that open an
// audience or the admin API without saying so; what is risky but can be meant comes back
// as warnings, each naming its field, for serve to log once.
func (c *Config) Vet() (warnings []string, err error) {
	c.applyDefaults() // a Config built in code has none yet
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

// adminAudience is the admin listener's one audience, its files read, and the identities
// admin.allow lists.
func (c *Config) adminAudience() (listener.Audience, []revoke.Key, error) {
	cert, err := tls.LoadX509KeyPair(c.path(c.Admin.Cert), c.path(c.Admin.Key))
	if err != nil {
		return listener.Audience{}, nil, configError(c.name(), "admin.cert", "%v", err)
	}
	var allowed []revoke.Key
	for _, k := range c.Admin.Allow {
		allowed = append(allowed, revoke.MustParseKey(k)) // validated with the config
	}
	pool, err := c.pool(c.Admin.ClientCA, "admin.client_ca")
	if err != nil {
		return listener.Audience{}, nil, err
	}
	return listener.Audience{
		Name: "admin", Default: true, SNI: []string{"localhost"}, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, IdleTimeout: time.Minute,
		// A certificate admin.allow does not list is refused in the handshake, so it
		// cannot hold admin conns (the API refuses it again, for any other path).
		TLS: &tls.Config{VerifyConnection: adminAllowed(allowed)},
	}, allowed, nil
}

// RedisClientConfig is the Redis client the configuration describes, TLS included; the
// daemon and the CLI's --config both use it.
func (cfg *Config) RedisClientConfig() (redisfeed.ClientConfig, error) {
	rc := cfg.Revocation.Redis
	cc := redisfeed.ClientConfig{URL: rc.URL, Addrs: rc.Addrs, MasterName: rc.MasterName,
		Username: rc.Username, Password: rc.Password, DB: rc.DB}
	if rc.TLS || rc.CA != "" {
		cc.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
		if rc.CA != "" {
			pool, err := cfg.pool([]string{rc.CA}, "revocation.redis.ca")
			if err != nil {
				return cc, err
			}
			cc.TLS.RootCAs = pool
		}
	}
	return cc, nil
}
