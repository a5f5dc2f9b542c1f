package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"time"

	"github.com/guardian-mtls/guardian/conntrack"
	"github.com/guardian-mtls/guardian/internal/testpki"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

var conntrackShutdown = conntrack.Cause{Reason: conntrack.ReasonShutdown}

// issue writes n client certificates named prefix-i into dir for the client process.
func issue(ca *testpki.CA, dir, prefix string, n int, progress io.Writer) ([]*testpki.Leaf, []string, error) {
	leaves := make([]*testpki.Leaf, n)
	names := make([]string, n)
	for i := range leaves {
		l, err := ca.Issue(testpki.Opts{CommonName: fmt.Sprintf("%s-%d", prefix, i), URIs: []string{fmt.Sprintf("spiffe://bench/%s/%d", prefix, i)}})
		if err != nil {
			return nil, nil, err
		}
		names[i] = filepath.Join(dir, fmt.Sprintf("%s-%d", prefix, i))
		if err := l.WriteFiles(dir, fmt.Sprintf("%s-%d", prefix, i)); err != nil {
			return nil, nil, err
		}
		leaves[i] = l
		if progress != nil && (i%200 == 0 || i == n-1) {
			fmt.Fprintf(progress, "\r  issuing %s certificates %d/%d", prefix, i+1, n)
		}
	}
	if progress != nil {
		fmt.Fprintln(progress)
	}
	return leaves, names, nil
}

// evictionSingle: one conn at a time; from just before the publish to Redis to the moment
// the client process sees its conn end.
func evictionSingle(ctx context.Context, o options, dir string, ca *testpki.CA, st *redisfeed.Store, n *guardianNode, cl *client) (*SingleStats, error) {
	const certs = 16
	leaves, names, err := issue(ca, dir, "single", certs, nil)
	if err != nil {
		return nil, err
	}
	var lat []float64
	for r := 0; r < o.rounds; r++ {
		i := r % certs
		k, _ := revoke.KeyFor(leaves[i].Cert, revoke.KindSerial)
		if n.set.Has(k) {
			if _, _, err := st.Unrevoke(ctx, k); err != nil {
				return nil, err
			}
			for n.set.Has(k) {
				time.Sleep(100 * time.Microsecond)
			}
		}
		if err := cl.send(clientCmd{Cmd: "dial", Addr: n.addr, CA: filepath.Join(dir, "ca.pem"),
			Certs: []certSpec{{Cert: names[i] + ".pem", Key: names[i] + ".key", Tag: r + 1, N: 1}}}); err != nil {
			return nil, err
		}
		ready, err := cl.await("ready", 30*time.Second, nil)
		if err != nil {
			return nil, err
		}
		if ready.N != 1 {
			return nil, fmt.Errorf("round %d: the client could not connect (%d failed)", r, ready.Failed)
		}
		time.Sleep(2 * time.Millisecond) // the conn is idle in its reader
		start := time.Now()
		if _, err := st.Revoke(ctx, revoke.Entry{Key: k, Reason: "keyCompromise"}); err != nil {
			return nil, err
		}
		var closedAt int64
		deadline := time.After(10 * time.Second)
		for closedAt == 0 {
			select {
			case e, ok := <-cl.events:
				if !ok {
					return nil, fmt.Errorf("round %d: the client process exited", r)
				}
				if e.Ev == "close" && e.Tag == r+1 {
					closedAt = e.At
				}
			case <-deadline:
				return nil, fmt.Errorf("round %d: the revoked conn was still open 10s after the publish", r)
			}
		}
		lat = append(lat, ms(time.Unix(0, closedAt).Sub(start)))
		if o.progressTo != nil && (r%20 == 0 || r == o.rounds-1) {
			fmt.Fprintf(o.progressTo, "\r  eviction-single %d/%d", r+1, o.rounds)
		}
	}
	if o.progressTo != nil {
		fmt.Fprintln(o.progressTo)
	}
	slices.Sort(lat)
	return &SingleStats{Rounds: len(lat), P50: percentile(lat, 0.5), P99: percentile(lat, 0.99), Max: lat[len(lat)-1]}, nil
}

// evictionBulk: conns of -certs certificates (-conns in all) among -others conns of other
// certificates; every revoked certificate in one batch; when did each revoked conn close,
// and did any other.
func evictionBulk(ctx context.Context, o options, dir string, ca *testpki.CA, st *redisfeed.Store, n *guardianNode, cl *client) (*BulkStats, error) {
	otherCerts := max(1, o.certs*o.others/o.conns)
	revoked, rnames, err := issue(ca, dir, "victim", o.certs, o.progressTo)
	if err != nil {
		return nil, err
	}
	_, onames, err := issue(ca, dir, "other", otherCerts, o.progressTo)
	if err != nil {
		return nil, err
	}
	// Tags: victims 1..certs, others -1..-otherCerts.
	var specs []certSpec
	for i, nm := range rnames {
		specs = append(specs, certSpec{Cert: nm + ".pem", Key: nm + ".key", Tag: i + 1, N: share(o.conns, o.certs, i)})
	}
	for i, nm := range onames {
		specs = append(specs, certSpec{Cert: nm + ".pem", Key: nm + ".key", Tag: -(i + 1), N: share(o.others, otherCerts, i)})
	}
	if o.progressTo != nil {
		fmt.Fprintf(o.progressTo, "  eviction-bulk: opening %d conns from the client process…\n", o.conns+o.others)
	}
	if err := cl.send(clientCmd{Cmd: "dial", Addr: n.addr, CA: filepath.Join(dir, "ca.pem"), Certs: specs}); err != nil {
		return nil, err
	}
	ready, err := cl.await("ready", 10*time.Minute, nil)
	if err != nil {
		return nil, err
	}
	if ready.Failed > 0 || ready.N != o.conns+o.others {
		return nil, fmt.Errorf("the client opened %d of %d conns (%d failed)", ready.N, o.conns+o.others, ready.Failed)
	}
	for n.l.Registry().Len() < o.conns+o.others {
		time.Sleep(10 * time.Millisecond)
	}
	entries := make([]revoke.Entry, len(revoked))
	for i, l := range revoked {
		k, _ := revoke.KeyFor(l.Cert, revoke.KindSerial)
		entries[i] = revoke.Entry{Key: k, Reason: "keyCompromise"}
	}
	serverDone := make(chan time.Duration, 1)
	start := time.Now()
	go func() {
		for n.l.Registry().Len() > o.others && time.Since(start) < 30*time.Second {
			time.Sleep(time.Millisecond)
		}
		serverDone <- time.Since(start)
	}()
	if _, err := st.RevokeMany(ctx, entries); err != nil {
		return nil, err
	}
	var closes []float64
	collateral := 0
	deadline := time.After(30 * time.Second)
	settle := (<-chan time.Time)(nil)
loop:
	for {
		select {
		case e, ok := <-cl.events:
			if !ok {
				return nil, fmt.Errorf("the client process exited")
			}
			if e.Ev != "close" {
				continue
			}
			if e.Tag < 0 {
				collateral++
				continue
			}
			closes = append(closes, ms(time.Unix(0, e.At).Sub(start)))
			if len(closes) == o.conns && settle == nil {
				settle = time.After(500 * time.Millisecond) // time for any wrong close to show
			}
		case <-settle:
			break loop
		case <-deadline:
			break loop
		}
	}
	cl.send(clientCmd{Cmd: "close"})
	slices.Sort(closes)
	b := &BulkStats{Certs: o.certs, Revoked: o.conns, Others: o.others, Closed: len(closes), Collateral: collateral,
		ServerDone: ms(<-serverDone)}
	if len(closes) > 0 {
		b.First, b.Median, b.P99, b.AllClosed = closes[0], percentile(closes, 0.5), percentile(closes, 0.99), closes[len(closes)-1]
	}
	if len(closes) < o.conns {
		return b, fmt.Errorf("only %d of %d revoked conns closed within 30s", len(closes), o.conns)
	}
	return b, nil
}

// share splits total across n as evenly as possible; it returns the i-th part.
func share(total, n, i int) int {
	s := total / n
	if i < total%n {
		s++
	}
	return s
}

func printTable(w io.Writer, r *Results) {
	e := r.Env
	fmt.Fprintf(w, "guardian bench — %s, %s, kernel %s, GOMAXPROCS %d, fd limit %d, %s\n\n",
		e.Go, e.Redis, e.Kernel, e.GOMAXPROCS, e.FDLimit, e.When.Format(time.RFC3339))
	if s := r.EvictionSingle; s != nil {
		fmt.Fprintf(w, "eviction-single  (%d rounds: publish to Redis → client sees its conn end)\n", s.Rounds)
		fmt.Fprintf(w, "  p50 %.3f ms   p99 %.3f ms   max %.3f ms      target p50 ≤ 0.5 ms, p99 ≤ 2 ms\n\n", s.P50, s.P99, s.Max)
	}
	if b := r.EvictionBulk; b != nil {
		fmt.Fprintf(w, "eviction-bulk    (%d certificates revoked in one batch; %d of their conns among %d others)\n", b.Certs, b.Revoked, b.Others)
		fmt.Fprintf(w, "  closed %d/%d: first %.1f ms, median %.1f ms, p99 %.1f ms, last %.1f ms   target all ≤ 150 ms\n", b.Closed, b.Revoked, b.First, b.Median, b.P99, b.AllClosed)
		fmt.Fprintf(w, "  server side: every revoked conn closed and untracked by %.1f ms\n", b.ServerDone)
		fmt.Fprintf(w, "  other conns closed (collateral): %d of %d                              target 0\n\n", b.Collateral, b.Others)
	}
}
