package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// PeersStats is peers: one live keep-alive conn of a certificate that is then revoked, among
// unrelated live conns, against guardian and each peer found on PATH.
type PeersStats struct {
	Window string        `json:"window"`
	Peers  []*PeerResult `json:"peers"`
}

// PeerResult is what one server did with the revoked live conn.
type PeerResult struct {
	Peer    string `json:"peer"`
	Version string `json:"version,omitempty"`
	How     string `json:"how"` // how the certificate was revoked
	// Skipped says why the peer was not measured (not installed).
	Skipped string `json:"skipped,omitempty"`
	// RevokedClosed: the revoked live conn ended within the window, ClosedMs after the
	// revocation was handed to the server.
	RevokedClosed bool    `json:"revoked_conn_closed"`
	ClosedMs      float64 `json:"revoked_closed_ms,omitempty"`
	Unrelated     int     `json:"unrelated_conns"`
	Dropped       int     `json:"unrelated_dropped"`
	// NewRefused: a new handshake with the revoked certificate was refused afterwards,
	// which shows the server did learn of the revocation.
	NewRefused bool `json:"new_handshake_refused"`
}

// A peer is a server guardian is compared with.
type peer interface {
	name() string
	bin() string
	how() string
	version() string
	// start runs the server on addr with the files in dir; crl is the CRL file it loads.
	start(dir, addr string) (*exec.Cmd, error)
	// revoke hands the server the new CRL, the way it supports at run time.
	revoke(dir string, cmd *exec.Cmd) error
}

func peers(ctx context.Context, h *harness, cl *client) (*PeersStats, error) {
	n := h.node
	window := h.o.peerWindow
	s := &PeersStats{Window: window.String()}
	victim, vnames, err := issue(h.ca, h.dir, "peer-victim", 1, nil)
	if err != nil {
		return nil, err
	}
	_, onames, err := issue(h.ca, h.dir, "peer-other", 10, nil)
	if err != nil {
		return nil, err
	}
	// guardian first: the same client, the certificate revoked through Redis.
	gl, err := n.listen()
	if err != nil {
		return nil, err
	}
	n.extra = append(n.extra, func() { shutdownNow(gl) })
	gaddr := n.serveHTTP(gl, gl.ConnContext)
	k, _ := revoke.KeyFor(victim[0].Cert, revoke.KindSerial)
	g := &PeerResult{Peer: "guardian", Version: "this build", How: "revoke through Redis (Store.Revoke)"}
	if err := watchRevocation(h, cl, g, 1, gaddr, vnames[0], onames, window, func() error {
		_, err := h.store.Revoke(ctx, revoke.Entry{Key: k, Reason: "keyCompromise"})
		return err
	}); err != nil {
		return nil, fmt.Errorf("guardian: %w", err)
	}
	s.Peers = append(s.Peers, g)

	for i, p := range []peer{nginxPeer{}, haproxyPeer{}} {
		r := &PeerResult{Peer: p.name(), How: p.how()}
		s.Peers = append(s.Peers, r)
		if _, err := exec.LookPath(p.bin()); err != nil {
			r.Skipped = p.bin() + " not on PATH: `make bench-peers` installs nginx and haproxy (apt-get)"
			fmt.Fprintf(h.o.progressTo, "  peers: %s skipped: %s\n", p.name(), r.Skipped)
			continue
		}
		r.Version = p.version()
		dir := filepath.Join(h.dir, p.name())
		if err := writePeerFiles(dir, h.ca, n.server, nil); err != nil {
			return nil, err
		}
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		cmd, err := p.start(dir, addr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p.name(), err)
		}
		err = watchRevocation(h, cl, r, 1000*(i+1)+1, addr, vnames[0], onames, window, func() error {
			if err := writePeerFiles(dir, h.ca, n.server, victim[0].Cert); err != nil {
				return err
			}
			return p.revoke(dir, cmd)
		})
		stopPeer(cmd)
		if err != nil {
			return nil, fmt.Errorf("%s: %w (its logs: %s)", p.name(), err, dir)
		}
	}
	return s, nil
}

// watchRevocation holds a conn of the victim certificate and o.peerConns unrelated conns to
// addr, revokes, and watches for the window; then it tries a new handshake with the victim.
func watchRevocation(h *harness, cl *client, r *PeerResult, tag int, addr, victim string, others []string, window time.Duration, revokeFn func() error) error {
	all := append([]certSpec{{Cert: victim + ".pem", Key: victim + ".key", Tag: tag, N: 1}}, specs(others, h.o.peerConns, -tag, 0)...)
	if err := cl.dial(addr, h.caFile(), all, true, "", nil); err != nil {
		return err
	}
	r.Unrelated = h.o.peerConns
	time.Sleep(100 * time.Millisecond) // every conn idle in its reader
	start := time.Now()
	if err := revokeFn(); err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	end := time.After(window)
watch:
	for {
		select {
		case e, ok := <-cl.events:
			if !ok {
				return errors.New("the client process exited")
			}
			switch {
			case e.Ev != "close":
			case e.Tag == tag:
				r.RevokedClosed, r.ClosedMs = true, ms(time.Unix(0, e.At).Sub(start))
			case e.Tag == -tag:
				r.Dropped++
			}
		case <-end:
			break watch
		}
	}
	// A new handshake with the revoked certificate: refused if the server learnt of it.
	if err := cl.send(clientCmd{Cmd: "dial", Addr: addr, CA: h.caFile(), HTTP: true,
		Certs: []certSpec{{Cert: victim + ".pem", Key: victim + ".key", Tag: tag + 500, N: 1}}}); err != nil {
		return err
	}
	_, err := cl.await("ready", 30*time.Second, nil, nil)
	r.NewRefused = err != nil && strings.Contains(err.Error(), "every dial failed")
	if err != nil && !r.NewRefused {
		return err
	}
	cl.send(clientCmd{Cmd: "close"})
	_, err = cl.await("done", 30*time.Second, nil, nil)
	return err
}

// writePeerFiles writes the server's certificate and key, the CA, and a CRL of the CA
// listing revoked (if any) into dir.
func writePeerFiles(dir string, ca *pkitest.CA, server *pkitest.Leaf, revoked *x509.Certificate) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := server.WriteFiles(dir, "server"); err != nil {
		return err
	}
	combined := append(server.CertPEM(), server.KeyPEM()...)
	if err := os.WriteFile(filepath.Join(dir, "server-combined.pem"), combined, 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), ca.CertPEM(), 0o644); err != nil {
		return err
	}
	tmpl := &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now().Add(-time.Minute), NextUpdate: time.Now().Add(time.Hour)}
	if revoked != nil {
		tmpl.Number = big.NewInt(2)
		tmpl.RevokedCertificateEntries = []x509.RevocationListEntry{{SerialNumber: revoked.SerialNumber, RevocationTime: time.Now(), ReasonCode: 1}}
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.Cert, ca.Key)
	if err != nil {
		return err
	}
	// Written whole, then renamed: a reader never sees half a CRL.
	tmp := filepath.Join(dir, "crl.pem.tmp")
	if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "crl.pem"))
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startProc starts cmd with its output in dir/name.out and waits until addr accepts.
func startProc(cmd *exec.Cmd, dir, name, addr string) (*exec.Cmd, error) {
	out, err := os.Create(filepath.Join(dir, name+".out"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // stopPeer ends its workers too
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); out.Close(); close(exited) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			c.Close()
			return cmd, nil
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(dir, name+".out"))
			return nil, fmt.Errorf("%s exited at start: %s", name, bytes.TrimSpace(b))
		default:
		}
		if time.Now().After(deadline) {
			stopPeer(cmd)
			return nil, fmt.Errorf("%s did not listen on %s within 10s", name, addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stopPeer kills the peer's whole process group (a master and its workers).
func stopPeer(cmd *exec.Cmd) {
	if cmd == nil || cmd.Process == nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	for i := 0; i < 200; i++ {
		if syscall.Kill(-cmd.Process.Pid, 0) != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func firstLine(cmd string, args ...string) string {
	out, _ := exec.Command(cmd, args...).CombinedOutput()
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return line
}

// nginx: ssl_crl, re-read at a reload (SIGHUP to the master).
type nginxPeer struct{}

func (nginxPeer) name() string { return "nginx" }
func (nginxPeer) bin() string  { return "nginx" }
func (nginxPeer) how() string {
	return "new ssl_crl file, then a reload (SIGHUP to the master, as nginx -s reload)"
}
func (nginxPeer) version() string { return firstLine("nginx", "-v") }

func (nginxPeer) start(dir, addr string) (*exec.Cmd, error) {
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // the workers must read the run's private directory
	}
	conf := fmt.Sprintf(`%s
daemon off;
master_process on;
worker_processes 1;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[2]s/tmp-body;
  proxy_temp_path %[2]s/tmp-proxy;
  fastcgi_temp_path %[2]s/tmp-fastcgi;
  uwsgi_temp_path %[2]s/tmp-uwsgi;
  scgi_temp_path %[2]s/tmp-scgi;
  keepalive_timeout 300s;
  keepalive_requests 1000000;
  server {
    listen %[3]s ssl;
    server_name localhost;
    ssl_certificate %[2]s/server.pem;
    ssl_certificate_key %[2]s/server.key;
    ssl_client_certificate %[2]s/ca.pem;
    ssl_verify_client on;
    ssl_crl %[2]s/crl.pem;
    location / { return 200 "ok\n"; }
  }
}
`, user, dir, addr)
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return startProc(exec.Command("nginx", "-p", dir, "-c", filepath.Join(dir, "nginx.conf")), dir, "nginx", addr)
}

func (nginxPeer) revoke(dir string, cmd *exec.Cmd) error {
	return cmd.Process.Signal(syscall.SIGHUP)
}

// HAProxy: crl-file on the bind line, replaced at run time through the admin socket
// (set ssl crl-file + commit ssl crl-file: HAProxy 2.5 and later).
type haproxyPeer struct{}

func (haproxyPeer) name() string { return "haproxy" }
func (haproxyPeer) bin() string  { return "haproxy" }
func (haproxyPeer) how() string {
	return "runtime API: set ssl crl-file + commit ssl crl-file (no reload)"
}
func (haproxyPeer) version() string { return firstLine("haproxy", "-v") }

func (haproxyPeer) start(dir, addr string) (*exec.Cmd, error) {
	conf := fmt.Sprintf(`global
  stats socket %[1]s/admin.sock mode 600 level admin
  maxconn 4096
defaults
  mode http
  timeout client 300s
  timeout connect 5s
  timeout server 5s
  timeout http-request 10s
  timeout http-keep-alive 300s
frontend bench
  bind %[2]s ssl crt %[1]s/server-combined.pem ca-file %[1]s/ca.pem verify required crl-file %[1]s/crl.pem
  http-request return status 200 content-type text/plain string "ok"
`, dir, addr)
	if err := os.WriteFile(filepath.Join(dir, "haproxy.cfg"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return startProc(exec.Command("haproxy", "-db", "-f", filepath.Join(dir, "haproxy.cfg")), dir, "haproxy", addr)
}

func (haproxyPeer) revoke(dir string, _ *exec.Cmd) error {
	crlFile := filepath.Join(dir, "crl.pem")
	crl, err := os.ReadFile(crlFile)
	if err != nil {
		return err
	}
	if out, err := haproxyCommand(dir, "set ssl crl-file "+crlFile+" <<\n"+string(crl)+"\n"); err != nil {
		return err
	} else if !strings.Contains(out, "transaction created") && !strings.Contains(out, "Transaction updated") {
		return fmt.Errorf("set ssl crl-file: %s", strings.TrimSpace(out))
	}
	out, err := haproxyCommand(dir, "commit ssl crl-file "+crlFile+"\n")
	if err != nil {
		return err
	}
	if !strings.Contains(out, "Success") {
		return fmt.Errorf("commit ssl crl-file: %s", strings.TrimSpace(out))
	}
	return nil
}

// haproxyCommand sends one command on the admin socket and returns the answer.
func haproxyCommand(dir, cmd string) (string, error) {
	c, err := net.DialTimeout("unix", filepath.Join(dir, "admin.sock"), 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, cmd); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}
