package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/guardian-mtls/guardian/daemon/admin"
	"github.com/guardian-mtls/guardian/internal/ratelog"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/ocsp"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// Options are what a Node takes besides its Config.
type Options struct {
	// Logger receives the node's logs; nil discards them.
	Logger *slog.Logger
	// Metrics, if set, is where the node registers its metrics, served on the admin API's
	// /metrics; nil means a registry of the node's own, with the Go and process collectors.
	Metrics *prometheus.Registry
}

// Node is a running guardian: one TLS port whose audiences are chosen by SNI, each proxied
// to its upstream (or answered by the identity echo), an optional admin listener, and the
// revocation sources that feed them. New starts its listeners, Run serves until its
// context ends, Reload applies the configuration file again, Shutdown stops it.
type Node struct {
	log     *slog.Logger
	clog    *slog.Logger         // for lines clients can cause: rate-limited
	metrics *prometheus.Registry // gathered for /metrics
	reg     *registry            // what the node registered in metrics
	rev     *revocation
	hm      *handlerMetrics
	reloads *prometheus.CounterVec
	// fileReloads counts the certificate files applied after a change on disk.
	fileReloads *prometheus.CounterVec

	data *listener.Listener
	// spliceWG counts the TCP splices; once splicesDone is set (under spliceMu), no new one
	// starts and Shutdown waits for the rest.
	spliceMu    sync.Mutex
	splicesDone bool
	spliceWG    sync.WaitGroup
	tcp         atomic.Pointer[map[string]*tcpProxy] // TCP audiences' splices, by name
	tcpErrors   *prometheus.CounterVec
	splices     sync.Map                        // *listener.ConnInfo → func() ending that splice: see tcpProxy
	crlClosed   atomic.Pointer[map[string]bool] // audiences with crl_unavailable: closed
	admin       *listener.Listener              // nil without admin.listen
	servers     []*http.Server
	listeners   []net.Listener
	handler     atomic.Pointer[http.Handler]
	modes       atomic.Pointer[map[string]ocsp.Mode] // audiences that use OCSP
	id          string

	reloadMu sync.Mutex
	cfg      *Config // the configuration in force; replaced by Reload under reloadMu

	bgCancel     context.CancelFunc
	bg           sync.WaitGroup
	runOnce      sync.Once
	errc         chan error
	shutdownOnce sync.Once
	shutdownErr  error
}

// New checks cfg (applying its defaults to it), opens its revocation store and sources, and
// listens on its addresses; nothing is served until Run. The Node keeps cfg: do not change
// it afterwards. ctx bounds the start: the first load of each CRL and the wait for Redis's
// first snapshot. Nothing is left running, or registered in Options.Metrics, when New
// fails.
func New(ctx context.Context, cfg *Config, opts Options) (*Node, error) {
	cfg.applyDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: opts.Logger, metrics: opts.Metrics}
	if err := n.open(ctx); err != nil {
		// What was opened is closed again: a failed New leaves nothing running.
		n.Shutdown(context.Background())
		return nil, err
	}
	return n, nil
}

// open opens what New promises, in order; on an error the caller shuts down what it
// opened.
func (n *Node) open(ctx context.Context) error {
	cfg := n.cfg
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	if n.metrics == nil {
		n.metrics = prometheus.NewRegistry()
		n.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	n.reg = &registry{Registerer: n.metrics}
	// Lines that clients can cause, one per request or conn, go through a rate limit.
	n.clog = ratelog.Logger(n.log, 10, time.Second)
	// The audiences' files are read again below, with the OCSP checker; a bad one fails
	// here, before any store is opened.
	if _, err := cfg.audiences(nil); err != nil {
		return err
	}
	warnings, err := cfg.Vet()
	if err != nil {
		return err
	}
	for _, w := range warnings {
		n.log.Warn("configuration: " + w)
	}
	if n.hm, err = newHandlerMetrics(n.reg); err != nil {
		return err
	}
	h, err := audienceHandler(cfg, n.hm, n.clog)
	if err != nil {
		return err
	}
	n.handler.Store(&h)
	m0 := cfg.ocspModes()
	n.modes.Store(&m0)
	n.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "guardian_config_reloads_total", Help: "Configuration reloads (SIGHUP), by result (ok, error).",
	}, []string{"result"})
	if err := n.reg.Register(n.reloads); err != nil {
		return err
	}
	n.fileReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "guardian_file_reloads_total", Help: "Certificate, key and CA files applied again after they changed on disk, by result (ok, error: the last good ones stay).",
	}, []string{"result"})
	if err := n.reg.Register(n.fileReloads); err != nil {
		return err
	}

	bgctx, cancel := context.WithCancel(context.Background())
	n.bgCancel = cancel
	if n.rev, err = openRevocation(ctx, cfg, n.reg, n.log); err != nil {
		return err
	}
	if err := n.listenData(); err != nil {
		return err
	}
	n.id = cfg.Revocation.Redis.NodeID
	if n.id == "" {
		host, _ := os.Hostname()
		_, port, _ := net.SplitHostPort(n.data.Addr().String())
		n.id = host + ":" + port
	}
	if err := n.listenAdmin(); err != nil {
		return err
	}
	n.background(bgctx)
	return nil
}

// listenData opens the data port: the audiences' listener and its HTTP server.
func (n *Node) listenData() error {
	cfg := n.cfg
	auds, err := cfg.audiences(n.rev.ocsp)
	if err != nil {
		return err
	}
	maxStale := time.Duration(cfg.Revocation.MaxStaleness)
	for i := range auds {
		auds[i].Stale = n.rev.stale(maxStale, auds[i].ClientCAs)
	}
	maxConns := fdBound()
	if cfg.MaxConns != nil {
		maxConns = *cfg.MaxConns
	}
	n.setCRLPolicy(cfg)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return configError(cfg.name(), "listen", "%v", err)
	}
	if pp := cfg.ProxyProtocol; pp != nil {
		trusted, _ := pp.prefixes() // validated with the config
		wrapped, err := listener.ProxyProtocol(ln, listener.ProxyProtocolConfig{Trusted: trusted, Optional: pp.Optional, Timeout: time.Duration(pp.Timeout)})
		if err != nil {
			ln.Close()
			return configError(cfg.name(), "proxy_protocol", "%v", err)
		}
		ln = wrapped
	}
	n.data, err = listener.New(ln, listener.Config{Audiences: auds, Set: n.rev.set, HandshakeTimeout: time.Duration(cfg.HandshakeTimeout),
		MaxHandshakes: cfg.MaxHandshakes, MaxConns: maxConns, KeepExpired: cfg.Revocation.Expired == "keep",
		Metrics: n.reg.listenerMetrics("data"), Logger: n.log, OnRevocation: n.rev.onRevocation,
		OnEvict: func(e listener.Eviction) {
			if end, ok := n.splices.Load(e.Conn); ok {
				end.(func())()
			}
		},
		// An intermediate a client presents is trusted for its CRLs; a CRL held for it
		// applies before this client's revocation check, as does a first fetch of a
		// distribution point its certificates name.
		OnVerified: n.onVerified})
	if err != nil {
		ln.Close()
		return err
	}
	n.tcpErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "guardian_tcp_upstream_errors_total",
		Help: "TCP audiences' client conns closed because the upstream could not be reached, by audience and kind (dial, dial_timeout, max_upstream_conns).",
	}, []string{"audience", "kind"})
	if err := n.reg.Register(n.tcpErrors); err != nil {
		return err
	}
	n.setTCP(cfg)
	swappable := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*n.handler.Load()).ServeHTTP(w, r) })
	n.serve(httpListener{n.data, n}, &http.Server{Handler: n.data.Progress(swappable), ConnContext: n.data.ConnContext, ConnState: n.data.ConnState,
		ReadHeaderTimeout: 30 * time.Second, ErrorLog: slog.NewLogLogger(ratelog.Shared(n.log.Handler(), 10, time.Second), slog.LevelWarn)})
	return nil
}

// listenAdmin opens the admin listener, if the configuration has one.
func (n *Node) listenAdmin() error {
	cfg := n.cfg
	if cfg.Admin.Listen == "" {
		return nil
	}
	aud, allowed, err := cfg.adminAudience()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Admin.Listen)
	if err != nil {
		return configError(cfg.name(), "admin.listen", "%v", err)
	}
	// Bounded as an audience is: any certificate of the admin CA can connect before
	// admin.allow refuses it, and its conns must not take the data port's descriptors.
	n.admin, err = listener.New(ln, listener.Config{Set: n.rev.set, Logger: n.log, Metrics: n.reg.listenerMetrics("admin"),
		MaxConns: cfg.adminMaxConns(), Audiences: []listener.Audience{aud}})
	if err != nil {
		ln.Close()
		return err
	}
	maxStale := time.Duration(cfg.Revocation.MaxStaleness)
	api, err := admin.New(admin.Options{Set: n.rev.set, Store: n.rev.store, Conns: n.data, Allowed: allowed,
		Ready: func() string { return n.rev.ready(maxStale) }, CRLs: n.rev.crlViews, Feed: n.rev.feed,
		Fleet: n.fleet, Logger: n.clog, Metrics: n.reg, Gatherer: n.metrics})
	if err != nil {
		return err
	}
	n.serve(n.admin, &http.Server{Handler: n.admin.Progress(api.Handler()), ConnState: n.admin.ConnState, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(ratelog.Shared(n.log.Handler(), 10, time.Second), slog.LevelWarn)})
	return nil
}

// onVerified runs in each handshake before the revocation check: the CRL applier learns the
// chain's CAs, and with from_certificates the chain's distribution points are followed — a
// handshake waits for a first fetch at most crl wait, then its audience's crl_unavailable
// decides.
func (n *Node) onVerified(audience string, chains [][]*x509.Certificate) error {
	n.rev.crl.Learn(chains)
	d := n.rev.discovery
	if d == nil {
		return nil
	}
	missing := d.Unavailable(chains, n.rev.discoveryWait)
	if len(missing) == 0 {
		return nil
	}
	if (*n.crlClosed.Load())[audience] {
		return listener.Refusal("crl_unavailable", fmt.Errorf("the CRL of %s is not in force, and audience %s is crl_unavailable: closed", missing[0], audience))
	}
	n.clog.Warn("serving a client whose CRL is not in force (crl_unavailable: open)", "audience", audience, "distribution_point", missing[0])
	return nil
}

// setCRLPolicy records which audiences refuse a client whose CRL is unavailable.
func (n *Node) setCRLPolicy(cfg *Config) {
	m := map[string]bool{}
	for _, a := range cfg.Audiences {
		m[a.Name] = a.CRLUnavailable == "closed"
	}
	n.crlClosed.Store(&m)
}

// setTCP builds the splices of cfg's TCP audiences.
func (n *Node) setTCP(cfg *Config) {
	m := map[string]*tcpProxy{}
	conns := cfg.upstreamConns()
	for _, a := range cfg.Audiences {
		if a.tcp() {
			m[a.Name] = newTCPProxy(a, conns[a.Name], n.tcpErrors, n.clog, &n.splices)
		}
	}
	n.tcp.Store(&m)
}

// serve records a server for Run and Shutdown.
func (n *Node) serve(l net.Listener, s *http.Server) {
	n.listeners = append(n.listeners, l)
	n.servers = append(n.servers, s)
}

// fleet is every live node's heartbeat: Redis's, or this node's alone.
func (n *Node) fleet(ctx context.Context) ([]redisfeed.NodeStatus, error) {
	if n.rev.rstore != nil {
		return n.rev.rstore.LiveNodes(ctx)
	}
	return []redisfeed.NodeStatus{n.rev.status(n.id, n.data.Len())}, nil
}

// background starts what runs beside the servers until Shutdown: the OCSP re-checks of
// live conns, the heartbeats, and the pruning of expired revocations.
func (n *Node) background(ctx context.Context) {
	run := func(f func()) {
		n.bg.Add(1)
		go func() { defer n.bg.Done(); f() }()
	}
	if n.rev.ocsp != nil {
		usesOCSP := func(audience string) bool { _, ok := (*n.modes.Load())[audience]; return ok }
		every := time.Duration(n.cfg.Revocation.OCSP.Recheck) // read here: Reload replaces n.cfg
		run(func() { n.rev.ocsp.Run(ctx, every, n.data.ClientCerts(usesOCSP)) })
	}
	if n.rev.rstore != nil {
		run(func() { n.rev.heartbeat(ctx, n.id, n.data.Len, n.log) })
	}
	run(func() { n.rev.prune(ctx, time.Minute) })
	run(func() { n.watchFiles(ctx, n.fileReloads) })
}

// Addr returns the data port's address.
func (n *Node) Addr() net.Addr { return n.data.Addr() }

// AdminAddr returns the admin listener's address, or nil without one.
func (n *Node) AdminAddr() net.Addr {
	if n.admin == nil {
		return nil
	}
	return n.admin.Addr()
}

// Set returns the node's revocation Set, for reading. A change made to it directly is this
// node's alone and lasts until a restart: Store is where revocations are written.
func (n *Node) Set() *revoke.Set { return n.rev.set }

// Store returns the configured store (embedded, Redis or memory): a revocation written there
// reaches this node's Set, and with Redis every node's.
func (n *Node) Store() revoke.Store { return n.rev.store }

// Config returns the configuration in force; it must not be changed.
func (n *Node) Config() *Config {
	n.reloadMu.Lock()
	defer n.reloadMu.Unlock()
	return n.cfg
}

// Run serves until ctx ends or a server fails, then shuts the node down, giving in-flight
// requests up to the configuration's shutdown_timeout.
func (n *Node) Run(ctx context.Context) error {
	n.start()
	var err error
	select {
	case <-ctx.Done():
	case err = <-n.errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Duration(n.Config().ShutdownTimeout))
	defer cancel()
	n.Shutdown(sctx)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// start starts the servers, once.
func (n *Node) start() {
	n.runOnce.Do(func() {
		n.errc = make(chan error, len(n.servers))
		for i, s := range n.servers {
			go func() { n.errc <- s.Serve(n.listeners[i]) }()
		}
	})
}

// Shutdown stops accepting, lets in-flight requests finish until ctx ends, then closes
// every conn left — streams, WebSockets and idle keep-alive conns alike — and stops the
// revocation sources. It returns ctx's error if conns had to be closed.
func (n *Node) Shutdown(ctx context.Context) error {
	n.shutdownOnce.Do(func() {
		n.log.Info("shutting down: no new conns; in-flight requests may finish")
		if n.data != nil {
			n.data.Close() // no new conns, for HTTP or TCP audiences
		}
		var wg sync.WaitGroup
		for _, s := range n.servers {
			wg.Add(1)
			go func() { defer wg.Done(); s.Shutdown(ctx) }()
		}
		wg.Wait()
		if ctx.Err() != nil {
			n.log.Warn("shutdown deadline passed; closing the conns still open", "conns", n.data.Len())
			n.shutdownErr = ctx.Err()
		}
		// The servers have closed what they knew; what is left (hijacked conns) is closed
		// at the deadline.
		for _, l := range []*listener.Listener{n.data, n.admin} {
			if l != nil {
				l.Shutdown(ctx)
			}
		}
		for _, s := range n.servers {
			s.Close()
		}
		n.spliceMu.Lock()
		n.splicesDone = true // no splice starts after this
		n.spliceMu.Unlock()
		n.spliceWG.Wait() // their conns were closed with the listener's
		if n.bgCancel != nil {
			n.bgCancel()
		}
		n.bg.Wait()
		if n.rev != nil {
			n.rev.shutdown()
		}
		if n.reg != nil {
			n.reg.unregisterAll()
		}
	})
	return n.shutdownErr
}

// Reload re-reads the configuration file and applies its audiences — certificates, client
// CA pools, SNI names, upstreams, binding, OCSP modes — without dropping a conn that the new
// audiences still trust; the others are closed with reason policy. Anything that fails
// leaves the running configuration as it was. The listen addresses, the admin listener and
// the revocation section take a restart: a change there is logged, not applied.
func (n *Node) Reload() error {
	n.reloadMu.Lock()
	defer n.reloadMu.Unlock()
	if err := n.reload(); err != nil {
		n.reloads.WithLabelValues("error").Inc()
		n.log.Error("configuration reload refused; the running configuration stays", "file", n.cfg.file, "err", err)
		return err
	}
	n.reloads.WithLabelValues("ok").Inc()
	return nil
}

func (n *Node) reload() error {
	cfg := n.cfg
	if cfg.file == "" {
		return errors.New("this node's configuration was built in code, not read from a file: there is nothing to reload")
	}
	next, err := Load(cfg.file)
	if err != nil {
		return err
	}
	warnings, err := next.Vet()
	if err != nil {
		return err
	}
	if len(next.ocspModes()) > 0 && n.rev.ocsp == nil {
		return errors.New("the new configuration turns OCSP on, which was off at start: restart guardian for that")
	}
	auds, err := next.audiences(n.rev.ocsp)
	if err != nil {
		return err
	}
	h, err := audienceHandler(next, n.hm, n.clog)
	if err != nil {
		return err
	}
	issuers, err := next.crlIssuers()
	if err != nil {
		return err
	}
	maxStale := time.Duration(cfg.Revocation.MaxStaleness)
	for i := range auds {
		auds[i].Stale = n.rev.stale(maxStale, auds[i].ClientCAs)
	}
	closed, err := n.data.SetAudiences(auds)
	if err != nil {
		return err
	}
	n.handler.Store(&h)
	n.setTCP(next)
	n.setCRLPolicy(next)
	m := next.ocspModes()
	n.modes.Store(&m)
	n.rev.setIssuers(issuers)
	for _, w := range warnings {
		n.log.Warn("configuration: " + w)
	}
	for _, f := range restartOnly(cfg, next) {
		n.log.Warn("configuration changed where a reload does not apply it; restart guardian for it", "field", f)
	}
	// What a reload does not apply stays as it was started.
	next.Listen, next.Admin, next.Revocation, next.ProxyProtocol = cfg.Listen, cfg.Admin, cfg.Revocation, cfg.ProxyProtocol
	next.HandshakeTimeout, next.MaxConns, next.MaxHandshakes = cfg.HandshakeTimeout, cfg.MaxConns, cfg.MaxHandshakes
	n.cfg = next
	n.log.Info("configuration reloaded", "file", cfg.file, "audiences", len(auds), "conns_closed", closed)
	return nil
}

// restartOnly names what differs between a and b that only a restart applies.
func restartOnly(a, b *Config) []string {
	var out []string
	if a.Listen != b.Listen {
		out = append(out, "listen")
	}
	if !reflect.DeepEqual(a.ProxyProtocol, b.ProxyProtocol) {
		out = append(out, "proxy_protocol")
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
		return fmt.Errorf("guardian: this certificate is not an admin (admin.allow)")
	}
}
