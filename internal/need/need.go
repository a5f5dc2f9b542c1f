// Package need fails a test whose real tool is missing — guardian's tests run redis-server,
// openssl, curl and the rest for real, and a test that skipped for want of one would prove
// nothing — with the Debian package that provides it. `make test` installs them first
// (scripts/setup.sh).
package need

import (
	"os/exec"
	"testing"
)

// Packages maps each tool the tests run to the Debian package that installs it.
func Packages() map[string]string {
	return map[string]string{
		"redis-server":  "redis-server",
		"redis-cli":     "redis-tools",
		"openssl":       "openssl",
		"curl":          "curl",
		"python3":       "python3",
		"mosquitto":     "mosquitto",
		"haproxy":       "haproxy",
		"mosquitto_sub": "mosquitto-clients",
		"mosquitto_pub": "mosquitto-clients",
	}
}

// Tool returns the path of the named tool, or fails tb saying how to install it.
func Tool(tb testing.TB, name string) string {
	tb.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		tb.Fatalf("%s is not installed, and this test runs it for real: run `make test`, which installs it, or apt-get install %s", name, Packages()[name])
	}
	return path
}
