package main

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"time"

	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// SoakStats is what the soak held, and whether the invariants held with it.
type SoakStats struct {
	Seconds float64 `json:"seconds"`
	Conns   int     `json:"conns"` // held conns, in the first client process
	Certs   int     `json:"certs"` // certificates among them, half of which get revoked
	// Revocations and unrevocations published to Redis during the soak; HeldRevocations of
	// the revocations were of held certificates, the rest of serials nobody holds, which
	// keep the feed, the Set and the eviction scans busy at the same rate to the end.
	Revocations     int `json:"revocations"`
	Unrevocations   int `json:"unrevocations"`
	HeldRevocations int `json:"held_revocations"`
	// RevokedConns are the held conns of certificates revoked during the soak; ClosedRevoked
	// of them closed (must be all). Collateral are held conns of other certificates that
	// closed (must be none).
	RevokedConns  int `json:"revoked_conns"`
	ClosedRevoked int `json:"closed_revoked"`
	Collateral    int `json:"collateral"`
	// Churn, from two more client processes: keep-alive requests, and new conns each with a
	// full handshake and one request.
	Requests          int `json:"requests"`
	RequestFailures   int `json:"request_failures"`
	Handshakes        int `json:"handshakes"`
	HandshakeFailures int `json:"handshake_failures"`
	// The server process before the soak's conns and after they are all gone; then after a
	// second round of churn alone (AgainConns more conns), which must not have grown it:
	// what the first round left is capacity kept for reuse, bounded by its peak, while a
	// leak grows with every conn.
	Baseline   Resources `json:"baseline"`
	After      Resources `json:"after"`
	Again      Resources `json:"after_second_round"`
	AgainConns int       `json:"second_round_conns"`
	// Lost are Redis changes (revocations and unrevocations) the node did not have right
	// once the soak ended: must be none.
	Lost int `json:"lost"`
	// Faults injected during the soak (-soak-faults), and what held through them.
	Faults *SoakFaults `json:"faults,omitempty"`
}

// Resources are the server process's goroutines, open fds and live heap (after a GC).
type Resources struct {
	Goroutines int    `json:"goroutines"`
	FDs        int    `json:"fds"`
	HeapBytes  uint64 `json:"heap_bytes"`
}

func resources() Resources {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	fds, _ := os.ReadDir("/proc/self/fd")
	return Resources{Goroutines: runtime.NumGoroutine(), FDs: len(fds), HeapBytes: m.HeapAlloc}
}

// leakSlack is how far above the baseline the server may end. Goroutines and fds: what a
// teardown leaves for a moment (an idle Redis conn, a timer). Heap: what is kept for reuse,
// bounded by the peak rather than growing with time — measured with -memprofile after a
// 15,000-conn soak: the runtime's goroutine descriptors (6.7 MB; Go never frees them), the
// registry's slices (3.2 MB of capacity) and http.Server's conn map (1 MB; maps do not
// shrink). A leak of a goroutine, an fd or a few hundred bytes per conn or per handshake —
// hundreds of thousands of them in a soak — is far beyond it.
var leakSlack = Resources{Goroutines: 40, FDs: 40, HeapBytes: 16 << 20}

// soak holds o.soakConns mTLS conns of o.soakConns/50 certificates from one client process,
// runs churn from two others, and meanwhile revokes a certificate through Redis every
// o.soakEvery (and unrevokes every third one revoked) for o.soakDuration. With o.soakFaults
// it also partitions, slows and kills Redis, revokes certificates by CRL and by OCSP, and
// makes the CRL URL and the OCSP responder hang, fail and serve garbage (runFaults). Then it
// checks that every held conn of a revoked certificate closed and no other did, that the
// node has every Redis change right, and that the server's goroutines, fds and heap are back
// near where they started once every conn is gone.
func soak(ctx context.Context, h *harness, cl *client) (*SoakStats, error) {
	o := h.o
	rig, err := startSoakRig(ctx, h)
	if err != nil {
		return nil, err
	}
	defer rig.stop()
	gl, addr := rig.l, rig.l.Addr().String()
	base := resources()

	const perCert = 50
	certs := max(2, o.soakConns/perCert)
	leaves, names, err := issue(h.ca, h.dir, "soak", certs, o.progressTo)
	if err != nil {
		return nil, err
	}
	_, loadNames, err := issue(h.ca, h.dir, "soak-load", 1, nil)
	if err != nil {
		return nil, err
	}
	// Tag i+1 is certificate i. The first half may be revoked through Redis; of the second
	// half, the first group by the CRL and the next by OCSP (with faults), the rest never.
	group := 0
	if o.soakFaults {
		group = certs / 30
	}
	var crlTags, ocspTags []int
	for i := range group {
		crlTags = append(crlTags, certs/2+1+i)
		ocspTags = append(ocspTags, certs/2+1+group+i)
	}
	all := specs(names, o.soakConns, 1, 1)
	held := map[int]int{}
	for _, s := range all {
		held[s.Tag] = s.N
	}
	if err := cl.dialCmd(clientCmd{Cmd: "dial", Addr: addr, CA: h.caFile(), Certs: all, HTTP: true, Hold: true}, "soak: opening conns", o.progressTo); err != nil {
		return nil, err
	}

	// Churn, in two more processes, for the whole soak.
	type loaded struct {
		ok, failed int
		err        error
	}
	churn := func(mode string, d time.Duration) (chan loaded, func(), error) {
		c, err := startClient()
		if err != nil {
			return nil, nil, err
		}
		out := make(chan loaded, 1)
		var once sync.Once
		stop := func() { once.Do(c.stop) }
		c.send(clientCmd{Cmd: "load", Addr: addr, CA: h.caFile(), Mode: mode, Workers: 4, Duration: d,
			Certs: []certSpec{{Cert: loadNames[0] + ".pem", Key: loadNames[0] + ".key"}}})
		go func() {
			ev, err := c.await("loaded", d+time.Minute, nil, nil)
			out <- loaded{ev.N, ev.Failed, err}
		}()
		return out, stop, nil
	}
	var churnStops []func()
	stopChurn := func() {
		for _, f := range churnStops {
			f()
		}
		churnStops = nil // and the handles, with their buffers, become garbage
	}
	defer func() { stopChurn() }()
	reqs, stopReqs, err := churn("requests", o.soakDuration)
	if err != nil {
		return nil, err
	}
	churnStops = append(churnStops, stopReqs)
	hss, stopHss, err := churn("handshakes", o.soakDuration)
	if err != nil {
		return nil, err
	}
	churnStops = append(churnStops, stopHss)
	stopReqs, stopHss = nil, nil

	s := &SoakStats{Conns: o.soakConns, Certs: certs}
	var revokedMu sync.Mutex
	revoked := map[int]bool{}
	markRevoked := func(tags ...int) {
		revokedMu.Lock()
		defer revokedMu.Unlock()
		for _, t := range tags {
			revoked[t] = true
		}
	}
	keyOf := func(tag int) revoke.Key {
		k, _ := revoke.KeyFor(leaves[tag-1].Cert, revoke.KindSerial)
		return k
	}
	// What Redis says of each key the soak changed there: the node must agree at the end.
	want := map[revoke.Key]bool{}
	retries := 0
	change := func(k revoke.Key, revoking bool, reason revoke.Reason) error {
		failed, err := rig.write(ctx, func(ctx context.Context, st *redisfeed.Store) error {
			if revoking {
				_, err := st.Revoke(ctx, revoke.Entry{Key: k, Reason: reason})
				return err
			}
			_, _, err := st.Unrevoke(ctx, k)
			return err
		})
		retries += failed
		want[k] = revoking
		return err
	}
	p := newProgress(o.progressTo, "soak: revoking under churn", int(o.soakDuration/time.Second))
	start := time.Now()
	var faults *SoakFaults
	faultsDone := make(chan error, 1)
	if o.soakFaults {
		faults = &SoakFaults{ClosedBy: map[string]int{}}
		watch := watchStaleness(rig.feed)
		go func() {
			err := runFaults(ctx, rig, start, o.soakDuration, faults, leaves, crlTags, ocspTags, markRevoked)
			watch.end()
			faults.StaleSeen, faults.MaxStaleness = watch.seen.Load(), time.Duration(watch.worst.Load()).Seconds()
			faultsDone <- err
		}()
	} else {
		faultsDone <- nil
	}
	t := time.NewTicker(o.soakEvery)
	next := 1
	var toLift []int // tags whose revocation is to be lifted
	for time.Since(start) < o.soakDuration {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
		p.set(int(time.Since(start) / time.Second))
		if next > certs/2 {
			// Every revocable certificate is revoked: revoke, then lift, serials of the same
			// CA that nobody holds.
			k := revoke.SerialKey(h.ca.Cert.RawSubject, big.NewInt(int64(1e9+s.Revocations)))
			if err := change(k, true, "superseded"); err != nil {
				return nil, err
			}
			s.Revocations++
			if s.Revocations%2 == 0 {
				if err := change(k, false, ""); err != nil {
					return nil, err
				}
				s.Unrevocations++
			}
			continue
		}
		if err := change(keyOf(next), true, "keyCompromise"); err != nil {
			return nil, err
		}
		markRevoked(next)
		s.Revocations++
		s.HeldRevocations++
		if next%3 == 0 {
			toLift = append(toLift, next-1)
		}
		// Lift earlier revocations once the node has applied them: their conns are gone
		// already, and new handshakes with them are allowed again; nothing else may change.
		// (One lifted before the node heard it — Redis partitioned or down — would rightly
		// never close anything: the node applies where Redis ends up.)
		for len(toLift) > 0 && rig.set.Has(keyOf(toLift[0])) {
			if err := change(keyOf(toLift[0]), false, ""); err != nil {
				return nil, err
			}
			s.Unrevocations++
			toLift = toLift[1:]
		}
		next++
	}
	t.Stop()
	p.done()
	s.Seconds = time.Since(start).Seconds()
	if err := <-faultsDone; err != nil {
		return s, fmt.Errorf("faults: %w", err)
	}
	s.Faults = faults
	// The node must end with what Redis says of every key the soak changed: none lost to
	// a partition, a slow Redis or a killed one.
	lost := func() int {
		n := 0
		for k, v := range want {
			if rig.set.Has(k) != v {
				n++
			}
		}
		return n
	}
	for deadline := time.Now().Add(30 * time.Second); lost() > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	s.Lost = lost()
	if faults != nil {
		faults.WriteRetries = retries
		for deadline := time.Now().Add(10 * time.Second); rig.feed.Staleness() >= soakStaleAfter && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
		faults.FreshAtEnd = rig.feed.Staleness() < soakStaleAfter
	}
	for _, c := range []struct {
		ch         chan loaded
		ok, failed *int
	}{{reqs, &s.Requests, &s.RequestFailures}, {hss, &s.Handshakes, &s.HandshakeFailures}} {
		r := <-c.ch
		if r.err != nil {
			return s, fmt.Errorf("churn: %w", r.err)
		}
		*c.ok, *c.failed = r.ok, r.failed
	}

	// Every held conn of a revoked certificate must close; wait for the node to say so.
	revokedMu.Lock()
	for tag := range revoked {
		s.RevokedConns += held[tag]
	}
	revokedMu.Unlock()
	for deadline := time.Now().Add(30 * time.Second); gl.Len() > o.soakConns-s.RevokedConns && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	// The client sees each close a moment after the node makes it, later on a loaded
	// machine: gather its reports until every revoked conn's close has arrived, then once
	// more after a pause, for any wrong one.
	count := func() error {
		events, err := cl.report()
		for _, e := range events {
			if revoked[e.Tag] {
				s.ClosedRevoked++
				if faults != nil {
					switch {
					case slices.Contains(crlTags, e.Tag):
						faults.ClosedBy["crl"]++
					case slices.Contains(ocspTags, e.Tag):
						faults.ClosedBy["ocsp"]++
					default:
						faults.ClosedBy["redis"]++
					}
				}
			} else {
				s.Collateral++
			}
		}
		return err
	}
	for deadline := time.Now().Add(30 * time.Second); s.ClosedRevoked < s.RevokedConns && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		if err := count(); err != nil {
			return s, err
		}
	}
	time.Sleep(500 * time.Millisecond)
	if err := count(); err != nil {
		return s, err
	}
	cl.send(clientCmd{Cmd: "close"})
	if _, err := cl.await("done", 30*time.Second, nil, nil); err != nil {
		return s, err
	}
	// The churn clients' handles in this process hold buffers of their own; the baseline
	// was taken without them.
	stopChurn()
	for deadline := time.Now().Add(30 * time.Second); gl.Len() > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	// Goroutines of the closed conns wind down; give them a moment before judging.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if s.After = resources(); !leaked(base, s.After) {
			break
		}
	}
	s.Baseline = base

	// Round two: handshakes alone, a third as long, then the same measurement.
	again, stopAgain, err := churn("handshakes", max(o.soakDuration/3, 5*time.Second))
	if err != nil {
		return s, err
	}
	churnStops = append(churnStops, stopAgain)
	stopAgain = nil
	r2 := <-again
	stopChurn()
	if r2.err != nil {
		return s, fmt.Errorf("second round: %w", r2.err)
	}
	s.AgainConns = r2.ok + r2.failed
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if s.Again = resources(); !grew(s.After, s.Again) {
			break
		}
	}
	if memProfile != "" {
		if f, err := os.Create(memProfile + ".soak-end"); err == nil {
			pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	switch {
	case s.ClosedRevoked != s.RevokedConns:
		return s, fmt.Errorf("%d of the %d held conns of revoked certificates closed", s.ClosedRevoked, s.RevokedConns)
	case s.Collateral != 0:
		return s, fmt.Errorf("%d held conns of certificates nobody revoked closed", s.Collateral)
	case s.Lost != 0:
		return s, fmt.Errorf("the node ended with %d of the soak's Redis changes wrong", s.Lost)
	case faults != nil && !faults.StaleSeen:
		return s, errors.New("the node never reported itself stale while partitioned from Redis")
	case faults != nil && !faults.FreshAtEnd:
		return s, errors.New("the node was still stale at the end, Redis long healed")
	case faults != nil && faults.KeptRevoked != faults.KeptWanted:
		return s, fmt.Errorf("%d of %d CRL and OCSP revocations were lost while their sources failed", faults.KeptWanted-faults.KeptRevoked, faults.KeptWanted)
	case faults != nil && (faults.CRLFetchErrors == 0 || faults.CRLRefused == 0 || faults.OCSPErrors == 0):
		return s, fmt.Errorf("the CRL and OCSP faults did not reach the node (fetch errors %v, refused %v, OCSP errors %v)", faults.CRLFetchErrors, faults.CRLRefused, faults.OCSPErrors)
	case leaked(base, s.After):
		return s, fmt.Errorf("the server did not return to its baseline: %+v before, %+v after every conn was gone", base, s.After)
	case grew(s.After, s.Again):
		return s, fmt.Errorf("%d more conns grew the server from %+v to %+v: a leak", s.AgainConns, s.After, s.Again)
	}
	return s, nil
}

// grew reports growth across a second round, which reuses what the first kept: a few
// goroutines or fds in flight, and 2 MiB of heap (GC noise) at most.
func grew(first, second Resources) bool {
	return second.Goroutines > first.Goroutines+10 || second.FDs > first.FDs+10 || second.HeapBytes > first.HeapBytes+2<<20
}

func leaked(base, after Resources) bool {
	return after.Goroutines > base.Goroutines+leakSlack.Goroutines || after.FDs > base.FDs+leakSlack.FDs ||
		after.HeapBytes > base.HeapBytes+leakSlack.HeapBytes
}
