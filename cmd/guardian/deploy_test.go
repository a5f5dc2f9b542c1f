package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The Prometheus rules and the Grafana dashboard in deploy/ parse, and every guardian_*
// metric they name is one that guardian's code defines (a histogram's _bucket, _sum and
// _count series included), so a renamed metric cannot leave a silent alert behind.
func TestDeployFilesUseRealMetrics(t *testing.T) {
	defined := map[string]bool{}
	nameRE := regexp.MustCompile(`Name:\s+"(guardian_[a-z_]+)"`)
	filepath.WalkDir(filepath.Join("..", ".."), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() && (d.Name() == "bench-results" || strings.HasPrefix(d.Name(), ".")) && path != filepath.Join("..", "..") {
			if d != nil && d.IsDir() {
				return filepath.SkipDir
			}
			return err
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, _ := os.ReadFile(path)
		for _, m := range nameRE.FindAllStringSubmatch(string(b), -1) {
			defined[m[1]] = true
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				defined[m[1]+s] = true
			}
		}
		return nil
	})
	if len(defined) < 20 {
		t.Fatalf("found only %d metric names in the source; the scan is broken", len(defined))
	}
	usedRE := regexp.MustCompile(`guardian_[a-z_]+`)
	check := func(file, text string) {
		names := usedRE.FindAllString(text, -1)
		if len(names) == 0 {
			t.Errorf("%s names no guardian metric", file)
		}
		for _, n := range names {
			if !defined[n] {
				t.Errorf("%s uses %s, which guardian does not export", file, n)
			}
		}
	}

	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert, Expr string
				Labels      map[string]string
			}
		}
	}
	if err := yaml.Unmarshal(b, &rules); err != nil || len(rules.Groups) == 0 || len(rules.Groups[0].Rules) < 5 {
		t.Fatalf("alerts.yml: %v, %d groups", err, len(rules.Groups))
	}
	for _, r := range rules.Groups[0].Rules {
		if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" {
			t.Errorf("rule %+v lacks a name, an expression or a severity", r)
		}
		check("alerts.yml "+r.Alert, r.Expr)
	}

	b, err = os.ReadFile(filepath.Join("..", "..", "deploy", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil || len(dash.Panels) < 10 {
		t.Fatalf("grafana-dashboard.json: %v, %d panels", err, len(dash.Panels))
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			check("dashboard panel "+p.Title, tg.Expr)
		}
	}
}
