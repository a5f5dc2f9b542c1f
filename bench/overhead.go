package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"runtime"
	"runtime/pprof"
	"slices"
	"syscall"
	"time"

	"github.com/guardian-mtls/guardian/listener"
)

// OverheadStats is overhead: the same load against a bare crypto/tls listener and guardian's
// listener (with the denylist loaded), in interleaved rounds.
type OverheadStats struct {
	Rounds   int    `json:"rounds"`
	Phase    string `json:"phase_duration"`
	Workers  int    `json:"workers"`
	Denylist int    `json:"denylist_entries"`
	Bare     Load   `json:"bare"`
	Guardian Load   `json:"guardian"`
	// Requests and Handshake are the medians of the per-round ratios guardian/bare (each
	// round runs both servers back to back, so a burst of noise on the shared host spoils
	// one round's ratio, not the median); the ratios of the totals are beside them.
	Requests        float64 `json:"request_ratio"`
	Handshake       float64 `json:"handshake_ratio"`
	RequestsTotals  float64 `json:"request_ratio_of_totals"`
	HandshakeTotals float64 `json:"handshake_ratio_of_totals"`
	// The spread of the per-round ratios.
	RequestsMin  float64 `json:"request_ratio_min"`
	RequestsMax  float64 `json:"request_ratio_max"`
	HandshakeMin float64 `json:"handshake_ratio_min"`
	HandshakeMax float64 `json:"handshake_ratio_max"`
}

// Load is one server's totals over every round.
type Load struct {
	RequestsPerSec   float64 `json:"requests_per_sec"`
	HandshakesPerSec float64 `json:"handshakes_per_sec"`
	// Server CPU (user+system of the harness process, which hosts the servers) per
	// operation, in microseconds.
	CPUPerRequestUs   float64 `json:"cpu_per_request_us"`
	CPUPerHandshakeUs float64 `json:"cpu_per_handshake_us"`
	Failed            int     `json:"failed"`
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func overhead(ctx context.Context, h *harness, cl *client) (*OverheadStats, error) {
	n := h.node
	_, names, err := issue(h.ca, h.dir, "load", 1, nil)
	if err != nil {
		return nil, err
	}
	cert := []certSpec{{Cert: names[0] + ".pem", Key: names[0] + ".key"}}

	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	// Every goroutine of each server carries a profiler label (goroutines inherit their
	// creator's), so a -cpuprofile of this scenario splits by server=bare|guardian
	// (go tool pprof -tagfocus server=guardian).
	var bareAddr, guardianAddr string
	pprof.Do(ctx, pprof.Labels("server", "bare"), func(context.Context) {
		bareAddr = n.serveHTTP(tls.NewListener(inner, n.bareConfig()), nil)
	})
	var gl *listener.Listener
	pprof.Do(ctx, pprof.Labels("server", "guardian"), func(context.Context) {
		if gl, err = n.listen(); err == nil {
			guardianAddr = n.serveHTTP(gl, gl.ConnContext)
		}
	})
	if err != nil {
		return nil, err
	}
	n.extra = append(n.extra, func() { shutdownNow(gl) })

	type total struct {
		ops    [2]int // requests, handshakes
		cpu    [2]time.Duration
		wall   [2]time.Duration
		failed int
	}
	var bare, guard total
	var reqRatios, hsRatios []float64
	modes := []string{"requests", "handshakes"}
	p := newProgress(h.o.progressTo, "overhead: interleaved load rounds", h.o.loadRounds*4)
	step := 0
	for r := 0; r < h.o.loadRounds; r++ {
		for mi, mode := range modes {
			var rate [2]float64
			order := []int{0, 1}
			if (r+mi)%2 == 1 {
				order = []int{1, 0} // alternate who goes first
			}
			for _, which := range order {
				addr, t := bareAddr, &bare
				if which == 1 {
					addr, t = guardianAddr, &guard
				}
				runtime.GC() // neither side inherits the other's garbage
				cpu0, t0 := processCPU(), time.Now()
				if err := cl.send(clientCmd{Cmd: "load", Addr: addr, CA: h.caFile(), Certs: cert, Mode: mode,
					Workers: h.o.loadWorkers, Duration: h.o.loadDuration}); err != nil {
					return nil, err
				}
				ev, err := cl.await("loaded", h.o.loadDuration+time.Minute, nil, nil)
				if err != nil {
					return nil, fmt.Errorf("%s against %s: %w", mode, []string{"bare", "guardian"}[which], err)
				}
				wall, cpu := time.Since(t0), processCPU()-cpu0
				t.ops[mi] += ev.N
				t.cpu[mi] += cpu
				t.wall[mi] += wall
				t.failed += ev.Failed
				rate[which] = float64(ev.N) / wall.Seconds()
				step++
				p.set(step)
			}
			if mi == 0 {
				reqRatios = append(reqRatios, rate[1]/rate[0])
			} else {
				hsRatios = append(hsRatios, rate[1]/rate[0])
			}
		}
	}
	p.done()
	load := func(t total) Load {
		return Load{
			RequestsPerSec:    float64(t.ops[0]) / t.wall[0].Seconds(),
			HandshakesPerSec:  float64(t.ops[1]) / t.wall[1].Seconds(),
			CPUPerRequestUs:   float64(t.cpu[0].Microseconds()) / float64(t.ops[0]),
			CPUPerHandshakeUs: float64(t.cpu[1].Microseconds()) / float64(t.ops[1]),
			Failed:            t.failed,
		}
	}
	s := &OverheadStats{Rounds: h.o.loadRounds, Phase: h.o.loadDuration.String(), Workers: h.o.loadWorkers,
		Denylist: n.set.Len(), Bare: load(bare), Guardian: load(guard)}
	s.RequestsTotals = s.Guardian.RequestsPerSec / s.Bare.RequestsPerSec
	s.HandshakeTotals = s.Guardian.HandshakesPerSec / s.Bare.HandshakesPerSec
	s.Requests, s.Handshake = median(reqRatios), median(hsRatios)
	s.RequestsMin, s.RequestsMax = minMax(reqRatios)
	s.HandshakeMin, s.HandshakeMax = minMax(hsRatios)
	return s, nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func minMax(v []float64) (float64, float64) {
	lo, hi := v[0], v[0]
	for _, x := range v {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}
