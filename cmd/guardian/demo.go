package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/binding"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
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
	if err := writePKI(dir); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	serverCert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key"))
	if err != nil {
		return err
	}
	pool, err := loadPool(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return err
	}
	metrics := prometheus.NewRegistry()
	// The demo keeps revocations in memory; `guardian serve` has the persistent stores.
	set, err := revoke.NewSet(revoke.SetOptions{Metrics: metrics})
	if err != nil {
		return err
	}

	dataLn, err := net.Listen("tcp", listenAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (pass --listen to use another address)", listenAddr, err)
	}
	adminLn, err := net.Listen("tcp", adminAddr)
	if err != nil {
		dataLn.Close()
		return fmt.Errorf("admin API: listen on %s: %w (pass --admin to use another address)", adminAddr, err)
	}
	n := &node{set: set, store: memStore{set}}
	// Two audiences on one port: public.localhost asks for no certificate, localhost
	// requires one and binds its sessions to it.
	data, err := listener.New(dataLn, listener.Config{
		Set: set, Metrics: metrics, Logger: log, OnRevocation: n.onRevocation,
		Audiences: []listener.Audience{{
			Name: "demo", SNI: []string{"localhost"}, Default: true, Certificates: []tls.Certificate{serverCert},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool,
		}, {
			Name: "public", SNI: []string{"public.localhost"}, Certificates: []tls.Certificate{serverCert},
			ClientAuth: tls.NoClientCert,
		}},
	})
	if err != nil {
		dataLn.Close()
		adminLn.Close()
		return err
	}
	defer data.Shutdown(ctxDone())
	// The admin API sits on a revocation-aware listener too: revoking the admin
	// certificate ends its sessions as well.
	admin, err := listener.New(adminLn, listener.Config{
		Set: set, Logger: log,
		Audiences: []listener.Audience{{
			Name: "admin", SNI: []string{"localhost"}, Default: true, Certificates: []tls.Certificate{serverCert},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool,
		}},
	})
	if err != nil {
		adminLn.Close()
		return err
	}
	defer admin.Shutdown(ctxDone())
	api, err := newAdminAPI(set, n.store, data, []revoke.Key{revoke.MustParseKey("uri:" + adminURI)}, log, metrics)
	if err != nil {
		return err
	}
	api.fleet = func(context.Context) ([]redisfeed.NodeStatus, error) {
		return []redisfeed.NodeStatus{n.status("demo", data.Len())}, nil
	}

	handler, err := demoAudiences(metrics, log)
	if err != nil {
		return err
	}
	dataSrv := &http.Server{Handler: handler, ConnContext: data.ConnContext, ReadHeaderTimeout: 10 * time.Second}
	adminSrv := &http.Server{Handler: api.handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- dataSrv.Serve(data) }()
	go func() { errc <- adminSrv.Serve(admin) }()

	printDemo(stdout, dir, dataLn.Addr().String(), adminLn.Addr().String())
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dataSrv.Shutdown(sctx)
	adminSrv.Shutdown(sctx)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// demoAudiences is the demo's handler: the SNI/Host guard, then the identity echo, with the
// "session" cookie bound to the client certificate on the mTLS audience.
func demoAudiences(metrics prometheus.Registerer, log *slog.Logger) (http.Handler, error) {
	m, err := binding.NewMetrics(metrics)
	if err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	rand.Read(key)
	bound, err := (&binding.Sessions{Cookies: []string{"session"}, Keys: [][]byte{key}, Audience: "demo", Metrics: m, Logger: log}).Wrap(demoHandler())
	if err != nil {
		return nil, err
	}
	public := demoHandler()
	return binding.SNIHostGuard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if info, ok := listener.FromContext(r.Context()); ok && info.Audience() == "public" {
			public.ServeHTTP(w, r)
			return
		}
		bound.ServeHTTP(w, r)
	}), m, log), nil
}

// demoHandler echoes the caller's identity and session; /login starts a session; /stream
// keeps a response open, one line a second, so that a revocation can be seen ending a live
// request.
func demoHandler() http.Handler {
	mux := http.NewServeMux()
	identity := func(r *http.Request) string {
		info, ok := listener.FromContext(r.Context())
		if !ok || info.Leaf() == nil {
			return "anonymous"
		}
		leaf := info.Leaf()
		id := leaf.Subject.String()
		if len(leaf.URIs) > 0 {
			id = leaf.URIs[0].String()
		}
		return fmt.Sprintf("%s (audience %s, serial %s)", id, info.Audience(), leaf.SerialNumber.Text(16))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s\n", identity(r))
		if c, err := r.Cookie("session"); err == nil {
			fmt.Fprintf(w, "your session: %s\n", c.Value)
		}
	})
	mux.HandleFunc("/login", func(w http.ResponseWriter, r *http.Request) {
		var b [8]byte
		rand.Read(b[:])
		http.SetCookie(w, &http.Cookie{Name: "session", Value: fmt.Sprintf("%x", b), Path: "/"})
		fmt.Fprintf(w, "logged in as %s\n", identity(r))
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		f, _ := w.(http.Flusher)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for i := 0; ; i++ {
			fmt.Fprintf(w, "%s still connected as %s\n", time.Now().Format(time.TimeOnly), identity(r))
			if f != nil {
				f.Flush()
			}
			select {
			case <-r.Context().Done():
				return
			case <-t.C:
			}
		}
	})
	return mux
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
