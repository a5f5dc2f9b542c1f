package daemon

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/daemon/admin"
	"github.com/guardian-mtls/guardian/internal/ratelog"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/boltstore"
	"github.com/guardian-mtls/guardian/revoke/crl"
	"github.com/guardian-mtls/guardian/revoke/ocsp"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// revocation is what a node knows of revocations: the Set, the store it writes to, and
// the sources that feed the Set.
type revocation struct {
	set    *revoke.Set
	store  revoke.Store
	feed   *redisfeed.Feed  // nil unless the store is Redis
	rstore *redisfeed.Store // nil unless the store is Redis
	crl    *crl.Applier     // every CRL, from a file, a URL or Redis, goes through it
	crls   []crl.Source
	// discovery follows the certificates' distribution points (from_certificates); nil
	// without; discoveryWait bounds a handshake's wait for a first fetch.
	discovery     *crl.Discovery
	discoveryWait time.Duration
	ocsp          *ocsp.Checker // nil unless an audience uses OCSP
	close         []func()
	pruned        prometheus.Counter
	start         time.Time // when the node started, for a feed that never reached Redis

	mu        sync.Mutex
	matched   map[string]int // recently revoked keys: conns each change matched
	recent    []string
	evictions uint64
}

// recentKeys bounds the keys a heartbeat carries: --wait needs only the change just made.
const recentKeys = 64

// onRevocation records how many conns a change matched, for heartbeats and --wait.
func (n *revocation) onRevocation(ch revoke.Change, matched int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.matched == nil {
		n.matched = map[string]int{}
	}
	n.evictions += uint64(matched)
	for _, e := range ch.Added {
		k := string(e.Key)
		if _, ok := n.matched[k]; !ok {
			n.recent = append(n.recent, k)
		}
		n.matched[k] = matched
	}
	for len(n.recent) > recentKeys {
		delete(n.matched, n.recent[0])
		n.recent = n.recent[1:]
	}
}

// status is the node's heartbeat.
func (n *revocation) status(id string, conns int) redisfeed.NodeStatus {
	ns := redisfeed.NodeStatus{ID: id, Conns: conns, At: time.Now().UTC(), Applied: n.set.Version()}
	if n.feed != nil {
		st := n.feed.Status()
		ns.Applied, ns.Epoch, ns.Regressed = st.Applied, st.Epoch, st.Regressed
	}
	n.mu.Lock()
	ns.Evictions = n.evictions
	ns.Matched = make(map[string]int, len(n.matched))
	for k, v := range n.matched {
		ns.Matched[k] = v
	}
	n.mu.Unlock()
	return ns
}

// heartbeat publishes the node's status to Redis every second until ctx ends.
func (n *revocation) heartbeat(ctx context.Context, id string, conns func() int, log *slog.Logger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if err := n.rstore.Heartbeat(ctx, n.status(id, conns()), 5*time.Second); err != nil && ctx.Err() == nil {
			log.Debug("heartbeat failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// openRevocation builds the Set and the configured store, loading what it holds, and
// starts the sources; they run until shutdown. ctx bounds the start only.
func openRevocation(ctx context.Context, cfg *Config, metrics prometheus.Registerer, log *slog.Logger) (_ *revocation, err error) {
	set, err := revoke.NewSet(revoke.SetOptions{Metrics: metrics})
	if err != nil {
		return nil, err
	}
	n := &revocation{set: set, start: time.Now(), pruned: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "guardian_revocations_pruned_total",
		Help: "Revocations dropped once past their expiry (OCSP revoked answers, held until the leaf certificate expires).",
	})}
	if err := metrics.Register(n.pruned); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			n.shutdown()
		}
	}()
	if err := n.openCRLs(ctx, cfg, metrics, log); err != nil {
		return nil, err
	}
	if len(cfg.ocspModes()) > 0 {
		o := cfg.Revocation.OCSP
		n.ocsp, err = ocsp.New(ocsp.Options{Set: set, Timeout: time.Duration(o.Timeout), MaxAge: time.Duration(o.MaxAge),
			Responder: o.Responder, MaxResponseSize: o.MaxResponseSize, Logger: log, Metrics: metrics})
		if err != nil {
			return nil, err
		}
	}
	r := cfg.Revocation
	switch r.Store {
	case "memory":
		n.store = revoke.MemoryStore(set)
	case "embedded":
		bs, _, err := boltstore.Open(cfg.path(r.Embedded.Path), set, log)
		if err != nil {
			return nil, configError(cfg.name(), "revocation.embedded.path", "%v", err)
		}
		n.store = bs
		n.close = append(n.close, func() { bs.Close() })
	case "redis":
		rc := r.Redis
		cc, err := cfg.RedisClientConfig()
		if err != nil {
			return nil, err
		}
		// The client library's own lines, a few a second while Redis is down, go through
		// the node's logger (JSON stays JSON), rate-limited.
		redisfeed.SetLogger(ratelog.Logger(log, 3, 10*time.Second))
		rdb, err := redisfeed.NewClient(cc)
		if err != nil {
			return nil, configError(cfg.name(), "revocation.redis", "%v", err)
		}
		st := redisfeed.NewStore(rdb, rc.Prefix, rc.MaxLen)
		feed, err := redisfeed.NewFeed(st, set, redisfeed.FeedOptions{Metrics: metrics, Logger: log,
			OnCRL: func(_ string, der []byte) { n.crl.Apply(der, "redis") }})
		if err != nil {
			return nil, err
		}
		fctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { feed.Run(fctx); close(done) }()
		n.close = append(n.close, func() { cancel(); <-done; rdb.Close() })
		// Accept nothing with an empty Set if Redis answers: wait for the first snapshot,
		// briefly. If Redis is down, the audiences' on_stale policies decide.
		select {
		case <-feed.Synced():
		case <-time.After(5 * time.Second):
			log.Warn("redis not reachable yet; serving per each audience's on_stale policy until it is")
		case <-ctx.Done():
		}
		n.store, n.feed, n.rstore = st, feed, st
	}
	return n, nil
}

// openCRLs builds the CRL applier and the configured sources, loads each once — so their
// revocations are in force before the first conn is accepted — and keeps them current.
// A source that cannot be read now leaves the node stale until it can.
func (n *revocation) openCRLs(ctx context.Context, cfg *Config, metrics prometheus.Registerer, log *slog.Logger) error {
	issuers, err := cfg.crlIssuers()
	if err != nil {
		return err
	}
	n.crl, err = crl.NewApplier(crl.Options{Set: n.set, Issuers: issuers, Logger: log, Metrics: metrics})
	if err != nil {
		return err
	}
	for _, cs := range cfg.Revocation.CRL {
		if cs.FromCertificates {
			n.discovery = &crl.Discovery{Applier: n.crl, Refresh: time.Duration(cs.Refresh), Timeout: time.Duration(cs.Timeout), MaxSize: cs.MaxSize}
			n.discoveryWait = time.Duration(cs.Wait)
			if n.discoveryWait <= 0 {
				n.discoveryWait = 2 * time.Second
			}
			continue
		}
		var src crl.Source
		if cs.File != "" {
			src = &crl.File{Path: cfg.path(cs.File), Every: time.Duration(cs.Every), MaxSize: cs.MaxSize, Applier: n.crl}
		} else {
			src = &crl.URL{URL: cs.URL, Refresh: time.Duration(cs.Refresh), Timeout: time.Duration(cs.Timeout), MaxSize: cs.MaxSize, Applier: n.crl}
		}
		n.crls = append(n.crls, src)
	}
	var wg sync.WaitGroup
	for _, src := range n.crls {
		wg.Add(1)
		go func() { defer wg.Done(); src.Load(ctx) }()
	}
	wg.Wait()
	rctx, cancel := context.WithCancel(context.Background())
	if n.discovery != nil {
		n.discovery.Start(rctx)
	}
	for _, src := range n.crls {
		wg.Add(1)
		go func() { defer wg.Done(); src.Run(rctx) }()
	}
	n.close = append(n.close, func() { cancel(); wg.Wait() })
	return nil
}

// crlViews lists the CRLs in force, by ID.
func (n *revocation) crlViews() []admin.CRL {
	now := time.Now()
	var out []admin.CRL
	for _, ap := range n.crl.Applied() {
		number := "none"
		if ap.Number != nil {
			number = ap.Number.String()
		}
		out = append(out, admin.CRL{ID: ap.ID, Issuer: ap.Issuer, IssuerKey: ap.IssuerKey, Subject: ap.Subject, Number: number, ThisUpdate: ap.ThisUpdate,
			NextUpdate: ap.NextUpdate, Entries: ap.Entries, Origin: ap.Origin, AppliedAt: ap.AppliedAt,
			Stale: !ap.NextUpdate.IsZero() && now.After(ap.NextUpdate)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// crlStale says why the node's CRLs are stale, or "".
func (n *revocation) crlStale() string {
	if n.discovery != nil {
		if failing := n.discovery.Failing(); len(failing) > 0 {
			return fmt.Sprintf("the CRL of distribution point %s (named by a client's certificate) is not in force: it could not be fetched or applied", failing[0])
		}
	}
	if held := n.crl.Pending(); len(held) > 0 {
		return fmt.Sprintf("CRL %s is held: its issuer %s is none of the configured CAs and no client has presented it yet (it applies once one does, or list the CA in revocation.crl_issuers)", held[0].Origin, held[0].Issuer)
	}
	for _, src := range n.crls {
		if !src.Loaded() {
			return "CRL " + src.Origin() + " not loaded"
		}
	}
	if st := n.crl.Stale(); len(st) > 0 {
		return fmt.Sprintf("CRL of %s from %s is past its nextUpdate (%s)", st[0].Subject, st[0].Origin, st[0].NextUpdate.Format(time.RFC3339))
	}
	return ""
}

// stale reports whether the revocation data that an audience trusting the CAs in pool
// relies on is stale: Redis unheard for longer than max, a configured CRL not loaded (whose
// CA is not known until it is), or a CRL past its nextUpdate whose signer chains to pool.
// Audiences with on_stale: closed then refuse; a CRL of another audience's CA does not
// close this one.
func (n *revocation) stale(max time.Duration, pool *x509.CertPool) func() bool {
	return func() bool {
		if n.feed != nil && n.feed.Staleness() > max {
			return true
		}
		if pool == nil {
			return false // no client certificates, so nothing a CRL could revoke
		}
		for _, src := range n.crls {
			if !src.Loaded() {
				return true
			}
		}
		// A CRL held for an issuer no client has presented yet: whose conns it covers is
		// unknown until one does, so every audience with client certificates counts it.
		if len(n.crl.Pending()) > 0 {
			return true
		}
		for _, ap := range n.crl.Stale() {
			if _, err := ap.Signer.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
				return true
			}
		}
		return false
	}
}

func (n *revocation) shutdown() {
	for i := len(n.close) - 1; i >= 0; i-- {
		n.close[i]()
	}
}

// ready reports why the node is not ready, or "".
func (n *revocation) ready(max time.Duration) string {
	if why := n.crlStale(); why != "" {
		return why
	}
	if n.feed == nil {
		return ""
	}
	st := n.feed.Status()
	if st.LastHeard.IsZero() {
		// Nothing loaded yet: not ready at once, whatever max_staleness says.
		return fmt.Sprintf("revocation feed stale: Redis never reached since start-up (%s ago)", time.Since(n.start).Round(time.Second))
	} else if s := n.feed.Staleness(); s > max {
		return fmt.Sprintf("revocation feed stale: Redis unheard for %s (max_staleness %s)", s.Round(time.Second), max)
	}
	if st.Regressed {
		return "redis regressed: " + st.Reason + "; check it, then run guardian reseed"
	}
	if st.Stuck != "" {
		return "revocation feed stuck: " + st.Stuck
	}
	return ""
}

// setIssuers trusts issuers for CRLs from now on: a CA added to an audience is trusted for
// its CRLs too, and a CRL refused before for want of it is read again.
func (n *revocation) setIssuers(issuers []*x509.Certificate) {
	n.crl.SetIssuers(issuers)
	for _, src := range n.crls {
		if !src.Loaded() {
			go src.Retry(context.Background())
		}
	}
}

// prune drops, every interval until ctx ends, the entries whose expiry has passed (an OCSP
// revoked answer holds until its certificate expires), so that they do not pile up for the life of
// the node.
func (n *revocation) prune(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			n.pruneAt(now)
		}
	}
}

// pruneAt drops the entries expired at now and counts them.
func (n *revocation) pruneAt(now time.Time) int {
	ch := n.set.Prune(now)
	n.pruned.Add(float64(len(ch.Removed)))
	return len(ch.Removed)
}
