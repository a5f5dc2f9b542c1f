package need

import (
	"os"
	"strings"
	"testing"
)

// scripts/setup.sh installs every tool a test may ask for, by the same package: the two
// lists are one fact written twice, in bash and in Go.
func TestSetupInstallsEveryTool(t *testing.T) {
	b, err := os.ReadFile("../../scripts/setup.sh")
	if err != nil {
		t.Fatal(err)
	}
	for tool, pkg := range Packages() {
		if !strings.Contains(string(b), tool+":"+pkg) {
			t.Errorf("scripts/setup.sh does not install %s (%s)", tool, pkg)
		}
	}
}
