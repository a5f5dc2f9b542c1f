package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/guardian-mtls/guardian/internal/redistest"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// adminCall sends one request to a running admin API with the admin certificate and
// returns the status and body.
func adminCall(t *testing.T, c *http.Client, method, url, ctype string, hdr map[string]string, body string) (int, string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// revokedKeys lists the keys GET /v1/revocations answers, asked as a cross-site page would:
// GETs are not refused.
func revokedKeys(t *testing.T, c *http.Client, admin string) map[string]bool {
	t.Helper()
	code, body := adminCall(t, c, "GET", "https://"+admin+"/v1/revocations", "", map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, "")
	if code != http.StatusOK {
		t.Fatalf("GET /v1/revocations: %d %s", code, body)
	}
	var entries []revoke.Entry
	if err := json.Unmarshal([]byte(body), &entries); err != nil {
		t.Fatalf("GET /v1/revocations: %v: %s", err, body)
	}
	keys := map[string]bool{}
	for _, e := range entries {
		keys[string(e.Key)] = true
	}
	return keys
}

func adminMetrics(t *testing.T, c *http.Client, admin string) string {
	t.Helper()
	code, body := adminCall(t, c, "GET", "https://"+admin+"/metrics", "", nil, "")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	return body
}

// A browser holding the admin certificate, on a page of another site, cannot change
// anything: a cross-origin non-GET is 403, a non-JSON one 415, each with a JSON error
// naming the problem, nothing is revoked or unrevoked, and the refusals are counted.
// Same-origin browser requests and GETs are answered as before.
func TestAdminRefusesCrossOriginAndNonJSON(t *testing.T) {
	d := startDemo(t)
	c := d.client(t, "admin")
	base := "https://" + d.admin
	if out, code := d.cli(t, append([]string{"revoke"}, append(d.adminArgs("admin"), "--uri", "spiffe://kept/1")...)...); code != 0 {
		t.Fatalf("revoke through the CLI: %s", out)
	}
	evil := map[string]string{"Origin": "https://evil.example"}
	crossSite := map[string]string{"Sec-Fetch-Site": "cross-site"}
	tests := []struct {
		name, method, path, ctype string
		hdr                       map[string]string
		body                      string
		code                      int
		mention                   string
	}{
		{"text/plain POST from another origin", "POST", "/v1/revocations", "text/plain", evil, `{"key":"uri:spiffe://attack/1"}`, 403, "cross-origin"},
		{"text/plain POST, Sec-Fetch-Site cross-site", "POST", "/v1/revocations", "text/plain", crossSite, `{"key":"uri:spiffe://attack/2"}`, 403, "cross-origin"},
		{"JSON POST from another origin", "POST", "/v1/revocations", "application/json", evil, `{"key":"uri:spiffe://attack/3"}`, 403, "cross-origin"},
		{"JSON POST, Sec-Fetch-Site same-site", "POST", "/v1/revocations", "application/json", map[string]string{"Sec-Fetch-Site": "same-site"}, `{"key":"uri:spiffe://attack/4"}`, 403, "cross-origin"},
		{"text/plain POST without Origin", "POST", "/v1/revocations", "text/plain", nil, `{"key":"uri:spiffe://attack/5"}`, 415, "application/json"},
		{"form POST without Origin", "POST", "/v1/revocations", "application/x-www-form-urlencoded", nil, `{"key":"uri:spiffe://attack/6"}`, 415, "application/x-www-form-urlencoded"},
		{"POST without Content-Type", "POST", "/v1/revocations", "", nil, `{"key":"uri:spiffe://attack/7"}`, 415, "Content-Type"},
		{"DELETE from another origin", "DELETE", "/v1/revocations?key=uri:spiffe://kept/1", "application/json", evil, "", 403, "cross-origin"},
		{"DELETE without Content-Type", "DELETE", "/v1/revocations?key=uri:spiffe://kept/1", "", nil, "", 415, "Content-Type"},
		{"reseed from another origin", "POST", "/v1/reseed", "text/plain", crossSite, `{"apply":true}`, 403, "cross-origin"},
		{"reseed as text/plain", "POST", "/v1/reseed", "text/plain", nil, `{"apply":true}`, 415, "application/json"},
		// The browser's own page on the admin origin (there is none today) is not refused.
		{"JSON POST, Sec-Fetch-Site same-origin", "POST", "/v1/revocations", "application/json; charset=utf-8", map[string]string{"Sec-Fetch-Site": "same-origin"}, `{"key":"uri:spiffe://ok/1"}`, 200, `"uri:spiffe://ok/1"`},
		{"JSON POST, Origin of the admin API", "POST", "/v1/revocations", "application/json", map[string]string{"Origin": base}, `{"key":"uri:spiffe://ok/2"}`, 200, `"uri:spiffe://ok/2"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := adminCall(t, c, tt.method, base+tt.path, tt.ctype, tt.hdr, tt.body)
			if code != tt.code || !strings.Contains(body, tt.mention) {
				t.Fatalf("%s %s: %d %s; want %d mentioning %q", tt.method, tt.path, code, body, tt.code, tt.mention)
			}
			if code != 200 {
				var e struct{ Error string }
				if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
					t.Fatalf("refusal is not a JSON error: %q (%v)", body, err)
				}
			}
		})
	}
	keys := revokedKeys(t, c, d.admin)
	for k := range keys {
		if strings.Contains(k, "attack") {
			t.Errorf("a refused request revoked %s", k)
		}
	}
	for _, k := range []string{"uri:spiffe://kept/1", "uri:spiffe://ok/1", "uri:spiffe://ok/2"} {
		if !keys[k] {
			t.Errorf("%s not revoked; the set holds %v", k, keys)
		}
	}
	m := adminMetrics(t, c, d.admin)
	for _, want := range []string{
		`guardian_admin_requests_total{op="revoke",result="cross_origin"} 4`,
		`guardian_admin_requests_total{op="revoke",result="unsupported_media_type"} 3`,
		`guardian_admin_requests_total{op="unrevoke",result="cross_origin"} 1`,
		`guardian_admin_requests_total{op="unrevoke",result="unsupported_media_type"} 1`,
		`guardian_admin_requests_total{op="reseed",result="cross_origin"} 1`,
		`guardian_admin_requests_total{op="reseed",result="unsupported_media_type"} 1`,
		`guardian_admin_requests_total{op="revoke",result="ok"} 3`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// The CLI (adminClient.do sends application/json and no Origin) still revokes, unrevokes
// and reaches reseed through the new checks.
func TestAdminCLIPassesTheChecks(t *testing.T) {
	d := startDemo(t)
	args := d.adminArgs("admin")
	if out, code := d.cli(t, append([]string{"revoke"}, append(args, "--uri", "spiffe://cli/1")...)...); code != 0 {
		t.Fatalf("revoke: exit %d: %s", code, out)
	}
	if out, code := d.cli(t, append([]string{"list"}, args...)...); code != 0 || !strings.Contains(out, "uri:spiffe://cli/1") {
		t.Fatalf("list: exit %d: %s", code, out)
	}
	if out, code := d.cli(t, append([]string{"unrevoke"}, append(args, "--uri", "spiffe://cli/1")...)...); code != 0 {
		t.Fatalf("unrevoke (DELETE): exit %d: %s", code, out)
	}
	if keys := revokedKeys(t, d.client(t, "admin"), d.admin); keys["uri:spiffe://cli/1"] {
		t.Fatal("unrevoke through the CLI left the key revoked")
	}
	// The demo's store is not Redis: reseed reaching the handler says so.
	if out, code := d.cli(t, append([]string{"reseed"}, args...)...); code == 0 || !strings.Contains(out, "not Redis") {
		t.Fatalf("reseed on a memory node: exit %d: %s; want the handler's 'not Redis'", code, out)
	}
}

// A body of two JSON objects, or one followed by anything but white space, is refused
// whole: the first object is not acted on.
func TestAdminRefusesBodyWithTrailingData(t *testing.T) {
	d := startDemo(t)
	c := d.client(t, "admin")
	tests := []struct {
		name, body string
		code       int
		mention    string
	}{
		{"two objects", `{"key":"uri:spiffe://two/1"}{"key":"uri:spiffe://two/2"}`, 400, "one JSON object"},
		{"two objects on two lines", "{\"key\":\"uri:spiffe://two/3\"}\n{\"key\":\"uri:spiffe://two/4\"}\n", 400, "one JSON object"},
		{"trailing garbage", `{"key":"uri:spiffe://two/5"} garbage`, 400, "after the JSON object"},
		{"trailing brace", `{"key":"uri:spiffe://two/6"}}`, 400, "after the JSON object"},
		{"empty body", ``, 400, "empty"},
		{"trailing newline is fine", "{\"key\":\"uri:spiffe://one/1\"}\n", 200, `"uri:spiffe://one/1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := adminCall(t, c, "POST", "https://"+d.admin+"/v1/revocations", "application/json", nil, tt.body)
			if code != tt.code || !strings.Contains(body, tt.mention) {
				t.Fatalf("POST %q: %d %s; want %d mentioning %q", tt.body, code, body, tt.code, tt.mention)
			}
		})
	}
	keys := revokedKeys(t, c, d.admin)
	for k := range keys {
		if strings.Contains(k, "two/") {
			t.Errorf("a refused body revoked %s", k)
		}
	}
	if !keys["uri:spiffe://one/1"] {
		t.Errorf("the well-formed body was not acted on: %v", keys)
	}
}

// /v1/reseed with two objects is refused before anything is written: a half-read
// `{"apply":true}{…}` would write Redis back.
func TestAdminReseedRefusesTrailingData(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, dir, fmt.Sprintf(serveConfig, fmt.Sprintf("store: redis\n  redis: { url: %q }", srv.URL()), ""))
	d := s.demoView()
	c := d.client(t, "admin")
	if out, code := d.cli(t, append([]string{"revoke"}, append(d.adminArgs("admin"), "--uri", "spiffe://reseed/1", "--wait", "5s")...)...); code != 0 {
		t.Fatalf("revoke: %s", out)
	}
	srv.Restart() // no persistence: comes back empty, so the node holds one entry Redis lacks
	eventuallyT(t, "/readyz reports the regression", func() bool {
		code, body := adminCall(t, c, "GET", "https://"+s.admin+"/readyz", "", nil, "")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "regressed")
	})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	held := func() int64 {
		n, err := rdb.HLen(context.Background(), "{guardian}:revoked").Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, body := range []string{`{"apply":true}{"apply":false}`, `{"apply":true} {}`, `{"apply":true}]`} {
		code, resp := adminCall(t, c, "POST", "https://"+s.admin+"/v1/reseed", "application/json", nil, body)
		if code != 400 || !strings.Contains(resp, "after the JSON object") && !strings.Contains(resp, "one JSON object") {
			t.Fatalf("POST /v1/reseed %s: %d %s; want 400 naming the trailing data", body, code, resp)
		}
		if n := held(); n != 0 {
			t.Fatalf("POST /v1/reseed %s wrote %d entries to Redis", body, n)
		}
	}
	// The premise: the first object alone does write.
	if code, resp := adminCall(t, c, "POST", "https://"+s.admin+"/v1/reseed", "application/json", nil, `{"apply":true}`); code != 200 || held() != 1 {
		t.Fatalf("POST /v1/reseed {\"apply\":true}: %d %s, Redis holds %d; want 200 and 1", code, resp, held())
	}
}

// crossSign returns a copy of ca's certificate (same subject and key) issued by other,
// as a CA's cross-signed certificate is.
func crossSign(t *testing.T, ca, other *pkitest.CA) *x509.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 100))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)),
		Subject:               ca.Cert.Subject,
		SubjectKeyId:          ca.Cert.SubjectKeyId,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, other.Cert, ca.Cert.PublicKey, other.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func newNamedCA(t *testing.T, name string) *pkitest.CA {
	t.Helper()
	ca, err := pkitest.New(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func writeCertPEM(t *testing.T, file string, pemBytes []byte) string {
	t.Helper()
	if err := os.WriteFile(file, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// Which key `--cert` derives: a CA's spki key by default (every certificate of that CA
// key, cross-signed copies included), a leaf's serial key as before, and what --by says
// when it names a kind that fits the certificate.
func TestRevokeCertKeyChoice(t *testing.T) {
	dir := t.TempDir()
	ca := newNamedCA(t, "issuing CA")
	other := newNamedCA(t, "bridge root")
	cross := crossSign(t, ca, other)
	leaf := ca.MustIssue(t, pkitest.Opts{CommonName: "leaf", URIs: []string{"spiffe://t/leaf"}})
	caFile := writeCertPEM(t, filepath.Join(dir, "ca.pem"), ca.CertPEM())
	leafFile := writeCertPEM(t, filepath.Join(dir, "leaf.pem"), leaf.CertPEM())
	key := func(c *x509.Certificate, k revoke.Kind) revoke.Key {
		got, err := revoke.KeyFor(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	tests := []struct {
		name string
		args []string
		want revoke.Key
		// mention is in the explanation, or in the error when want is "".
		mention string
	}{
		{"CA by default", []string{"--cert", caFile}, key(ca.Cert, revoke.KindSPKI), "CA certificate"},
		{"CA --by sha256", []string{"--cert", caFile, "--by", "sha256"}, key(ca.Cert, revoke.KindSHA256), "this one certificate"},
		{"CA --by serial", []string{"--cert", caFile, "--by", "serial"}, key(ca.Cert, revoke.KindSerial), "serial"},
		{"CA --by SPKI", []string{"--cert", caFile, "--by", "SPKI"}, key(ca.Cert, revoke.KindSPKI), "spki"},
		{"leaf by default", []string{"--cert", leafFile}, key(leaf.Cert, revoke.KindSerial), "leaf"},
		{"leaf --by spki", []string{"--cert", leafFile, "--by", "spki"}, key(leaf.Cert, revoke.KindSPKI), "spki"},
		{"leaf --by uri", []string{"--cert", leafFile, "--by", "uri"}, "uri:spiffe://t/leaf", "uri"},
		{"CA --by uri", []string{"--cert", caFile, "--by", "uri"}, "", "match only a conn's leaf"},
		{"CA --by subject", []string{"--cert", caFile, "--by", "subject"}, "", "match only a conn's leaf"},
		{"unknown kind", []string{"--cert", leafFile, "--by", "issuer"}, "", "unknown kind"},
		{"blank kind", []string{"--cert", leafFile, "--by", " "}, "", "unknown kind"},
		{"--by without --cert", []string{"--uri", "spiffe://t/x", "--by", "spki"}, "", "--by"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s selector
			fs := flag.NewFlagSet("revoke", flag.ContinueOnError)
			s.register(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			got, why, err := chooseKey(&s)
			if tt.want == "" {
				if err == nil || !strings.Contains(err.Error(), tt.mention) {
					t.Fatalf("resolve = %q, %v; want an error mentioning %q", got, err, tt.mention)
				}
				return
			}
			if err != nil || got != tt.want || !strings.Contains(why, tt.mention) {
				t.Fatalf("resolve = %q, %q, %v; want %q explained with %q", got, why, err, tt.want, tt.mention)
			}
		})
	}
	// The chosen key is the one a conn through the cross-signed copy is hit by; the
	// fingerprint and serial of the file's certificate are not.
	viaCross := [][]*x509.Certificate{{leaf.Cert, cross, other.Cert}}
	if !revoke.Matches(viaCross, key(ca.Cert, revoke.KindSPKI)) {
		t.Fatal("the CA's spki key does not match a chain through its cross-signed copy")
	}
	for _, k := range []revoke.Kind{revoke.KindSHA256, revoke.KindSerial} {
		if revoke.Matches(viaCross, key(ca.Cert, k)) {
			t.Fatalf("the CA's %s key matches the cross-signed chain: the test's premise is wrong", k)
		}
	}
}

// `guardian revoke --cert ca.pem` through a running node's admin API closes a live conn
// whose chain runs through a cross-signed copy of that CA, and leaves other CAs' conns
// alone; `--by sha256` denies the one certificate in the file, which that conn never shows.
func TestRevokeCertOfCAClosesCrossSignedConn(t *testing.T) {
	dir := t.TempDir()
	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	issuing := newNamedCA(t, "issuing CA") // the CA an operator revokes, as ca2.pem
	bridge := newNamedCA(t, "bridge root") // the root the node trusts, which cross-signed it
	cross := crossSign(t, issuing, bridge)
	victim := issuing.MustIssue(t, pkitest.Opts{CommonName: "victim", URIs: []string{"spiffe://guardian.demo/victim"}})
	victim.Chain = append(victim.Chain, cross) // it presents the cross-signed copy
	if err := victim.WriteFiles(dir, "victim"); err != nil {
		t.Fatal(err)
	}
	if err := bridge.MustIssue(t, pkitest.Opts{CommonName: "bystander", URIs: []string{"spiffe://guardian.demo/bystander"}}).WriteFiles(dir, "bystander"); err != nil {
		t.Fatal(err)
	}
	caFile := writeCertPEM(t, filepath.Join(dir, "ca2.pem"), issuing.CertPEM())
	writeCertPEM(t, filepath.Join(dir, "bridge.pem"), bridge.CertPEM())
	cfg := strings.Replace(fmt.Sprintf(serveConfig, "store: memory", ""), "    client_ca: [ca.pem]", "    client_ca: [bridge.pem]", 1)
	s := startServe(t, dir, cfg)
	d := s.demoView()
	stream := openStream(t, d.client(t, "victim"), s.addr)
	other := openStream(t, d.client(t, "bystander"), s.addr)

	sha, err := revoke.KeyFor(issuing.Cert, revoke.KindSHA256)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := revoke.KeyFor(issuing.Cert, revoke.KindSPKI)
	if err != nil {
		t.Fatal(err)
	}
	out, code := d.cli(t, append([]string{"revoke"}, append(d.adminArgs("admin"), "--cert", caFile, "--by", "sha256")...)...)
	if code != 0 || !strings.Contains(out, string(sha)) || !strings.Contains(out, "0 live conn(s) matched") {
		t.Fatalf("revoke --cert ca2.pem --by sha256: exit %d:\n%s\nwant %s and no conn matched", code, out, sha)
	}
	if streamEnds(stream, time.Second) {
		t.Fatal("the sha256 of ca2.pem closed a conn through the cross-signed copy")
	}
	out, code = d.cli(t, append([]string{"revoke"}, append(d.adminArgs("admin"), "--cert", caFile)...)...)
	if code != 0 || !strings.Contains(out, string(spki)) || !strings.Contains(out, "CA certificate") || !strings.Contains(out, "1 live conn(s) matched") {
		t.Fatalf("revoke --cert ca2.pem: exit %d:\n%s\nwant %s chosen and 1 conn matched", code, out, spki)
	}
	if !streamEnds(stream, 10*time.Second) {
		t.Fatal("the conn through the cross-signed copy is still flowing 10s after revoke --cert ca2.pem")
	}
	if streamEnds(other, time.Second) {
		t.Fatal("the bystander's stream ended")
	}
	if resp, err := d.client(t, "victim").Get("https://" + local(s.addr) + "/"); err == nil {
		resp.Body.Close()
		t.Fatal("a new conn through the cross-signed copy was served after the revocation")
	}
}

// chooseKey is the selector's resolve: the key --cert chose and the line explaining it.
func chooseKey(s *selector) (revoke.Key, string, error) { return s.resolve() }
