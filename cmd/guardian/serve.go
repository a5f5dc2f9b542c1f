package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/guardian-mtls/guardian/binding"
	"github.com/guardian-mtls/guardian/internal/ratelog"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/boltstore"
	"github.com/guardian-mtls/guardian/revoke/crl"
	"github.com/guardian-mtls/guardian/revoke/ocsp"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

func runServe(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("serve", stderr)
	file := fs.String("config", "guardian.yaml", "configuration `FILE`")
	format := fs.String("log-format", "text", "log format: text or json")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*file)
	if err != nil {
		return err
	}
	var h slog.Handler = slog.NewTextHandler(stderr, nil)
	if *format == "json" {
		h = slog.NewJSONHandler(stderr, nil)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan struct{})
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return serve(ctx, cfg, stdout, slog.New(h), reload)
}

// node is a running guardian: what serve builds from a Config.
type node struct {
	set    *revoke.Set
	store  revocationStore
	feed   *redisfeed.Feed  // nil unless the store is Redis
	rstore *redisfeed.Store // nil unless the store is Redis
	crl    *crl.Applier     // every CRL, from a file, a URL or Redis, goes through it
	crls   []crl.Source
	ocsp   *ocsp.Checker // nil unless an audience uses OCSP
	close  []func()

	mu        sync.Mutex
	matched   map[string]int // recently revoked keys: conns each change matched
	recent    []string
	evictions uint64
}

// recentKeys bounds the keys a heartbeat carries: --wait needs only the change just made.
const recentKeys = 64

// onRevocation records how many conns a change matched, for heartbeats and --wait.
func (n *node) onRevocation(ch revoke.Change, matched int) {
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
func (n *node) status(id string, conns int) redisfeed.NodeStatus {
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
func (n *node) heartbeat(ctx context.Context, id string, conns func() int, log *slog.Logger) {
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

// openStore builds the Set and the configured store, loading what it holds.
func openStore(ctx context.Context, cfg *Config, metrics *prometheus.Registry, log *slog.Logger) (_ *node, err error) {
	set, err := revoke.NewSet(revoke.SetOptions{Metrics: metrics})
	if err != nil {
		return nil, err
	}
	n := &node{set: set}
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
		n.store = memStore{set}
	case "embedded":
		bs, _, err := boltstore.Open(r.Embedded.Path, set, log)
		if err != nil {
			return nil, configError(cfg.file, "revocation.embedded.path", "%v", err)
		}
		n.store = boltAdapter{bs}
		n.close = append(n.close, func() { bs.Close() })
	case "redis":
		rc := r.Redis
		cc, err := cfg.redisClientConfig()
		if err != nil {
			return nil, err
		}
		rdb, err := redisfeed.NewClient(cc)
		if err != nil {
			return nil, configError(cfg.file, "revocation.redis", "%v", err)
		}
		st := redisfeed.NewStore(rdb, rc.Prefix, rc.MaxLen)
		feed, err := redisfeed.NewFeed(st, set, redisfeed.FeedOptions{Metrics: metrics, Logger: log,
			OnCRL: func(_ string, der []byte) { n.crl.Apply(der, "redis") }})
		if err != nil {
			return nil, err
		}
		fctx, cancel := context.WithCancel(ctx)
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
		n.store, n.feed, n.rstore = redisAdapter{st}, feed, st
	}
	return n, nil
}

// openCRLs builds the CRL applier and the configured sources, loads each once — so their
// revocations are in force before the first conn is accepted — and keeps them current.
// A source that cannot be read now leaves the node stale until it can.
func (n *node) openCRLs(ctx context.Context, cfg *Config, metrics *prometheus.Registry, log *slog.Logger) error {
	issuers, err := cfg.crlIssuers()
	if err != nil {
		return err
	}
	n.crl, err = crl.NewApplier(crl.Options{Set: n.set, Issuers: issuers, Logger: log, Metrics: metrics})
	if err != nil {
		return err
	}
	for _, cs := range cfg.Revocation.CRL {
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
	rctx, cancel := context.WithCancel(ctx)
	for _, src := range n.crls {
		wg.Add(1)
		go func() { defer wg.Done(); src.Run(rctx) }()
	}
	n.close = append(n.close, func() { cancel(); wg.Wait() })
	return nil
}

// reload re-reads the configuration file and applies its audiences — certificates, client
// CA pools, SNI names, upstreams, binding, OCSP modes — without dropping a conn that the new
// audiences still trust; the others are closed with reason policy. Anything that fails
// leaves the running configuration as it was. The listen addresses, the admin listener and
// the revocation section take a restart: a change there is reported, not applied.
func (n *node) reload(cfg *Config, l *listener.Listener, handler *atomic.Pointer[http.Handler], modes *atomic.Pointer[map[string]ocsp.Mode], hm *handlerMetrics, log, clog *slog.Logger) error {
	next, err := loadConfig(cfg.file)
	if err != nil {
		return err
	}
	warnings, err := next.vet()
	if err != nil {
		return err
	}
	if len(next.ocspModes()) > 0 && n.ocsp == nil {
		return errors.New("the new configuration turns OCSP on, which was off at start: restart guardian for that")
	}
	auds, err := next.audiences(n.ocsp)
	if err != nil {
		return err
	}
	h, err := audienceHandler(next, hm, clog)
	if err != nil {
		return err
	}
	issuers, err := next.crlIssuers()
	if err != nil {
		return err
	}
	maxStale := time.Duration(cfg.Revocation.MaxStaleness)
	for i := range auds {
		auds[i].Stale = n.stale(maxStale, auds[i].ClientCAs)
	}
	closed, err := l.SetAudiences(auds)
	if err != nil {
		return err
	}
	handler.Store(&h)
	m := next.ocspModes()
	modes.Store(&m)
	// A CA added to an audience is trusted for its CRLs too; a CRL refused before for
	// want of it is read again.
	n.crl.SetIssuers(issuers)
	for _, src := range n.crls {
		if !src.Loaded() {
			go src.Retry(context.Background())
		}
	}
	for _, w := range warnings {
		log.Warn("configuration: " + w)
	}
	for _, f := range restartOnly(cfg, next) {
		log.Warn("configuration changed where a reload does not apply it; restart guardian for it", "field", f)
	}
	log.Info("configuration reloaded", "file", cfg.file, "audiences", len(auds), "conns_closed", closed)
	return nil
}

// restartOnly names what differs between a and b that only a restart applies.
func restartOnly(a, b *Config) []string {
	var out []string
	if a.Listen != b.Listen {
		out = append(out, "listen")
	}
	if !reflect.DeepEqual(a.Admin, b.Admin) {
		out = append(out, "admin")
	}
	if !reflect.DeepEqual(a.Revocation, b.Revocation) {
		out = append(out, "revocation")
	}
	if a.HandshakeTimeout != b.HandshakeTimeout {
		out = append(out, "handshake_timeout")
	}
	if !reflect.DeepEqual(a.MaxConns, b.MaxConns) || a.MaxHandshakes != b.MaxHandshakes {
		out = append(out, "max_conns/max_handshakes")
	}
	return out
}

// liveCerts yields, for ocsp.Checker.Run, the client certificate and its issuer of every
// live conn in an audience that uses OCSP.
func liveCerts(l *listener.Listener, modes *atomic.Pointer[map[string]ocsp.Mode]) func(yield func(leaf, issuer *x509.Certificate)) {
	return func(yield func(leaf, issuer *x509.Certificate)) {
		m := *modes.Load()
		l.Conns(func(info *listener.ConnInfo) bool {
			if _, ok := m[info.Audience()]; ok {
				if ch := info.Chains(); len(ch) > 0 && len(ch[0]) > 1 {
					yield(ch[0][0], ch[0][1])
				}
			}
			return true
		})
	}
}

// crlViews lists the CRLs in force, by ID.
func (n *node) crlViews() []crlView {
	now := time.Now()
	var out []crlView
	for _, ap := range n.crl.Applied() {
		number := "none"
		if ap.Number != nil {
			number = ap.Number.String()
		}
		out = append(out, crlView{ID: ap.ID, Issuer: ap.Issuer, IssuerKey: ap.IssuerKey, Subject: ap.Subject, Number: number, ThisUpdate: ap.ThisUpdate,
			NextUpdate: ap.NextUpdate, Entries: ap.Entries, Origin: ap.Origin, AppliedAt: ap.AppliedAt,
			Stale: !ap.NextUpdate.IsZero() && now.After(ap.NextUpdate)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// crlStale says why the node's CRLs are stale, or "".
func (n *node) crlStale() string {
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
func (n *node) stale(max time.Duration, pool *x509.CertPool) func() bool {
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
		for _, ap := range n.crl.Stale() {
			if _, err := ap.Signer.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
				return true
			}
		}
		return false
	}
}

// redisClientConfig is the Redis client the configuration describes, TLS included; the
// daemon and the CLI's --config both use it.
func (cfg *Config) redisClientConfig() (redisfeed.ClientConfig, error) {
	rc := cfg.Revocation.Redis
	cc := redisfeed.ClientConfig{URL: rc.URL, Addrs: rc.Addrs, MasterName: rc.MasterName,
		Username: rc.Username, Password: rc.Password, DB: rc.DB}
	if rc.TLS || rc.CA != "" {
		cc.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
		if rc.CA != "" {
			pool, err := cfg.pool([]string{rc.CA}, "revocation.redis.ca")
			if err != nil {
				return cc, err
			}
			cc.TLS.RootCAs = pool
		}
	}
	return cc, nil
}

func (n *node) shutdown() {
	for i := len(n.close) - 1; i >= 0; i-- {
		n.close[i]()
	}
}

// ready reports why the node is not ready, or "".
func (n *node) ready(max time.Duration) string {
	if why := n.crlStale(); why != "" {
		return why
	}
	if n.feed == nil {
		return ""
	}
	if s := n.feed.Staleness(); s > max {
		return fmt.Sprintf("revocation feed stale: Redis unheard for %s (max_staleness %s)", s.Round(time.Second), max)
	}
	st := n.feed.Status()
	if st.Regressed {
		return "redis regressed: " + st.Reason + "; check it, then run guardian reseed"
	}
	if st.Stuck != "" {
		return "revocation feed stuck: " + st.Stuck
	}
	return ""
}

// serve runs guardian on cfg until ctx ends; each receive on reload (SIGHUP) re-reads the
// configuration file and applies its audiences.
func serve(ctx context.Context, cfg *Config, stdout io.Writer, log *slog.Logger, reload <-chan struct{}) error {
	metrics := prometheus.NewRegistry()
	metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// The audiences' files are read again below, with the OCSP checker; a bad one fails
	// here, before any store is opened.
	if _, err := cfg.audiences(nil); err != nil {
		return err
	}
	warnings, err := cfg.vet()
	if err != nil {
		return err
	}
	for _, w := range warnings {
		log.Warn("configuration: " + w)
	}
	hm, err := newHandlerMetrics(metrics)
	if err != nil {
		return err
	}
	// Lines that clients can cause, one per request or conn, go through a rate limit.
	clog := ratelog.Logger(log, 10, time.Second)
	handler, err := audienceHandler(cfg, hm, clog)
	if err != nil {
		return err
	}
	n, err := openStore(ctx, cfg, metrics, log)
	if err != nil {
		return err
	}
	defer n.shutdown()
	auds, err := cfg.audiences(n.ocsp)
	if err != nil {
		return err
	}
	var adminCert tls.Certificate
	var allowed []revoke.Key
	if cfg.Admin.Listen != "" {
		if adminCert, err = tls.LoadX509KeyPair(cfg.path(cfg.Admin.Cert), cfg.path(cfg.Admin.Key)); err != nil {
			return configError(cfg.file, "admin.cert", "%v", err)
		}
		for _, k := range cfg.Admin.Allow {
			allowed = append(allowed, revoke.MustParseKey(k)) // validated with the config
		}
	}
	adminPool, err := cfg.pool(cfg.Admin.ClientCA, "admin.client_ca")
	if err != nil {
		return err
	}

	maxStale := time.Duration(cfg.Revocation.MaxStaleness)
	for i := range auds {
		auds[i].Stale = n.stale(maxStale, auds[i].ClientCAs)
	}
	maxConns := fdBound()
	if cfg.MaxConns != nil {
		maxConns = *cfg.MaxConns
	}
	lcfg := listener.Config{Audiences: auds, Set: n.set, HandshakeTimeout: time.Duration(cfg.HandshakeTimeout), MaxHandshakes: cfg.MaxHandshakes,
		MaxConns: maxConns, KeepExpired: cfg.Revocation.Expired == "keep", Metrics: metrics, Logger: log, OnRevocation: n.onRevocation}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return configError(cfg.file, "listen", "%v", err)
	}
	l, err := listener.New(ln, lcfg)
	if err != nil {
		ln.Close()
		return err
	}
	defer l.Shutdown(ctxDone())
	var modes atomic.Pointer[map[string]ocsp.Mode]
	m0 := cfg.ocspModes()
	modes.Store(&m0)
	if n.ocsp != nil {
		octx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			n.ocsp.Run(octx, time.Duration(cfg.Revocation.OCSP.Recheck), liveCerts(l, &modes))
			close(done)
		}()
		defer func() { cancel(); <-done }()
	}
	nodeID := cfg.Revocation.Redis.NodeID
	if nodeID == "" {
		host, _ := os.Hostname()
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		nodeID = host + ":" + port
	}
	if n.rstore != nil {
		hctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { n.heartbeat(hctx, nodeID, l.Len, log); close(done) }()
		defer func() { cancel(); <-done }()
	}
	var current atomic.Pointer[http.Handler]
	current.Store(&handler)
	swappable := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*current.Load()).ServeHTTP(w, r) })
	servers := []*http.Server{{Handler: l.Progress(swappable), ConnContext: l.ConnContext, ConnState: l.ConnState, ReadHeaderTimeout: 30 * time.Second,
		ErrorLog: slog.NewLogLogger(ratelog.Shared(log.Handler(), 10, time.Second), slog.LevelWarn)}}
	listeners := []net.Listener{l}

	if cfg.Admin.Listen != "" {
		aln, err := net.Listen("tcp", cfg.Admin.Listen)
		if err != nil {
			return configError(cfg.file, "admin.listen", "%v", err)
		}
		// Bounded as an audience is: any certificate of the admin CA can connect before
		// admin.allow refuses it, and its conns must not take the data port's descriptors.
		al, err := listener.New(aln, listener.Config{Set: n.set, Logger: log, MaxConns: cfg.adminMaxConns(), Audiences: []listener.Audience{{
			Name: "admin", Default: true, SNI: []string{"localhost"}, Certificates: []tls.Certificate{adminCert},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: adminPool, IdleTimeout: time.Minute,
			// A certificate admin.allow does not list is refused in the handshake, so it
			// cannot hold admin conns (the API refuses it again, for any other path).
			TLS: &tls.Config{VerifyConnection: adminAllowed(allowed)},
		}}})
		if err != nil {
			aln.Close()
			return err
		}
		defer al.Shutdown(ctxDone())
		api, err := newAdminAPI(n.set, n.store, l, allowed, clog, metrics)
		if err != nil {
			return err
		}
		api.ready = func() string { return n.ready(maxStale) }
		api.crls = n.crlViews
		api.feed = n.feed
		api.fleet = func(ctx context.Context) ([]redisfeed.NodeStatus, error) {
			if n.rstore != nil {
				return n.rstore.LiveNodes(ctx)
			}
			return []redisfeed.NodeStatus{n.status(nodeID, l.Len())}, nil
		}
		servers = append(servers, &http.Server{Handler: al.Progress(api.handler()), ConnState: al.ConnState, ReadHeaderTimeout: 10 * time.Second,
			ErrorLog: slog.NewLogLogger(ratelog.Shared(log.Handler(), 10, time.Second), slog.LevelWarn)})
		listeners = append(listeners, al)
		fmt.Fprintf(stdout, "admin API on %s\n", aln.Addr())
	}
	fmt.Fprintf(stdout, "listening on %s (%d audiences, revocations: %s)\n", ln.Addr(), len(auds), cfg.Revocation.Store)
	errc := make(chan error, len(servers))
	for i, s := range servers {
		go func() { errc <- s.Serve(listeners[i]) }()
	}
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "guardian_config_reloads_total", Help: "Configuration reloads (SIGHUP), by result (ok, error).",
	}, []string{"result"})
	metrics.MustRegister(reloads)
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case err = <-errc:
			break wait
		case <-reload:
			if rerr := n.reload(cfg, l, &current, &modes, hm, log, clog); rerr != nil {
				reloads.WithLabelValues("error").Inc()
				log.Error("configuration reload refused; the running configuration stays", "file", cfg.file, "err", rerr)
				continue
			}
			reloads.WithLabelValues("ok").Inc()
		}
	}
	// SIGTERM: stop accepting, let in-flight requests finish up to shutdown_timeout, then
	// close what is left: streams, WebSockets (hijacked, so unknown to http.Server) and idle
	// keep-alive conns alike.
	log.Info("shutting down: no new conns; in-flight requests may finish", "deadline", time.Duration(cfg.ShutdownTimeout))
	sctx, cancel := context.WithTimeout(context.Background(), time.Duration(cfg.ShutdownTimeout))
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Add(1)
		go func() { defer wg.Done(); s.Shutdown(sctx) }()
	}
	wg.Wait()
	if sctx.Err() != nil {
		log.Warn("shutdown deadline passed; closed the conns still open", "conns", l.Len())
		l.Shutdown(sctx)
		for _, s := range servers {
			s.Close()
		}
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// handlerMetrics are what the audience handlers count; registered once, shared by every
// handler a reload builds.
type handlerMetrics struct {
	binding     *binding.Metrics
	proxyErrors *prometheus.CounterVec
}

func newHandlerMetrics(reg prometheus.Registerer) (*handlerMetrics, error) {
	bm, err := binding.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	pe := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "guardian_proxy_errors_total",
		Help: "Requests the proxy could not complete, by audience and kind (client_canceled, timeout, upstream).",
	}, []string{"audience", "kind"})
	if err := reg.Register(pe); err != nil {
		return nil, err
	}
	return &handlerMetrics{binding: bm, proxyErrors: pe}, nil
}

// adminAllowed refuses, in the handshake, a client certificate that holds none of the
// allowed identity keys; none allowed means any the admin CA verifies.
func adminAllowed(allowed []revoke.Key) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(allowed) == 0 || len(cs.VerifiedChains) == 0 {
			return nil // the listener's check and the CA pool decide
		}
		for _, k := range revoke.KeysOf(cs.VerifiedChains[0][:1]) {
			if slices.Contains(allowed, k) {
				return nil
			}
		}
		return errors.New("guardian: this certificate is not an admin (admin.allow)")
	}
}

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

// audienceHandler sends each request to its audience's upstream, or to the identity echo
// for an audience without one, through the audience's checks: every request passes the
// SNI/Host guard, then the identity-header guard, then session and token binding. The
// identity headers are set in the proxy's Rewrite, after hop-by-hop processing, so nothing
// the client sends can strip or replace them. log is for lines clients can cause:
// rate-limit it.
func audienceHandler(cfg *Config, m *handlerMetrics, log *slog.Logger) (http.Handler, error) {
	echo := demoHandler()
	byName := map[string]http.Handler{}
	upstreamConns := cfg.upstreamConns()
	for i, a := range cfg.Audiences {
		field := fmt.Sprintf("audiences[%d]", i)
		h := echo
		if a.Upstream != "" {
			u, err := url.Parse(a.Upstream)
			if err != nil {
				return nil, err
			}
			ut := a.UpstreamTimeouts
			name := a.Name
			h = &httputil.ReverseProxy{
				Rewrite: func(pr *httputil.ProxyRequest) {
					pr.SetURL(u)
					binding.SetIdentity(pr)
				},
				Transport: &http.Transport{
					Proxy:                 nil, // an upstream is dialled directly, never through HTTP_PROXY
					DialContext:           (&net.Dialer{Timeout: time.Duration(ut.Dial), KeepAlive: 30 * time.Second}).DialContext,
					ResponseHeaderTimeout: time.Duration(ut.ResponseHeader),
					IdleConnTimeout:       time.Duration(ut.Idle),
					MaxIdleConnsPerHost:   64,
					// Each request in flight holds an upstream conn: bounded, so clients of one
					// audience cannot spend the descriptors the others need.
					MaxConnsPerHost:   upstreamConns[a.Name],
					ForceAttemptHTTP2: true,
				},
				// Streaming responses go through as they come; a WebSocket upgrade is
				// spliced (the request's conn is hijacked through the binding wrappers).
				FlushInterval: -1,
				ErrorLog:      slog.NewLogLogger(ratelog.Shared(log.Handler(), 10, time.Second), slog.LevelWarn),
				ErrorHandler:  proxyError(name, m.proxyErrors, log),
			}
		}
		if tb := a.TokenBinding; tb != nil {
			var keys []any
			for j, f := range tb.Keys {
				b, err := os.ReadFile(cfg.path(f))
				if err == nil {
					var k any
					if k, err = binding.ParseKey(b); err == nil {
						keys = append(keys, k)
					}
				}
				if err != nil {
					return nil, configError(cfg.file, fmt.Sprintf("%s.token_binding.keys[%d]", field, j), "%v", err)
				}
			}
			t := &binding.Tokens{Issuer: tb.Issuer, Audience: tb.Audience, Algorithms: tb.Algorithms, Keys: keys,
				Leeway: time.Duration(tb.Leeway), Metrics: m.binding, Logger: log}
			var err error
			if h, err = t.Wrap(h); err != nil {
				return nil, configError(cfg.file, field+".token_binding", "%v", err)
			}
		}
		protected := []string{}
		if sb := a.SessionBinding; sb != nil {
			var keys [][]byte
			for j, file := range sb.keyFiles() {
				key, err := os.ReadFile(cfg.path(file))
				if err != nil {
					return nil, configError(cfg.file, fmt.Sprintf("%s.session_binding.keys[%d]", field, j), "%v", err)
				}
				keys = append(keys, bytes.TrimSpace(key))
			}
			s := &binding.Sessions{Cookies: sb.Cookies, Keys: keys, Audience: a.Name, Metrics: m.binding, Logger: log}
			var err error
			if h, err = s.Wrap(h); err != nil {
				return nil, configError(cfg.file, field+".session_binding", "%v", err)
			}
			protected = append(protected, "Cookie")
		}
		if a.TokenBinding != nil {
			protected = append(protected, "Authorization")
		}
		us, _ := binding.ParseUnderscores(a.UnderscoreHeaders) // validated with the config
		h = (&binding.Headers{Underscores: us, Protected: protected, Metrics: m.binding, Logger: log}).Wrap(h)
		byName[a.Name] = h
	}
	return binding.SNIHostGuard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info, ok := listener.FromContext(r.Context())
		if !ok {
			http.Error(w, "no connection identity", http.StatusInternalServerError)
			return
		}
		h := byName[info.Audience()]
		if h == nil {
			http.Error(w, "unknown audience", http.StatusMisdirectedRequest)
			return
		}
		h.ServeHTTP(w, r)
	}), m.binding, log), nil
}

// proxyError answers a request the proxy could not complete. A client that went away is
// counted only: an HTTP/2 rapid-reset flood cancels thousands of requests a second.
func proxyError(audience string, errs *prometheus.CounterVec, log *slog.Logger) func(http.ResponseWriter, *http.Request, error) {
	return func(w http.ResponseWriter, r *http.Request, err error) {
		kind := "upstream"
		var ne net.Error
		switch {
		case r.Context().Err() != nil && errors.Is(err, context.Canceled):
			kind = "client_canceled"
		case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
			kind = "timeout"
		}
		errs.WithLabelValues(audience, kind).Inc()
		if kind != "client_canceled" {
			log.Warn("upstream request failed", "audience", audience, "kind", kind, "err", err)
		}
		w.WriteHeader(http.StatusBadGateway)
	}
}

// ctxDone is a context that has ended.
func ctxDone() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
