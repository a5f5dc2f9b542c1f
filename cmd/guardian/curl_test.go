package main

import (
	"bufio"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/need"
)

// The lines the demo prints work with the real curl: a `curl -N .../stream` ends when
// `guardian revoke --cert client.pem` runs.
func TestDemoWithRealCurl(t *testing.T) {
	need.Tool(t, "curl")
	d := startDemo(t)
	port := d.addr[strings.LastIndexByte(d.addr, ':')+1:]
	cmd := exec.Command("curl", "-sSN", "--cacert", filepath.Join(d.dir, "ca.pem"),
		"--cert", filepath.Join(d.dir, "client.pem"), "--key", filepath.Join(d.dir, "client.key"),
		"https://localhost:"+port+"/stream")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || !strings.Contains(sc.Text(), "still connected as "+clientURI) {
		t.Fatalf("curl's first line: %q", sc.Text())
	}
	go func() {
		for sc.Scan() {
		}
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	out, code := d.cli(t, append([]string{"revoke"}, append(d.adminArgs("admin"), "--cert", filepath.Join(d.dir, "client.pem"))...)...)
	if code != 0 {
		t.Fatalf("revoke: %s", out)
	}
	select {
	case err := <-exited:
		if err == nil {
			t.Fatal("curl exited 0; want the transfer cut")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("curl's stream still open 10s after the revocation")
	}
}

// The demo's tour of binding, with the real curl: a session cookie set for client.pem is
// good with client.pem and gets 401 with client2.pem; the public audience on the same port
// answers without a certificate and answers 421 when asked for the mTLS audience's host.
func TestDemoTourWithRealCurl(t *testing.T) {
	need.Tool(t, "curl")
	d := startDemo(t)
	_, port, _ := net.SplitHostPort(d.addr)
	jar := filepath.Join(t.TempDir(), "jar")
	curl := func(cert string, args ...string) string {
		t.Helper()
		base := []string{"-sS", "--cacert", filepath.Join(d.dir, "ca.pem"), "-w", "|%{http_code}"}
		if cert != "" {
			base = append(base, "--cert", filepath.Join(d.dir, cert+".pem"), "--key", filepath.Join(d.dir, cert+".key"))
		}
		out, err := exec.Command("curl", append(base, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("curl %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	if out := curl("client", "-c", jar, "https://localhost:"+port+"/login"); !strings.HasSuffix(out, "|200") {
		t.Fatalf("login: %q", out)
	}
	if out := curl("client", "-b", jar, "https://localhost:"+port+"/"); !strings.Contains(out, "your session: ") || !strings.HasSuffix(out, "|200") {
		t.Fatalf("client.pem with its session: %q", out)
	}
	if out := curl("client2", "-b", jar, "https://localhost:"+port+"/"); out != `{"message":"unauthorized"}`+"\n|401" {
		t.Fatalf("client2.pem with client.pem's session: %q; want the generic 401", out)
	}
	if out := curl("", "https://public.localhost:"+port+"/"); out != "hello anonymous\n|200" {
		t.Fatalf("public audience: %q", out)
	}
	if out := curl("", "-H", "Host: localhost", "https://public.localhost:"+port+"/"); !strings.HasSuffix(out, "|421") {
		t.Fatalf("public conn asking for localhost: %q; want 421", out)
	}
}
