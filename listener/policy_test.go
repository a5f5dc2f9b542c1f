package listener_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"math/big"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/conntrack"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
)

func TestPolicyPatterns(t *testing.T) {
	root := pkitest.NewCA(t)
	inter := root.MustIntermediate(t, "payments intermediate")
	pay := inter.MustIssue(t, pkitest.Opts{CommonName: "billing", URIs: []string{"spiffe://prod/payments/api"}, DNS: []string{"api.svc.internal"}, Emails: []string{"Pay@Example.com"}})
	deep := root.MustIssue(t, pkitest.Opts{CommonName: "deep", URIs: []string{"spiffe://prod/payments/api/v2"}, DNS: []string{"a.b.svc.internal"}})
	ops := root.MustIssue(t, pkitest.Opts{CommonName: "ops", URIs: []string{"spiffe://prod/ops/alice/laptop"}})
	chain := func(l *pkitest.Leaf) [][]*x509.Certificate {
		return [][]*x509.Certificate{append(append([]*x509.Certificate(nil), l.Chain...), root.Cert)}
	}
	fp := func(c *x509.Certificate) string { s := sha256.Sum256(c.Raw); return hex.EncodeToString(s[:]) }
	spki := func(c *x509.Certificate) string {
		s := sha256.Sum256(c.RawSubjectPublicKeyInfo)
		return hex.EncodeToString(s[:])
	}
	tests := []struct {
		pattern  string
		admitted []*pkitest.Leaf
	}{
		{"uri:spiffe://prod/payments/*", []*pkitest.Leaf{pay}},
		{"uri:spiffe://prod/payments/**", []*pkitest.Leaf{pay, deep}},
		{"uri:spiffe://prod/*/api", []*pkitest.Leaf{pay}},
		{"uri:spiffe://prod/ops/**", []*pkitest.Leaf{ops}},
		{"uri:spiffe://prod/payments/api", []*pkitest.Leaf{pay}},
		{"dns:*.svc.internal", []*pkitest.Leaf{pay}}, // one label: not a.b.svc.internal
		{"dns:API.svc.internal", []*pkitest.Leaf{pay}},
		{"email:Pay@EXAMPLE.com", []*pkitest.Leaf{pay}}, // the domain is case-folded, not the local part
		{"email:pay@example.com", nil},
		{"subject:CN=billing,O=guardian test", []*pkitest.Leaf{pay}},
		{"subject:O=guardian test", []*pkitest.Leaf{pay, deep, ops}},
		{"subject:CN=Billing", nil}, // values are exact
		{"spki:" + spki(pay.Cert), []*pkitest.Leaf{pay}},
		{"sha256:" + fp(deep.Cert), []*pkitest.Leaf{deep}},
		{"sha256:" + fp(root.Cert), nil}, // a CA's fingerprint pins no leaf: that is issuer:
		{"issuer:" + fp(inter.Cert), []*pkitest.Leaf{pay}},
		{"issuer:" + fp(root.Cert), []*pkitest.Leaf{pay, deep, ops}},
	}
	for _, tt := range tests {
		t.Run(tt.pattern, func(t *testing.T) {
			p, err := listener.ParsePolicy(tt.pattern)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range []*pkitest.Leaf{pay, deep, ops} {
				want := false
				for _, a := range tt.admitted {
					want = want || a == l
				}
				got, ok := p.Admits(chain(l))
				if ok != want || (ok && got != tt.pattern) {
					t.Errorf("%s: admitted %v (by %q); want %v", l.Cert.Subject.CommonName, ok, got, want)
				}
			}
		})
	}
	for _, bad := range []string{"", "uri", "uri:", "url:spiffe://x", "uri:spiffe://prod/pay*", "uri:spiffe://**/x", "dns:a.*.b", "dns:*.", "sha256:zz", "issuer:12",
		"subject:CN", "subject:XX=1", "subject:CN=a,", `subject:CN=a\`, `subject:CN=\zz`, "spki:" + strings.Repeat("0", 63)} {
		if _, err := listener.ParsePolicy(bad); err == nil {
			t.Errorf("ParsePolicy(%q) accepted it", bad)
		}
	}
}

// In the handshake: an allowed client is served, another of the same CA refused with a
// TLS alert and counted; a reload that narrows the policy closes the live conn it no
// longer admits, and ConnInfo says which pattern admitted a conn.
func TestAllowPolicyInTheHandshake(t *testing.T) {
	ev := &evictions{}
	allow, err := listener.ParsePolicy("uri:spiffe://prod/payments/*", "uri:spiffe://prod/ops/**")
	if err != nil {
		t.Fatal(err)
	}
	var srv tls.Certificate
	var pool *x509.CertPool
	e := newEnv(t, envOpts{onEvict: ev.add, audiences: func(e *env) []listener.Audience {
		srv, pool = e.server.TLS(), e.root.Pool()
		return []listener.Audience{{Name: "api", SNI: []string{"localhost"}, Certificates: []tls.Certificate{srv},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, Allow: allow}}
	}})
	pay := e.root.MustIssue(t, pkitest.Opts{CommonName: "pay", URIs: []string{"spiffe://prod/payments/api"}})
	ops := e.root.MustIssue(t, pkitest.Opts{CommonName: "ops", URIs: []string{"spiffe://prod/ops/alice"}})
	web := e.root.MustIssue(t, pkitest.Opts{CommonName: "web", URIs: []string{"spiffe://prod/web"}})
	cache := func(c *tls.Config) { c.ClientSessionCache = tls.NewLRUClientSessionCache(4) }
	cp, co := e.client(pay, false), e.client(ops, false, cache)
	cp.get(t, "/")
	co.get(t, "/")
	if _, err := e.client(web, false).try("/"); err == nil {
		t.Fatal("a client outside the allow policy was served")
	}
	waitMetric(t, e, "guardian_handshake_failures_total", 1, "reason", "not_allowed")
	by := map[string]string{}
	e.l.Conns(func(info *listener.ConnInfo) bool {
		by[info.Leaf().Subject.CommonName] = info.AllowedBy()
		return true
	})
	if by["pay"] != "uri:spiffe://prod/payments/*" || by["ops"] != "uri:spiffe://prod/ops/**" {
		t.Fatalf("AllowedBy = %v", by)
	}
	narrow, _ := listener.ParsePolicy("uri:spiffe://prod/payments/*")
	n, err := e.l.SetAudiences([]listener.Audience{{Name: "api", SNI: []string{"localhost"}, Certificates: []tls.Certificate{srv},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool, Allow: narrow}})
	if err != nil || n != 1 {
		t.Fatalf("SetAudiences = %d, %v; want the ops conn closed", n, err)
	}
	waitClosed(t, co.conn(0), "ops after the policy narrowed")
	if !isOpen(cp.conn(0)) {
		t.Fatal("the payments conn closed though the narrowed policy admits it")
	}
	// ops holds a session ticket from before: resuming is refused as a full handshake is.
	if _, err := co.try("/"); err == nil {
		t.Fatal("ops resumed a session after the policy stopped admitting it")
	}
	if got := ev.wait(t, 1)[0]; got.Reason != conntrack.ReasonPolicy || got.Conn.Leaf().Subject.CommonName != "ops" {
		t.Fatalf("eviction %+v; want ops, reason policy", got)
	}
	// A policy on an audience that does not verify certificates is refused.
	inner, _ := net.Listen("tcp", "127.0.0.1:0")
	defer inner.Close()
	if _, err := listener.New(inner, listener.Config{Set: e.set, Audiences: []listener.Audience{{Name: "x", SNI: []string{"x"},
		Certificates: []tls.Certificate{srv}, ClientAuth: tls.RequireAnyClientCert, Allow: narrow}}}); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("New with a policy over unverified certificates: %v", err)
	}
}

// What an attacker's CA-issued certificate might try (second outside attack on issue 16):
// two CNs, a URI with dot or encoded-slash segments, a DNS SAN with a literal '*'.
func TestPolicyRefusesAmbiguousIdentities(t *testing.T) {
	root := pkitest.NewCA(t)
	issue := func(subject pkix.Name, uris []string, dns []string) *x509.Certificate {
		t.Helper()
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		var us []*url.URL
		for _, s := range uris {
			u, err := url.Parse(s)
			if err != nil {
				t.Fatal(err)
			}
			us = append(us, u)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: subject, URIs: us, DNSNames: dns,
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Cert, &key.PublicKey, root.Key)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	twoCNs := issue(pkix.Name{Organization: []string{"Acme"}, ExtraNames: []pkix.AttributeTypeAndValue{
		{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "billing"}, {Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "ops"}}}, nil, nil)
	dotdot := issue(pkix.Name{CommonName: "x"}, []string{"spiffe://prod/payments/.."}, nil)
	encoded := issue(pkix.Name{CommonName: "y"}, []string{"spiffe://prod/payments/a%2F..%2F..%2Fops"}, nil)
	star := issue(pkix.Name{CommonName: "z"}, nil, []string{"a*.svc.internal"})
	for _, tt := range []struct {
		pattern string
		cert    *x509.Certificate
	}{
		{"subject:CN=billing,O=Acme", twoCNs},
		{"uri:spiffe://prod/payments/*", dotdot},
		{"uri:spiffe://prod/payments/**", dotdot},
		{"uri:spiffe://prod/payments/*", encoded},
		{"uri:spiffe://prod/payments/**", encoded},
		{"dns:*.svc.internal", star},
	} {
		p, err := listener.ParsePolicy(tt.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if by, ok := p.Admits([][]*x509.Certificate{{tt.cert, root.Cert}}); ok {
			t.Errorf("%s admitted %v (subject %s, URIs %v, DNS %v)", by, tt.cert.Subject, tt.cert.Subject, tt.cert.URIs, tt.cert.DNSNames)
		}
	}
	// Both CNs named: admitted.
	if p, _ := listener.ParsePolicy("subject:CN=billing,CN=ops,O=Acme"); p != nil {
		if _, ok := p.Admits([][]*x509.Certificate{{twoCNs, root.Cert}}); !ok {
			t.Error("a pattern naming both CNs does not admit the certificate that has both")
		}
	}
}

// A server name that is not made of DNS characters matches no audience, wildcards included:
// it never becomes a conn's SNI (which a TCP upstream's PROXY header would carry).
func TestSNIOfOddBytesIsUnknown(t *testing.T) {
	e := newEnv(t, envOpts{audiences: func(e *env) []listener.Audience {
		return []listener.Audience{{Name: "api", SNI: []string{"*.api.test"}, Certificates: []tls.Certificate{e.server.TLS()},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: e.root.Pool()}}
	}})
	leaf := e.root.MustIssue(t, pkitest.Opts{CommonName: "c"})
	for _, sni := range []string{"x\xff.api.test", "a b.api.test", "a\r\nb.api.test"} {
		c, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: e.root.Pool(), ServerName: sni, InsecureSkipVerify: true, Certificates: []tls.Certificate{leaf.TLS()}})
		if err == nil {
			c.Close()
			t.Errorf("SNI %q was served", sni)
		}
	}
	waitMetric(t, e, "guardian_handshake_failures_total", 3, "reason", "unknown_sni")
	if c, err := tls.Dial("tcp", e.addr, &tls.Config{RootCAs: e.root.Pool(), ServerName: "ok.api.test", InsecureSkipVerify: true, Certificates: []tls.Certificate{leaf.TLS()}}); err != nil {
		t.Fatalf("a valid name under the wildcard: %v", err)
	} else {
		c.Close()
	}
}
