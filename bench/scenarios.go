package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime/trace"
	"slices"
	"time"

	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// SingleStats is eviction-single: publish to client-visible close, one conn at a time.
type SingleStats struct {
	Rounds  int       `json:"rounds"`
	P50     float64   `json:"p50_ms"`
	P99     float64   `json:"p99_ms"`
	Max     float64   `json:"max_ms"`
	Samples []float64 `json:"-"`
}

// BulkStats is a mass eviction: eviction-bulk (a batch of certificates) or eviction-ca (an
// intermediate CA), among conns that must survive.
type BulkStats struct {
	Certs      int     `json:"certs"`
	Revoked    int     `json:"revoked_conns"`
	Others     int     `json:"other_conns"`
	Closed     int     `json:"closed"`
	First      float64 `json:"first_ms"`
	Median     float64 `json:"median_ms"`
	P99        float64 `json:"p99_ms"`
	AllClosed  float64 `json:"all_closed_ms"`
	Collateral int     `json:"collateral"`
	// Published is when the publish call (the Redis transaction) returned; Applied is when
	// the node's Set had applied the revocation: Redis, the feed and the Set.
	Published float64 `json:"publish_returned_ms"`
	Applied   float64 `json:"set_applied_ms"`
	// ServerDone is when the node's registry had dropped every revoked conn (polled each
	// millisecond): the server's side of the work, before clients notice.
	ServerDone float64 `json:"server_all_closed_ms"`
	// Floor (eviction-bulk) is the same number of conns to a bare crypto/tls listener,
	// closed by that server itself all at once, in the same way guardian closes them (RST,
	// eight goroutines): from the first close to the client's last sighting. It is what
	// closing that many conns costs on this machine with no Redis, Set or registry.
	Floor   float64   `json:"bare_close_floor_ms,omitempty"`
	Samples []float64 `json:"-"`
}

// FleetStats is fleet: one publish, several nodes; per-node latency and the slowest node's.
type FleetStats struct {
	Nodes   int          `json:"nodes"`
	Rounds  int          `json:"rounds"`
	PerNode []*NodeStats `json:"per_node"`
	// P50 and P99 are of each round's slowest node: when the whole fleet had acted.
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// NodeStats is one fleet node's eviction latency.
type NodeStats struct {
	P50     float64   `json:"p50_ms"`
	P99     float64   `json:"p99_ms"`
	Max     float64   `json:"max_ms"`
	Samples []float64 `json:"-"`
}

// issue writes n client certificates named prefix-i into dir for the client process.
func issue(ca *pkitest.CA, dir, prefix string, n int, progressTo io.Writer) ([]*pkitest.Leaf, []string, error) {
	leaves := make([]*pkitest.Leaf, n)
	names := make([]string, n)
	var p *progress
	if n >= 100 {
		p = newProgress(progressTo, "issuing "+prefix+" certificates", n)
	}
	for i := range leaves {
		l, err := ca.Issue(pkitest.Opts{CommonName: fmt.Sprintf("%s-%d", prefix, i), URIs: []string{fmt.Sprintf("spiffe://bench/%s/%d", prefix, i)}})
		if err != nil {
			return nil, nil, err
		}
		names[i] = filepath.Join(dir, fmt.Sprintf("%s-%d", prefix, i))
		if err := l.WriteFiles(dir, fmt.Sprintf("%s-%d", prefix, i)); err != nil {
			return nil, nil, err
		}
		leaves[i] = l
		p.set(i + 1)
	}
	p.done()
	return leaves, names, nil
}

// specs spreads total conns over the certificates names, tagged tag0, tag0+step, ….
func specs(names []string, total, tag0, step int) []certSpec {
	var out []certSpec
	for i, nm := range names {
		out = append(out, certSpec{Cert: nm + ".pem", Key: nm + ".key", Tag: tag0 + i*step, N: share(total, len(names), i)})
	}
	return out
}

// evictionRounds revokes one certificate per round through Redis while the client holds a
// conn to each node with it, and returns each node's latencies: from just before the
// publish to the moment the client process sees that node's conn end.
func evictionRounds(ctx context.Context, h *harness, cl *client, nodes []*guardianNode, label string) ([][]float64, error) {
	const certs = 16
	leaves, names, err := issue(h.ca, h.dir, label, certs, nil)
	if err != nil {
		return nil, err
	}
	lat := make([][]float64, len(nodes))
	p := newProgress(h.o.progressTo, label, h.o.rounds)
	for r := 0; r < h.o.rounds; r++ {
		i := r % certs
		k, _ := revoke.KeyFor(leaves[i].Cert, revoke.KindSerial)
		if h.node.set.Has(k) {
			if _, _, err := h.store.Unrevoke(ctx, k); err != nil {
				return nil, err
			}
			for _, n := range nodes {
				for n.set.Has(k) {
					time.Sleep(100 * time.Microsecond)
				}
			}
		}
		tag := func(ni int) int { return r*16 + ni + 1 }
		for ni, n := range nodes {
			if err := cl.dial(n.addr, h.caFile(), []certSpec{{Cert: names[i] + ".pem", Key: names[i] + ".key", Tag: tag(ni), N: 1}}, false, "", nil); err != nil {
				return nil, fmt.Errorf("round %d, node %d: %w", r, ni, err)
			}
		}
		time.Sleep(2 * time.Millisecond) // the conns are idle in their readers
		start := time.Now()
		if _, err := h.store.Revoke(ctx, revoke.Entry{Key: k, Reason: "keyCompromise"}); err != nil {
			return nil, err
		}
		pending := len(nodes)
		deadline := time.After(10 * time.Second)
		for pending > 0 {
			select {
			case e, ok := <-cl.events:
				if !ok {
					return nil, fmt.Errorf("round %d: the client process exited", r)
				}
				if e.Ev != "close" || e.Tag <= r*16 || e.Tag > r*16+len(nodes) {
					continue
				}
				ni := e.Tag - r*16 - 1
				lat[ni] = append(lat[ni], ms(time.Unix(0, e.At).Sub(start)))
				pending--
			case <-deadline:
				return nil, fmt.Errorf("round %d: %d revoked conns still open 10s after the publish", r, pending)
			}
		}
		p.set(r + 1)
	}
	p.done()
	return lat, nil
}

// evictionSingle: one conn at a time, one node.
func evictionSingle(ctx context.Context, h *harness, cl *client) (*SingleStats, error) {
	lat, err := evictionRounds(ctx, h, cl, []*guardianNode{h.node}, "eviction-single")
	if err != nil {
		return nil, err
	}
	s := lat[0]
	slices.Sort(s)
	return &SingleStats{Rounds: len(s), P50: percentile(s, 0.5), P99: percentile(s, 0.99), Max: s[len(s)-1], Samples: s}, nil
}

// fleet: the same rounds with a conn to each of o.fleetNodes nodes on the one Redis.
func fleet(ctx context.Context, h *harness, cl *client) (*FleetStats, error) {
	nodes := []*guardianNode{h.node}
	for len(nodes) < h.o.fleetNodes {
		n, err := h.newNode(ctx)
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
	}
	lat, err := evictionRounds(ctx, h, cl, nodes, "fleet")
	if err != nil {
		return nil, err
	}
	f := &FleetStats{Nodes: len(nodes), Rounds: h.o.rounds}
	slowest := make([]float64, h.o.rounds)
	for _, l := range lat {
		for r, v := range l {
			slowest[r] = max(slowest[r], v)
		}
		slices.Sort(l)
		f.PerNode = append(f.PerNode, &NodeStats{P50: percentile(l, 0.5), P99: percentile(l, 0.99), Max: l[len(l)-1], Samples: l})
	}
	slices.Sort(slowest)
	f.P50, f.P99, f.Max = percentile(slowest, 0.5), percentile(slowest, 0.99), slowest[len(slowest)-1]
	return f, nil
}

// evictionBulk: conns of o.certs certificates (o.conns in all) among o.others conns of
// other certificates; every revoked certificate in one batch; when did each revoked conn
// close, and did any other.
func evictionBulk(ctx context.Context, h *harness, cl *client) (*BulkStats, error) {
	o := h.o
	otherCerts := max(1, o.certs*o.others/o.conns)
	revoked, rnames, err := issue(h.ca, h.dir, "victim", o.certs, o.progressTo)
	if err != nil {
		return nil, err
	}
	_, onames, err := issue(h.ca, h.dir, "other", otherCerts, o.progressTo)
	if err != nil {
		return nil, err
	}
	// Tags: victims 1..certs, others -1..-otherCerts.
	all := append(specs(rnames, o.conns, 1, 1), specs(onames, o.others, -1, -1)...)
	entries := make([]revoke.Entry, len(revoked))
	for i, l := range revoked {
		k, _ := revoke.KeyFor(l.Cert, revoke.KindSerial)
		entries[i] = revoke.Entry{Key: k, Reason: "keyCompromise"}
	}
	b, err := massEviction(h, cl, all, o.conns, o.others, "eviction-bulk", traceFile, func() error {
		_, err := h.store.RevokeMany(ctx, entries)
		return err
	})
	if err != nil {
		return b, err
	}
	b.Certs = o.certs
	b.Floor, err = closeFloor(h, cl, specs(rnames, o.conns, floorTag, 1), o.conns)
	return b, err
}

// floorTag and above tag the floor's conns: the client's held events may still include
// closes of the scenario's earlier conns.
const floorTag = 1 << 24

// closeFloor opens total conns of all to a bare crypto/tls listener, then has the server
// close every one at once, as guardian's eviction workers do, and returns the time from the
// first close to the client's last sighting.
func closeFloor(h *harness, cl *client, all []certSpec, total int) (float64, error) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	l := tls.NewListener(inner, h.node.bareConfig())
	defer l.Close()
	var srv heldServer
	go srv.serve(l)
	if err := cl.dialCmd(clientCmd{Cmd: "dial", Addr: l.Addr().String(), CA: h.caFile(), Certs: all, Hold: true},
		"eviction-bulk: the bare floor's conns", h.o.progressTo); err != nil {
		return 0, err
	}
	if err := srv.waitHeld(int64(total), time.Minute); err != nil {
		return 0, err
	}
	conns := srv.conns()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	work := make(chan net.Conn, len(conns))
	for _, c := range conns {
		work <- c
	}
	close(work)
	for w := 0; w < 8; w++ {
		go func() {
			for c := range work {
				raw := c.(*tls.Conn).NetConn()
				raw.(*net.TCPConn).SetLinger(0)
				raw.Close()
			}
		}()
	}
	if err := srv.waitHeld(0, 30*time.Second); err != nil {
		return 0, fmt.Errorf("the bare floor: %w", err)
	}
	time.Sleep(500 * time.Millisecond)
	events, err := cl.report()
	if err != nil {
		return 0, err
	}
	var last time.Time
	seen := 0
	for _, e := range events {
		if e.Tag < floorTag {
			continue
		}
		seen++
		if at := time.Unix(0, e.At); at.After(last) {
			last = at
		}
	}
	if seen != total {
		return 0, fmt.Errorf("the bare floor: the client saw %d of %d closes", seen, total)
	}
	cl.send(clientCmd{Cmd: "close"})
	if _, err := cl.await("done", 30*time.Second, nil, nil); err != nil {
		return 0, err
	}
	return ms(last.Sub(start)), nil
}

// evictionCA: o.caConns conns of certificates under one intermediate CA, among conns under
// a sibling intermediate; the first intermediate is revoked by its serial.
func evictionCA(ctx context.Context, h *harness, cl *client) (*BulkStats, error) {
	o := h.o
	revokedCA, err := h.ca.Intermediate("bench intermediate (revoked)")
	if err != nil {
		return nil, err
	}
	otherCA, err := h.ca.Intermediate("bench intermediate (kept)")
	if err != nil {
		return nil, err
	}
	const leaves = 100
	_, rnames, err := issue(revokedCA, h.dir, "ca-victim", leaves, o.progressTo)
	if err != nil {
		return nil, err
	}
	_, onames, err := issue(otherCA, h.dir, "ca-other", 10, o.progressTo)
	if err != nil {
		return nil, err
	}
	others := max(1, o.caConns/15)
	all := append(specs(rnames, o.caConns, 1, 1), specs(onames, others, -1, -1)...)
	k, _ := revoke.KeyFor(revokedCA.Cert, revoke.KindSerial)
	b, err := massEviction(h, cl, all, o.caConns, others, "eviction-ca", "", func() error {
		_, err := h.store.Revoke(ctx, revoke.Entry{Key: k, Reason: "cACompromise"})
		return err
	})
	if b != nil {
		b.Certs = 1
	}
	return b, err
}

// massEviction opens every conn of all (tags > 0 are to be revoked, < 0 must survive) to
// the node, calls publish, and records when each revoked conn closed and whether any other
// did.
func massEviction(h *harness, cl *client, all []certSpec, revoked, others int, label, traceTo string, publish func() error) (*BulkStats, error) {
	n := h.node
	before := n.l.Len()
	if err := cl.dialCmd(clientCmd{Cmd: "dial", Addr: n.addr, CA: h.caFile(), Certs: all, Hold: true}, label+": opening conns", h.o.progressTo); err != nil {
		return nil, err
	}
	for n.l.Len() < before+revoked+others {
		time.Sleep(10 * time.Millisecond)
	}
	applied := make(chan time.Time, 1)
	cancel := n.set.Subscribe(func(revoke.Change) {
		select {
		case applied <- time.Now():
		default:
		}
	})
	defer cancel()
	serverDone := make(chan time.Duration, 1)
	if traceTo != "" {
		f, err := os.Create(traceTo)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			return nil, err
		}
		defer trace.Stop()
	}
	start := time.Now()
	go func() {
		for n.l.Len() > before+others && time.Since(start) < 30*time.Second {
			time.Sleep(time.Millisecond)
		}
		serverDone <- time.Since(start)
	}()
	if err := publish(); err != nil {
		return nil, err
	}
	published := time.Since(start)
	done := <-serverDone
	time.Sleep(500 * time.Millisecond) // time for the last closes, and any wrong one, to reach the client
	events, err := cl.report()
	if err != nil {
		return nil, err
	}
	var closes []float64
	collateral := 0
	for _, e := range events {
		if e.Tag < 0 {
			collateral++
			continue
		}
		closes = append(closes, ms(time.Unix(0, e.At).Sub(start)))
	}
	cl.send(clientCmd{Cmd: "close"})
	if _, err := cl.await("done", 30*time.Second, nil, nil); err != nil {
		return nil, err
	}
	slices.Sort(closes)
	b := &BulkStats{Revoked: revoked, Others: others, Closed: len(closes), Collateral: collateral,
		Published: ms(published), ServerDone: ms(done), Samples: closes}
	select {
	case at := <-applied:
		b.Applied = ms(at.Sub(start))
	default:
	}
	if len(closes) > 0 {
		b.First, b.Median, b.P99, b.AllClosed = closes[0], percentile(closes, 0.5), percentile(closes, 0.99), closes[len(closes)-1]
	}
	// The client's close drops the survivors; wait for the node to see it, so the next
	// scenario starts from an empty registry.
	for deadline := time.Now().Add(30 * time.Second); n.l.Len() > before && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if len(closes) < revoked {
		return b, fmt.Errorf("only %d of %d revoked conns closed within 30s", len(closes), revoked)
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
