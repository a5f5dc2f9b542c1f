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

// exampleNeedsRedis matches the examples that need exampleRedisURL.
const exampleNeedsRedis = "^ExampleFeed$"

func TestMain(m *testing.M) {
	flag.Parse()
	url, stop, err := redistest.StartMain()
	switch {
	case errors.Is(err, exec.ErrNotFound):
		// As the tests do (redistest.Start skips them), skip the examples: an example
		// cannot skip itself.
		fmt.Fprintln(os.Stderr, "redis-server not installed (apt-get install redis-server): skipping", exampleNeedsRedis)
		skip := exampleNeedsRedis
		if s := flag.Lookup("test.skip").Value.String(); s != "" {
			skip = s + "|" + skip
		}
		flag.Set("test.skip", skip)
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
