package daemon

import "syscall"

// keptFDs are the descriptors beside max_conns: for upstream conns (three quarters, shared
// among the audiences with an upstream), the admin listener (a quarter), Redis and files.
func (c *Config) keptFDs() int {
	limit := fdLimit()
	if c.MaxConns != nil && limit > 0 {
		return max(0, limit-*c.MaxConns)
	}
	return limit - fdBound()
}

// adminMaxConns bounds the admin listener's conns: operators and scrapers need a few, and
// any certificate of the admin CA can connect before admin.allow refuses it.
func (c *Config) adminMaxConns() int {
	return max(16, min(1024, c.keptFDs()/4))
}

// upstreamConns is each audience's bound on conns to its upstream: max_upstream_conns, or
// its share of the descriptors kept beside max_conns.
func (c *Config) upstreamConns() map[string]int {
	limit := fdLimit()
	kept := c.keptFDs() * 3 / 4
	n := 0
	for _, a := range c.Audiences {
		if a.Upstream != "" {
			n++
		}
	}
	out := map[string]int{}
	for _, a := range c.Audiences {
		switch {
		case a.MaxUpstreamConns > 0:
			out[a.Name] = a.MaxUpstreamConns
		case a.Upstream != "" && limit > 0:
			out[a.Name] = min(1024, max(16, kept/n))
		}
	}
	return out
}

// fdLimit is the file descriptor limit, or 0 when unknown or unlimited.
func fdLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == 0 || rl.Cur > 1<<30 {
		return 0
	}
	return int(rl.Cur)
}

// fdBound is the default max_conns: the file descriptor limit (which Go raises to the
// hard limit at start) less a reserve for upstream conns, Redis, CRL fetches and files.
func fdBound() int {
	n := fdLimit()
	if n == 0 {
		return 0
	}
	return max(n/2, n-max(64, n/8)) // at least half, under a tiny limit
}
