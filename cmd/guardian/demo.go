package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/guardian-mtls/guardian/daemon"
)

func runDemo(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", stderr)
	dir := fs.String("dir", ".demo", "`DIR` to write the demo PKI into (overwritten)")
	listen := fs.String("listen", "127.0.0.1:8443", "`ADDR` of the mTLS port")
	adminAddr := fs.String("admin", "127.0.0.1:9443", "`ADDR` of the admin API")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return demo(ctx, *dir, *listen, *adminAddr, stdout, stderr)
}

func demo(ctx context.Context, dir, listenAddr, adminAddr string, stdout, stderr io.Writer) error {
	n, err := newDemo(ctx, dir, listenAddr, adminAddr, slog.New(slog.NewTextHandler(stderr, nil)))
	if err != nil {
		return err
	}
	printDemo(stdout, dir, n.Addr().String(), n.AdminAddr().String())
	return n.Run(ctx)
}

// newDemo writes a fresh PKI to dir and starts the demo's node on it: two audiences on one
// port — localhost requires a client certificate and binds its "session" cookie to it,
// public.localhost asks for none — both answered by the identity echo, revocations kept
// in memory, and the admin API for admin.pem only, itself on a revocation-aware listener.
func newDemo(ctx context.Context, dir, listenAddr, adminAddr string, log *slog.Logger) (*daemon.Node, error) {
	if err := writePKI(dir); err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	rand.Read(key)
	sessionKey := filepath.Join(dir, "session.key")
	if err := os.WriteFile(sessionKey, []byte(hex.EncodeToString(key)), 0o600); err != nil {
		return nil, err
	}
	file := func(name string) string { return filepath.Join(dir, name) }
	cfg := &daemon.Config{
		Listen: listenAddr,
		Admin: daemon.AdminConfig{Listen: adminAddr, Cert: file("server.pem"), Key: file("server.key"),
			ClientCA: []string{file("ca.pem")}, Allow: []string{"uri:" + adminURI}},
		// The demo keeps revocations in memory; `guardian serve` has the persistent stores.
		Revocation: daemon.RevocationConfig{Store: "memory"},
		Audiences: []daemon.AudienceConfig{{
			Name: "demo", SNI: []string{"localhost"}, Default: true, Cert: file("server.pem"), Key: file("server.key"),
			ClientAuth: "require", ClientCA: []string{file("ca.pem")},
			SessionBinding: &daemon.SessionBindingConfig{Cookies: []string{"session"}, Key: sessionKey},
		}, {
			Name: "public", SNI: []string{"public.localhost"}, Cert: file("server.pem"), Key: file("server.key"),
			ClientAuth: "none",
		}},
	}
	n, err := daemon.New(ctx, cfg, daemon.Options{Logger: log})
	if err != nil {
		switch {
		case strings.Contains(err.Error(), ": listen:"):
			return nil, fmt.Errorf("%w (pass --listen to use another address)", err)
		case strings.Contains(err.Error(), "admin.listen"):
			return nil, fmt.Errorf("admin API: %w (pass --admin to use another address)", err)
		}
		return nil, err
	}
	return n, nil
}

func printDemo(w io.Writer, dir, dataAddr, adminAddr string) {
	_, port, _ := net.SplitHostPort(dataAddr)
	self := selfCommand()
	curl := func(name string) string {
		return fmt.Sprintf("curl --cacert %s --cert %s --key %s", filepath.Join(dir, "ca.pem"),
			filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key"))
	}
	admin := fmt.Sprintf("--admin https://%s --admin-cert %s --admin-key %s --admin-ca %s", adminAddr,
		filepath.Join(dir, "admin.pem"), filepath.Join(dir, "admin.key"), filepath.Join(dir, "ca.pem"))
	fmt.Fprintf(w, `guardian demo: a fresh PKI is in %[1]s
listening on %[2]s (localhost: mTLS with client certificates from %[1]s/ca.pem and sessions bound to them; public.localhost: no client certificate)
admin API on %[3]s (admin.pem only)

Try it:
  # who am I?
  %[4]s https://localhost:%[5]s/
  # a session bound to client.pem: good with client.pem, 401 with client2.pem
  %[4]s -c %[1]s/jar https://localhost:%[5]s/login
  %[4]s -b %[1]s/jar https://localhost:%[5]s/
  %[6]s -b %[1]s/jar https://localhost:%[5]s/
  # the same port, an audience without client certificates; asking it for the mTLS one is 421
  curl --cacert %[1]s/ca.pem https://public.localhost:%[5]s/
  curl --cacert %[1]s/ca.pem -H 'Host: localhost' https://public.localhost:%[5]s/
Then, each in its own terminal:
  # a live request that streams until its certificate is revoked:
  %[4]s -N https://localhost:%[5]s/stream
  # another client, which nothing below touches:
  %[6]s -N https://localhost:%[5]s/stream
  # revoke client.pem: the first stream ends at once, the second goes on
  %[7]s revoke %[8]s --cert %[9]s --reason keyCompromise
  # what is revoked, who is connected, and undo it
  %[7]s list %[8]s
  %[7]s conns %[8]s
  %[7]s unrevoke %[8]s --cert %[9]s
`, dir, dataAddr, adminAddr, curl("client"), port, curl("client2"), self, admin, filepath.Join(dir, "client.pem"))
}

// selfCommand is how the user can run this binary again: its path, or "go run" when the
// binary is go run's temporary build.
func selfCommand() string {
	exe, err := os.Executable()
	if err != nil || strings.HasPrefix(exe, os.TempDir()) || strings.Contains(exe, "go-build") {
		return "go run ./cmd/guardian"
	}
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, exe); err == nil && !strings.HasPrefix(rel, "..") {
			return "./" + rel
		}
	}
	return exe
}
