package main

import (
	"fmt"
	"io"
	"time"
)

func printTable(w io.Writer, r *Results) {
	e := r.Env
	fmt.Fprintf(w, "guardian bench — %s, %s, kernel %s, GOMAXPROCS %d (%d CPUs), fd limit %d, %s\n\n",
		e.Go, e.Redis, e.Kernel, e.GOMAXPROCS, e.NumCPU, e.FDLimit, e.When.Format(time.RFC3339))
	if s := r.EvictionSingle; s != nil {
		fmt.Fprintf(w, "eviction-single  (%d rounds: publish to Redis → client sees its conn end)\n", s.Rounds)
		fmt.Fprintf(w, "  p50 %.3f ms   p99 %.3f ms   max %.3f ms      target p50 ≤ 0.5 ms, p99 ≤ 2 ms\n\n", s.P50, s.P99, s.Max)
	}
	if b := r.EvictionBulk; b != nil {
		fmt.Fprintf(w, "eviction-bulk    (%d certificates revoked in one batch; %d of their conns among %d others)\n", b.Certs, b.Revoked, b.Others)
		printMass(w, b, "target all ≤ 150 ms")
	}
	if b := r.EvictionCA; b != nil {
		fmt.Fprintf(w, "eviction-ca      (an intermediate CA revoked; %d conns chain through it, %d through a sibling)\n", b.Revoked, b.Others)
		printMass(w, b, "")
	}
	if f := r.Fleet; f != nil {
		fmt.Fprintf(w, "fleet            (%d nodes on one Redis, %d publishes; a conn to each node)\n", f.Nodes, f.Rounds)
		for i, n := range f.PerNode {
			fmt.Fprintf(w, "  node %d: p50 %.3f ms   p99 %.3f ms   max %.3f ms\n", i+1, n.P50, n.P99, n.Max)
		}
		fmt.Fprintf(w, "  whole fleet (slowest node per publish): p50 %.3f ms   p99 %.3f ms   max %.3f ms\n\n", f.P50, f.P99, f.Max)
	}
	if o := r.Overhead; o != nil {
		fmt.Fprintf(w, "overhead         (%d interleaved rounds of %s per phase, %d client workers; guardian with %d revoked entries)\n",
			o.Rounds, o.Phase, o.Workers, o.Denylist)
		fmt.Fprintf(w, "  %-10s %14s %16s %18s %20s\n", "", "requests/s", "handshakes/s", "CPU/request (µs)", "CPU/handshake (µs)")
		for _, row := range []struct {
			name string
			l    Load
		}{{"bare", o.Bare}, {"guardian", o.Guardian}} {
			fmt.Fprintf(w, "  %-10s %14.0f %16.0f %18.1f %20.1f\n", row.name, row.l.RequestsPerSec, row.l.HandshakesPerSec, row.l.CPUPerRequestUs, row.l.CPUPerHandshakeUs)
		}
		fmt.Fprintf(w, "  ratio guardian/bare, median of rounds: requests %.3f, handshakes %.3f   target ≥ 0.98\n", o.Requests, o.Handshake)
		fmt.Fprintf(w, "  (rounds: requests %.3f–%.3f, handshakes %.3f–%.3f; ratio of totals: requests %.3f, handshakes %.3f)\n",
			o.RequestsMin, o.RequestsMax, o.HandshakeMin, o.HandshakeMax, o.RequestsTotals, o.HandshakeTotals)
		if o.Bare.Failed+o.Guardian.Failed > 0 {
			fmt.Fprintf(w, "  failed operations: bare %d, guardian %d\n", o.Bare.Failed, o.Guardian.Failed)
		}
		fmt.Fprintln(w)
	}
	if m := r.Memory; m != nil {
		fmt.Fprintf(w, "memory           (%d idle conns per server; live heap + stacks after GC)\n", m.Conns)
		fmt.Fprintf(w, "  bare %.0f B/conn, guardian %.0f B/conn: extra %.0f B/conn      target ≤ 256 B\n", m.BarePerConn, m.GuardianPerConn, m.Extra)
		fmt.Fprintf(w, "  of which heap: bare %.0f, guardian %.0f, extra %.0f B/conn; stacks: bare %.0f, guardian %.0f B/conn\n\n",
			m.BareHeap, m.GuardianHeap, m.ExtraHeap, m.BareStack, m.GuardianStack)
	}
	if p := r.Peers; p != nil {
		fmt.Fprintf(w, "peers            (a revoked certificate's live keep-alive conn, watched for %s)\n", p.Window)
		for _, x := range p.Peers {
			if x.Skipped != "" {
				fmt.Fprintf(w, "  %-9s skipped: %s\n", x.Peer, x.Skipped)
				continue
			}
			closed := "stayed open"
			if x.RevokedClosed {
				closed = fmt.Sprintf("closed after %.1f ms", x.ClosedMs)
			}
			fmt.Fprintf(w, "  %-9s revoked conn %s; unrelated conns dropped %d of %d; new handshake refused: %v\n",
				x.Peer, closed, x.Dropped, x.Unrelated, x.NewRefused)
			fmt.Fprintf(w, "            (%s; %s)\n", x.How, x.Version)
		}
		fmt.Fprintln(w)
	}
	if t := r.TCP; t != nil {
		fmt.Fprintf(w, "tcp              (TCP over mTLS to one plain upstream; %d interleaved rounds: one %d MiB stream each way, new conns by %d workers for %s)\n",
			t.Rounds, t.BulkMiB, t.Workers, t.ConnPhase)
		fmt.Fprintf(w, "  %-9s %12s %14s %10s   %-22s %15s %17s %13s\n", "", "upload MiB/s", "download MiB/s", "conns/s",
			"÷ bare: up/down/conns", "CPU ms/GiB up", "CPU ms/GiB down", "CPU µs/conn")
		for _, x := range t.Proxies {
			fmt.Fprintf(w, "  %-9s %12.0f %14.0f %10.0f   %-22s %15.0f %17.0f %13.0f\n", x.Proxy, x.UploadMiBps, x.DownloadMiBps, x.ConnsPerSec,
				fmt.Sprintf("%.2f / %.2f / %.2f", x.UploadRatio, x.DownloadRatio, x.ConnsRatio), x.CPUUploadMsPerGiB, x.CPUDownloadMsPerGiB, x.CPUPerConnUs)
		}
		for _, x := range t.Proxies {
			fmt.Fprintf(w, "  %-9s rounds: up %.0f–%.0f, down %.0f–%.0f, conns %.0f–%.0f; %d conns, %d failed; %s; %s\n", x.Proxy,
				x.UploadMin, x.UploadMax, x.DownloadMin, x.DownloadMax, x.ConnsMin, x.ConnsMax, x.Conns, x.FailedConns, x.TLS, x.Version)
		}
		if v := t.Revocation; v != nil {
			fmt.Fprintf(w, "  guardian, %d revoked live TCP conns (Store.Revoke → end): client saw it p50 %.3f ms, p99 %.3f ms, max %.3f ms\n",
				v.Rounds, v.P50, v.P99, v.Max)
			fmt.Fprintf(w, "    upstream conn closed too: %d of %d, p50 %.3f ms, p99 %.3f ms, max %.3f ms; other live conns dropped %d of %d (upstream side open: %d)\n",
				v.UpstreamClosed, v.Rounds, v.UpstreamP50, v.UpstreamP99, v.UpstreamMax, v.Dropped, v.Others, v.OthersOpen)
		}
		fmt.Fprintln(w)
	}
	if s := r.Soak; s != nil {
		fmt.Fprintf(w, "soak             (%d conns of %d certificates held for %.0f s under churn; %d revocations (%d of held certificates) and %d unrevocations through Redis)\n",
			s.Conns, s.Certs, s.Seconds, s.Revocations, s.HeldRevocations, s.Unrevocations)
		fmt.Fprintf(w, "  held conns of revoked certificates closed: %d of %d   target all\n", s.ClosedRevoked, s.RevokedConns)
		fmt.Fprintf(w, "  other held conns closed (collateral):       %d         target 0\n", s.Collateral)
		fmt.Fprintf(w, "  Redis changes the node had wrong at the end: %d        target 0\n", s.Lost)
		fmt.Fprintf(w, "  churn: %d keep-alive requests (%d failed), %d new conns with a full handshake (%d failed)\n",
			s.Requests, s.RequestFailures, s.Handshakes, s.HandshakeFailures)
		fmt.Fprintf(w, "  server before / after: goroutines %d / %d, fds %d / %d, heap %.1f / %.1f MiB   target: back near the baseline\n",
			s.Baseline.Goroutines, s.After.Goroutines, s.Baseline.FDs, s.After.FDs, float64(s.Baseline.HeapBytes)/(1<<20), float64(s.After.HeapBytes)/(1<<20))
		fmt.Fprintf(w, "  after %d more conns (a second round of handshakes): goroutines %d, fds %d, heap %.1f MiB   target: no growth (a leak grows per conn)\n",
			s.AgainConns, s.Again.Goroutines, s.Again.FDs, float64(s.Again.HeapBytes)/(1<<20))
		if f := s.Faults; f != nil {
			fmt.Fprintf(w, "  faults: Redis partitioned %.1f s, slowed %.1f s (+%.0f ms each way), killed and restarted (down %.1f s; %d writes retried)\n",
				f.PartitionSeconds, f.SlowSeconds, f.SlowMs, f.DownSeconds, f.WriteRetries)
			fmt.Fprintf(w, "    node stale while partitioned: %v (unheard at most %.1f s); fresh at the end: %v\n",
				f.StaleSeen, f.MaxStaleness, f.FreshAtEnd)
			fmt.Fprintf(w, "    CRL URL and OCSP responder hung, failed and served garbage for %.1f s: CRL fetch errors %.0f, refused %.0f, OCSP errors %.0f, soft-allowed handshakes %.0f\n",
				f.FaultSeconds, f.CRLFetchErrors, f.CRLRefused, f.OCSPErrors, f.OCSPSoftAllows)
			fmt.Fprintf(w, "    their earlier revocations still in force: %d of %d   target all; revoked conns closed by Redis %d, CRL %d, OCSP %d\n",
				f.KeptRevoked, f.KeptWanted, f.ClosedBy["redis"], f.ClosedBy["crl"], f.ClosedBy["ocsp"])
		}
		fmt.Fprintln(w)
	}
	if len(r.StealPercent) > 0 {
		fmt.Fprint(w, "CPU time stolen by the host for other guests, per scenario:")
		for _, s := range append(allScenarios, extraScenarios...) {
			if v, ok := r.StealPercent[s]; ok && v >= 0 {
				fmt.Fprintf(w, " %s %.1f%%", s, v)
			}
		}
		fmt.Fprintln(w)
	}
}

func printMass(w io.Writer, b *BulkStats, target string) {
	fmt.Fprintf(w, "  closed %d/%d: first %.1f ms, median %.1f ms, p99 %.1f ms, last %.1f ms   %s\n", b.Closed, b.Revoked, b.First, b.Median, b.P99, b.AllClosed, target)
	fmt.Fprintf(w, "  node side: publish returned at %.1f ms, Set applied at %.1f ms; every revoked conn closed and untracked by %.1f ms\n", b.Published, b.Applied, b.ServerDone)
	if b.Floor > 0 {
		fmt.Fprintf(w, "  floor: a bare crypto/tls server closing %d conns itself, no guardian: last close seen at %.1f ms\n", b.Revoked, b.Floor)
	}
	fmt.Fprintf(w, "  other conns closed (collateral): %d of %d                              target 0\n\n", b.Collateral, b.Others)
}
