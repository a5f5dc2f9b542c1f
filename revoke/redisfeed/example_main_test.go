package redisfeed_test

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/guardian-mtls/guardian/internal/redistest"
)

// exampleRedisURL is the redis-server the package's examples use (an example has no
// testing.T for redistest.Start): one for the whole test binary, started by TestMain.
var exampleRedisURL string

func TestMain(m *testing.M) {
	flag.Parse()
	url, stop, err := redistest.StartMain()
	switch {
	case errors.Is(err, exec.ErrNotFound):
		// As the tests do (redistest.Start fails them): a test that cannot run its real
		// process fails and says why.
		fmt.Fprintln(os.Stderr, "redis-server is not installed, and the examples run it for real: run `make test`, which installs it, or apt-get install redis-server")
		os.Exit(1)
	case err != nil:
		fmt.Fprintln(os.Stderr, "redis for the examples:", err)
		os.Exit(1)
	default:
		exampleRedisURL = url
	}
	code := m.Run()
	if stop != nil {
		stop()
	}
	os.Exit(code)
}
