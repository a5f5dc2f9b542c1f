package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMain lets a test run guardian as a process of its own: the test binary, re-executed
// with GUARDIAN_TEST_EXEC=1, is guardian (under GUARDIAN_TEST_NOFILE descriptors, if set).
func TestMain(m *testing.M) {
	if os.Getenv("GUARDIAN_TEST_EXEC") == "1" {
		if n, err := strconv.ParseUint(os.Getenv("GUARDIAN_TEST_NOFILE"), 10, 64); err == nil {
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n}); err != nil {
				os.Stderr.WriteString("setrlimit: " + err.Error() + "\n")
				os.Exit(2)
			}
		}
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	code := m.Run()
	if built.path != "" {
		os.RemoveAll(filepath.Dir(built.path))
	}
	os.Exit(code)
}

// execServe runs `guardian serve -config file` as its own process with at most nofile
// descriptors and returns the address it listens on.
func execServe(t *testing.T, file string, nofile int) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "serve", "-config", file)
	cmd.Env = append(os.Environ(), "GUARDIAN_TEST_EXEC=1", "GUARDIAN_TEST_NOFILE="+strconv.Itoa(nofile))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`listening on (\S+) `)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
	}()
	select {
	case a := <-addr:
		return a
	case <-time.After(20 * time.Second):
		t.Fatal("guardian serve (own process) did not start")
	}
	return ""
}

var built struct {
	once sync.Once
	path string
	err  error
}

// guardianBinary builds the guardian command, once per test binary, and returns its path.
func guardianBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "guardian-bin-")
		if err != nil {
			built.err = err
			return
		}
		built.path = filepath.Join(dir, "guardian")
		if out, err := exec.Command("go", "build", "-o", built.path, ".").CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.path
}
