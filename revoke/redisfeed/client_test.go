package redisfeed_test

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guardian-mtls/guardian/internal/redistest"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// rediss:// with an ACL user and password against a real TLS-only redis-server; a wrong
// password fails with Redis's own error.
func TestTLSAndACL(t *testing.T) {
	dir := t.TempDir()
	ca := pkitest.NewCA(t)
	srvCert := ca.MustIssue(t, pkitest.Opts{DNS: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err := srvCert.WriteFiles(dir, "redis"); err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, ca.CertPEM(), 0o644)
	srv := redistest.Start(t, redistest.Options{
		TLS:   &redistest.TLSFiles{Cert: filepath.Join(dir, "redis.pem"), Key: filepath.Join(dir, "redis.key"), CA: caFile},
		Users: []string{"default off", "guardian on >s3cret ~{guardian}:* +@all"},
	})
	url := "rediss://guardian:s3cret@" + srv.Addr() + "/0"
	cc := redisfeed.ClientConfig{URL: url, TLS: nil}
	rdb, err := redisfeed.NewClient(cc)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	// The rediss:// URL enables TLS; trust our test CA for it.
	rdbTLS, err := redisfeed.NewClient(redisfeed.ClientConfig{URL: url, TLS: tlsConfig(ca)})
	if err != nil {
		t.Fatal(err)
	}
	defer rdbTLS.Close()
	if err := rdb.Ping(context.Background()).Err(); err == nil {
		t.Fatal("TLS without trusting the server's CA succeeded")
	}
	st := redisfeed.NewStore(rdbTLS, "", 0)
	revokeN(t, st, key(1))
	n := startNodeWith(t, rdbTLS)
	if !n.set.Has(key(1)) {
		t.Fatal("node over rediss:// with an ACL user missed an entry")
	}
	bad, _ := redisfeed.NewClient(redisfeed.ClientConfig{URL: "rediss://guardian:wrong@" + srv.Addr(), TLS: tlsConfig(ca)})
	defer bad.Close()
	if err := bad.Ping(context.Background()).Err(); err == nil || !strings.Contains(strings.ToLower(err.Error()), "wrongpass") {
		t.Fatalf("wrong password: %v; want Redis's WRONGPASS", err)
	}
}

func tlsConfig(ca *pkitest.CA) *tls.Config {
	// No ServerName: the URL's host (127.0.0.1, an IP SAN of the test certificate) is used.
	return &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}
}
