package main

import (
	"bufio"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The lines the demo prints work with the real curl: a `curl -N .../stream` ends when
// `guardian revoke --cert client.pem` runs.
func TestDemoWithRealCurl(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed")
	}
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
