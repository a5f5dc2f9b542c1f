package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const seedConfig = `
listen: "127.0.0.1:0"
admin: { listen: "127.0.0.1:0", cert: server.pem, key: server.key, client_ca: [ca.pem], allow: ["uri:spiffe://guardian.demo/admin"] }
revocation: { store: memory, max_staleness: 5s }
audiences:
  - { name: api, sni: [localhost], cert: server.pem, key: server.key, client_auth: require, client_ca: [ca.pem], on_stale: closed }
`

// The configuration parser, on any bytes: a Config with its defaults, or an error naming
// the file; never a panic, never a half-filled Config.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(seedConfig))
	f.Add([]byte("audiences: [ { name: a } ]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse("f.yaml", b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if len(c.Audiences) == 0 || c.Revocation.Store == "" {
			t.Fatalf("accepted an incomplete config: %+v", c)
		}
	})
}

// Defaults are applied before validation, which changes nothing: validating twice, or
// applying the defaults again, leaves the same Config.
func TestDefaultsThenPureValidate(t *testing.T) {
	c, err := Parse("g.yaml", []byte(seedConfig))
	if err != nil {
		t.Fatal(err)
	}
	a := c.Audiences[0]
	if c.Listen != "127.0.0.1:0" || c.HandshakeTimeout == 0 || c.ShutdownTimeout == 0 || a.IdleTimeout == 0 || a.MaxConnsPerClient == nil || a.OCSP.Mode != "" {
		t.Fatalf("defaults not applied: %+v", c)
	}
	before := *c
	c.applyDefaults()
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	if c.Listen != before.Listen || c.Audiences[0].IdleTimeout != a.IdleTimeout || *c.Audiences[0].MaxConnsPerClient != *a.MaxConnsPerClient {
		t.Fatalf("a second pass changed the config: %+v; was %+v", c, before)
	}
	// A Config built in code gets the same defaults from New's path.
	code := &Config{Audiences: []AudienceConfig{{Name: "x", SNI: []string{"x"}, Cert: "c", Key: "k", ClientAuth: "none"}}}
	code.applyDefaults()
	if err := code.validate(); err != nil {
		t.Fatal(err)
	}
	if code.Listen != ":8443" || code.Revocation.Store != "embedded" || *code.Audiences[0].MaxConnsPerClient != 256 || code.Audiences[0].IdleTimeout != Duration(30e9) {
		t.Fatalf("code-built config defaults: %+v %+v", code, code.Audiences[0])
	}
	if strings.Contains(code.name(), ".yaml") {
		t.Fatalf("a code-built config is named %q in errors", code.name())
	}
}

func TestExampleConfigParses(t *testing.T) {
	c, err := Load(filepath.Join("..", "examples", "guardian.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Audiences) != 3 || c.Revocation.Store != "embedded" || c.Admin.Listen == "" || !c.Audiences[1].tcp() || len(c.Audiences[1].Allow) == 0 {
		t.Fatalf("example config parsed as %+v", c)
	}
	// Its certificates come from `guardian pki init`, which names no OCSP responder: OCSP on
	// would log a warning for every handshake.
	if m := c.ocspModes(); len(m) > 0 && c.Revocation.OCSP.Responder == "" {
		t.Fatalf("the example asks for OCSP (%v) with no responder its certificates name", m)
	}
}

// The README's set-up names the Go version go.mod asks for.
func TestReadmeGoVersion(t *testing.T) {
	mod, err := os.ReadFile(filepath.Join("..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var version string
	for _, l := range strings.Split(string(mod), "\n") {
		if v, ok := strings.CutPrefix(l, "go "); ok {
			version = strings.TrimSpace(v)
		}
	}
	if version == "" || !strings.Contains(string(readme), "Go "+version+" (go.mod's version)") {
		t.Fatalf("README's set-up does not name go.mod's Go version %q", version)
	}
}

// An unknown key is named with its line, its field path and the field likely meant, not a
// Go type.
func TestUnknownFieldsNamePathAndHint(t *testing.T) {
	for _, tt := range []struct {
		name, yaml, want string
	}{
		{"audience", "audiences:\n  - name: api\n    client_auht: require\n", `g.yaml:3: audiences[0]: unknown field "client_auht" (did you mean "client_auth"?)`},
		{"top level", "listn: ':1'\n", `g.yaml:1: unknown field "listn" (did you mean "listen"?)`},
		{"nested", "revocation:\n  redis: { urll: 'redis://x' }\n", `g.yaml:2: revocation.redis: unknown field "urll" (did you mean "url"?)`},
		{"second audience, deep", "audiences:\n  - name: a\n  - name: b\n    token_binding: { issuer: i, algorithm: [ES256] }\n", `g.yaml:4: audiences[1].token_binding: unknown field "algorithm" (did you mean "algorithms"?)`},
		{"no near field", "audiences:\n  - name: a\n    frobnicate: 1\n", `g.yaml:3: audiences[0]: unknown field "frobnicate"`},
		{"in a merged mapping", "base: &b { name: a, clientauth: none }\n", `g.yaml:1: unknown field "base"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("g.yaml", []byte(tt.yaml))
			if err == nil || err.Error() != tt.want && !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("got %v; want %s", err, tt.want)
			}
			if strings.Contains(tt.want, "did you mean") != strings.Contains(err.Error(), "did you mean") {
				t.Fatalf("got %v; want a hint only where a field is near", err)
			}
		})
	}
}

// A Config built in code is held to what YAML refuses as it reads: no negative duration,
// each named by its field path; a Redis URL as go-redis reads it.
func TestValidateCodeBuilt(t *testing.T) {
	for _, tt := range []struct {
		name string
		mod  func(*Config)
		want string // "" means valid
	}{
		{"negative idle", func(c *Config) { c.Audiences[0].IdleTimeout = -1 }, "audiences[0].idle_timeout: negative duration"},
		{"negative staleness", func(c *Config) { c.Revocation.MaxStaleness = -1 }, "revocation.max_staleness: negative duration"},
		{"negative dial", func(c *Config) { c.Audiences[0].Upstream, c.Audiences[0].UpstreamTimeouts.Dial = "http://x", -1 }, "audiences[0].upstream_timeouts.dial: negative duration"},
		{"negative leeway", func(c *Config) {
			c.Audiences[0].TokenBinding = &TokenBindingConfig{Issuer: "i", Audience: "a", Keys: []string{"k"}, Algorithms: []string{"ES256"}, Leeway: -1}
		}, "audiences[0].token_binding.leeway: negative duration"},
		{"redis without host", func(c *Config) { c.Revocation.Store, c.Revocation.Redis.URL = "redis", "redis:///0" }, ""},
		{"redis unix", func(c *Config) { c.Revocation.Store, c.Revocation.Redis.URL = "redis", "unix:///run/redis.sock" }, ""},
		{"redis unix relative", func(c *Config) { c.Revocation.Store, c.Revocation.Redis.URL = "redis", "unix:redis.sock" }, "revocation.redis.url"},
		{"redis http", func(c *Config) { c.Revocation.Store, c.Revocation.Redis.URL = "redis", "http://x" }, "revocation.redis.url"},
		{"crl from certificates", func(c *Config) {
			c.Audiences[0].ClientAuth, c.Audiences[0].ClientCA, c.Audiences[0].CRLUnavailable = "require", []string{"ca.pem"}, "closed"
			c.Revocation.CRL = []CRLConfig{{FromCertificates: true, Wait: Duration(time.Second)}}
		}, ""},
		{"crl from certificates and a url", func(c *Config) {
			c.Audiences[0].ClientAuth, c.Audiences[0].ClientCA = "require", []string{"ca.pem"}
			c.Revocation.CRL = []CRLConfig{{FromCertificates: true, URL: "http://x/y.crl"}}
		}, "revocation.crl[0]: from_certificates finds its URLs"},
		{"crl_unavailable typo", func(c *Config) { c.Audiences[0].CRLUnavailable = "shut" }, "audiences[0].crl_unavailable"},
		{"tcp upstream", func(c *Config) { c.Audiences[0].Upstream = "tcp://127.0.0.1:1883" }, ""},
		{"unix upstream", func(c *Config) { c.Audiences[0].Upstream = "unix:///run/app.sock" }, ""},
		{"tcp without a port", func(c *Config) { c.Audiences[0].Upstream = "tcp://127.0.0.1" }, "audiences[0].upstream"},
		{"unix relative", func(c *Config) { c.Audiences[0].Upstream = "unix://run/app.sock" }, "audiences[0].upstream"},
		{"ftp upstream", func(c *Config) { c.Audiences[0].Upstream = "ftp://x" }, "or tcp://host:port"},
		{"routes on tcp", func(c *Config) {
			c.Audiences[0].ClientAuth, c.Audiences[0].ClientCA, c.Audiences[0].Upstream = "require", []string{"ca.pem"}, "tcp://127.0.0.1:1883"
			c.Audiences[0].Routes = []RouteConfig{{Path: "/a", Allow: []string{"uri:spiffe://x/y"}}}
		}, "are for HTTP audiences"},
		{"allow without client certificates", func(c *Config) { c.Audiences[0].Allow = []string{"uri:spiffe://x/y"} }, "audiences[0].allow: admits clients by their certificate, but client_auth is none"},
		{"bad allow pattern", func(c *Config) {
			c.Audiences[0].ClientAuth, c.Audiences[0].ClientCA, c.Audiences[0].Allow = "require", []string{"ca.pem"}, []string{"uri:spiffe://x/y*"}
		}, "audiences[0].allow: listener: allow[0]"},
		{"route without a leading slash", func(c *Config) {
			c.Audiences[0].ClientAuth, c.Audiences[0].ClientCA = "require", []string{"ca.pem"}
			c.Audiences[0].Routes = []RouteConfig{{Path: "admin/", Allow: []string{"uri:spiffe://x/y"}}}
		}, "audiences[0].routes[0].path"},
		{"route without patterns", func(c *Config) {
			c.Audiences[0].ClientAuth, c.Audiences[0].ClientCA = "require", []string{"ca.pem"}
			c.Audiences[0].Routes = []RouteConfig{{Path: "/admin/"}}
		}, "audiences[0].routes[0].allow"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &Config{Audiences: []AudienceConfig{{Name: "x", SNI: []string{"x"}, Cert: "c", Key: "k", ClientAuth: "none"}}}
			tt.mod(c)
			c.applyDefaults()
			err := c.validate()
			if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("validate = %v; want %q", err, tt.want)
			}
		})
	}
}
