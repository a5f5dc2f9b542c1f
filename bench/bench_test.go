package main

import (
	"context"
	"os"
	"strings"
	"testing"
)

func TestMain(m *testing.M) {
	// The harness re-executes its own binary as the client process; in tests that binary
	// is the test binary.
	if os.Getenv(clientEnv) == "1" {
		if err := clientMain(os.Stdin, os.Stdout); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A tiny run of every scenario with the real pieces: redis-server, the client process, a
// guardian node. It checks the harness measures, not how fast.
func TestHarnessSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	res, err := run(context.Background(), options{rounds: 5, conns: 40, certs: 4, others: 20,
		scenarios: "eviction-single,eviction-bulk", redisBin: "redis-server"})
	if err != nil {
		if strings.Contains(err.Error(), "not found") {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	if s := res.EvictionSingle; s == nil || s.Rounds != 5 || s.P50 <= 0 || s.Max < s.P50 {
		t.Fatalf("eviction-single = %+v", s)
	}
	b := res.EvictionBulk
	if b == nil || b.Closed != 40 || b.Collateral != 0 || b.AllClosed < b.First {
		t.Fatalf("eviction-bulk = %+v", b)
	}
	if res.Env.Go == "" || res.Env.Redis == "" || res.Env.FDLimit == 0 {
		t.Fatalf("environment not recorded: %+v", res.Env)
	}
}

func TestBadOptions(t *testing.T) {
	good := options{rounds: 1, conns: 10, certs: 2, others: 5, scenarios: "eviction-single", redisBin: "redis-server"}
	tests := []struct {
		name    string
		mod     func(*options)
		mention string
	}{
		{"zero rounds", func(o *options) { o.rounds = 0 }, "-rounds"},
		{"fewer conns than certs", func(o *options) { o.conns = 1 }, "at least -certs"},
		{"too many fds", func(o *options) { o.conns, o.others = 15000, 5000 }, "20,000 fds"},
		{"unknown scenario", func(o *options) { o.scenarios = "peers" }, "unknown scenario"},
		{"missing redis", func(o *options) { o.redisBin = "no-such-redis-server" }, "apt-get install redis-server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := good
			tt.mod(&o)
			_, err := run(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("error %v; want one mentioning %q", err, tt.mention)
			}
		})
	}
}
