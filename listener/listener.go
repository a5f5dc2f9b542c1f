package listener

import (
	"container/list"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/conntrack"
	"github.com/guardian-mtls/guardian/revoke"
)

// Sentinel errors of a refused handshake, checked with errors.Is.
var (
	ErrRevoked      = errors.New("listener: client certificate revoked")
	ErrUnknownSNI   = errors.New("listener: unknown server name")
	ErrStale        = errors.New("listener: revocation data is stale and this audience is on_stale: closed")
	errChainTooLong = errors.New("listener: client certificate chain too long")
	errShed         = errors.New("listener: handshake shed: too many in progress, and this one was the oldest")
	errPolicy       = errors.New("listener: the audiences were reloaded during the handshake, and they no longer serve this client")
)

// StalePolicy is what an audience does while the revocation data is stale.
type StalePolicy int

const (
	// StaleOpen keeps serving with the last known revocations.
	StaleOpen StalePolicy = iota
	// StaleClosed refuses new handshakes until the data is fresh again; live conns stay.
	StaleClosed
)

// Audience is one set of clients served on the port, chosen by the SNI they send.
type Audience struct {
	Name string
	// SNI lists exact names and "*.example.com" wildcards (one label).
	SNI []string
	// Default makes this audience serve clients that send no SNI.
	Default      bool
	Certificates []tls.Certificate
	ClientAuth   tls.ClientAuthType
	ClientCAs    *x509.CertPool
	// SessionTicketKeys, if set, are this audience's ticket keys (first one encrypts). If
	// nil, crypto/tls rotates keys of its own for this audience alone, so a ticket issued
	// for one audience never resumes a session on another.
	SessionTicketKeys [][32]byte
	// NextProtos defaults to h2 and http/1.1.
	NextProtos []string
	// OnStale applies while the revocation data is stale: Stale says so, or, when Stale is
	// nil, Config.Stale.
	OnStale StalePolicy
	// Stale, if set, reports whether the revocation data this audience relies on is stale
	// (a CRL of one of its CAs past its nextUpdate, say), in place of Config.Stale.
	Stale func() bool
	// TLS, if set, is the starting point: cloned, then the fields above override it, and
	// its own VerifyConnection, if any, runs after guardian's check.
	TLS *tls.Config
	// IdleTimeout closes a conn that has had no request in flight for this long, counted
	// from its handshake too; 0 means never. It works through ConnState, which the
	// http.Server serving the listener must use.
	IdleTimeout time.Duration
	// MinBodyRate, in bytes a second, is the average a request body must keep up after its
	// first IdleTimeout (Progress enforces it; 0: none): a body trickled a byte at a time
	// makes progress, yet holds its stream and its upstream conn for as long as it likes.
	MinBodyRate int
	// MaxConns bounds this audience's conns, from their ClientHello on; 0 means no bound.
	// A conn past it is refused in its handshake (reason audience_full).
	MaxConns int
	// MaxConnsPerClient bounds the conns one client holds in this audience — one IPv4
	// address, or one IPv6 /64; 0 means no bound. Past it: refused (reason client_full).
	MaxConnsPerClient int
}

// Config configures a Listener.
type Config struct {
	Audiences []Audience
	// Set is the revocation denylist the listener checks and subscribes to. Required.
	Set *revoke.Set
	// HandshakeTimeout bounds each handshake; 0 means 10s.
	HandshakeTimeout time.Duration
	// KeepExpired disables eviction of conns whose certificate expires (expired: keep).
	KeepExpired bool
	// Clock decides expiry, for the TLS verification as well; nil means the real clock.
	Clock   conntrack.Clock
	Metrics prometheus.Registerer
	Logger  *slog.Logger
	// Stale, if set, reports whether the revocation data is stale (its source unheard
	// for too long); audiences with OnStale: StaleClosed then refuse new handshakes.
	Stale func() bool
	// OnRevocation, if set, is told of each change that revoked keys and how many live
	// conns matched it (each is then confirmed and closed). It runs on the goroutine that
	// applied the change and must be quick.
	OnRevocation func(ch revoke.Change, matched int)
	// EvictionWorkers bounds the goroutines that close evicted conns; 0 means 4×GOMAXPROCS.
	EvictionWorkers int
	// MaxHandshakes bounds the handshakes in progress; 0 means 1024. At the bound, the
	// oldest is closed to admit the new conn: a flood of clients that connect and never
	// finish their handshake cannot starve the others, whose handshakes take milliseconds.
	MaxHandshakes int
	// MaxChainLength bounds the certificates a client may present; 0 means 10. Real client
	// PKIs are three or four deep; crypto/tls bounds only the signature checks.
	MaxChainLength int
	// MaxConns bounds the conns the listener holds, in their handshake or served; 0 means
	// no bound. Set it below the process's file descriptor limit. At the bound a new conn
	// displaces the oldest served conn without a client certificate, else the oldest
	// handshake, else it is refused; and past nine tenths of it, audiences that do not
	// require a client certificate refuse new conns (reason reserved). So a flood of
	// anonymous conns cannot lock out clients with certificates.
	MaxConns int
}

type audience struct {
	Audience
	cfg *tls.Config

	// Own ticket keys, when the caller set none. crypto/tls falls back to the base config's
	// automatic keys for a GetConfigForClient config without explicit keys, which would
	// let a ticket from one audience resume on another; so each audience gets random keys,
	// rotated daily with a week of old ones kept for decryption, as crypto/tls does.
	ownKeys   bool
	keyMu     sync.Mutex
	keys      [][32]byte
	rotatedAt atomic.Int64
}

const (
	ticketKeyLifetime = 24 * time.Hour
	ticketKeysKept    = 7
)

func (a *audience) rotateTicketKeys(now time.Time) error {
	a.keyMu.Lock()
	defer a.keyMu.Unlock()
	if last := a.rotatedAt.Load(); last != 0 && now.Sub(time.Unix(0, last)) < ticketKeyLifetime {
		return nil
	}
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return err
	}
	a.keys = append([][32]byte{k}, a.keys...)
	if len(a.keys) > ticketKeysKept {
		a.keys = a.keys[:ticketKeysKept]
	}
	a.cfg.SetSessionTicketKeys(a.keys)
	a.rotatedAt.Store(now.UnixNano())
	return nil
}

// router is one generation of audiences and the SNI tables that choose among them.
type router struct {
	auds  []*audience
	exact map[string]*audience
	wild  map[string]*audience // key: the name without its first label
	def   *audience
}

// Listener is a revocation-aware TLS listener. Create one with New.
type Listener struct {
	inner    net.Listener
	set      *revoke.Set
	reg      *conntrack.Registry
	base     *tls.Config
	router   atomic.Pointer[router] // replaced whole by SetAudiences
	reloadMu sync.Mutex             // serialises SetAudiences
	clock    conntrack.Clock
	timeout  time.Duration
	keepExp  bool
	stale    func() bool
	onRev    func(revoke.Change, int)
	log      *slog.Logger
	m        *metrics
	unsub    func()

	ready     chan *tls.Conn
	done      chan struct{}
	closeOnce sync.Once
	stopOnce  sync.Once
	acceptErr error // set before done is closed

	hsMu       sync.Mutex
	handshakes map[*conntrack.Conn]*list.Element // in hsOrder, oldest first
	hsOrder    list.List
	maxHS      int
	maxChain   int
	adm        *admission
	// checked hands the keys check computed to serveHandshake, so a handshake computes
	// them once: leaf *x509.Certificate → *checkedKeys.
	checked sync.Map
	wg      sync.WaitGroup
}

// New returns a Listener over inner. It subscribes to cfg.Set at once: every revocation
// applied from now on closes the matching conns. Close stops accepting; Stop ends the
// enforcement as well, once the served conns no longer matter.
func New(inner net.Listener, cfg Config) (*Listener, error) {
	if cfg.Set == nil {
		return nil, errors.New("listener: Config.Set is required")
	}
	if len(cfg.Audiences) == 0 {
		return nil, errors.New("listener: no audiences")
	}
	l := &Listener{
		inner: inner, set: cfg.Set, clock: cfg.Clock, timeout: cfg.HandshakeTimeout,
		keepExp: cfg.KeepExpired, stale: cfg.Stale, onRev: cfg.OnRevocation, log: cfg.Logger,
		ready: make(chan *tls.Conn), done: make(chan struct{}), handshakes: map[*conntrack.Conn]*list.Element{},
		maxHS: cfg.MaxHandshakes, maxChain: cfg.MaxChainLength, adm: newAdmission(cfg.MaxConns),
	}
	if l.clock == nil {
		l.clock = conntrack.SystemClock{}
	}
	if l.timeout <= 0 {
		l.timeout = 10 * time.Second
	}
	if l.maxHS <= 0 {
		l.maxHS = 1024
	}
	if l.maxChain <= 0 {
		l.maxChain = 10
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	r, err := l.newRouter(cfg.Audiences, nil)
	if err != nil {
		return nil, err
	}
	l.router.Store(r)
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	l.m = m
	reg, err := conntrack.New(conntrack.Options{
		Confirm: confirm, Clock: l.clock, Workers: cfg.EvictionWorkers, Metrics: cfg.Metrics,
		OnEvict: l.onEvict, OnClose: l.onClose,
	})
	if err != nil {
		return nil, err
	}
	l.reg = reg
	l.base = &tls.Config{GetConfigForClient: l.route}
	l.unsub = l.set.Subscribe(l.onChange)
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

// newRouter builds a generation of audiences; nothing is changed when it fails. Audiences
// that keep their name from prev keep its session-ticket keys, so a reload does not cost
// clients their resumptions.
func (l *Listener) newRouter(auds []Audience, prev *router) (*router, error) {
	if len(auds) == 0 {
		return nil, errors.New("listener: no audiences")
	}
	r := &router{exact: map[string]*audience{}, wild: map[string]*audience{}}
	for i := range auds {
		var old *audience
		if prev != nil {
			for _, o := range prev.auds {
				if o.Name == auds[i].Name {
					old = o
				}
			}
		}
		if err := l.addAudience(r, &auds[i], old); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func (l *Listener) addAudience(r *router, a *Audience, prev *audience) error {
	if a.Name == "" {
		return errors.New("listener: an audience has no name")
	}
	for _, o := range r.auds {
		if o.Name == a.Name {
			return fmt.Errorf("listener: audience %q defined twice", a.Name)
		}
	}
	if len(a.Certificates) == 0 && (a.TLS == nil || (len(a.TLS.Certificates) == 0 && a.TLS.GetCertificate == nil)) {
		return fmt.Errorf("listener: audience %q has no server certificate", a.Name)
	}
	if a.ClientAuth >= tls.VerifyClientCertIfGiven && a.ClientCAs == nil {
		return fmt.Errorf("listener: audience %q verifies client certificates but has no client CA pool", a.Name)
	}
	if len(a.SNI) == 0 && !a.Default {
		return fmt.Errorf("listener: audience %q has no SNI names and is not the default", a.Name)
	}
	au := &audience{Audience: *a}
	r.auds = append(r.auds, au)
	for _, n := range a.SNI {
		name := strings.ToLower(strings.TrimSuffix(n, "."))
		if rest, ok := strings.CutPrefix(name, "*."); ok {
			if rest == "" || strings.Contains(rest, "*") {
				return fmt.Errorf("listener: audience %q: bad wildcard %q", a.Name, n)
			}
			if o := r.wild[rest]; o != nil {
				return fmt.Errorf("listener: SNI %q is in audiences %q and %q", n, o.Name, a.Name)
			}
			r.wild[rest] = au
			continue
		}
		if name == "" || strings.Contains(name, "*") {
			return fmt.Errorf("listener: audience %q: bad SNI name %q", a.Name, n)
		}
		if o := r.exact[name]; o != nil {
			return fmt.Errorf("listener: SNI %q is in audiences %q and %q", n, o.Name, a.Name)
		}
		r.exact[name] = au
	}
	if a.Default {
		if r.def != nil {
			return fmt.Errorf("listener: audiences %q and %q are both the default", r.def.Name, a.Name)
		}
		r.def = au
	}
	cfg := &tls.Config{}
	if a.TLS != nil {
		cfg = a.TLS.Clone()
	}
	if len(a.Certificates) > 0 {
		cfg.Certificates = a.Certificates
	}
	cfg.ClientAuth = a.ClientAuth
	cfg.ClientCAs = a.ClientCAs
	cfg.NextProtos = a.NextProtos
	if len(cfg.NextProtos) == 0 {
		cfg.NextProtos = []string{"h2", "http/1.1"}
	}
	if cfg.MinVersion == 0 {
		cfg.MinVersion = tls.VersionTLS12
	}
	cfg.Time = l.clock.Now
	au.cfg = cfg
	if len(a.SessionTicketKeys) > 0 {
		cfg.SetSessionTicketKeys(a.SessionTicketKeys)
	} else if !cfg.SessionTicketsDisabled {
		au.ownKeys = true
		if prev != nil && prev.ownKeys {
			prev.keyMu.Lock()
			au.keys = append([][32]byte(nil), prev.keys...)
			prev.keyMu.Unlock()
			au.rotatedAt.Store(prev.rotatedAt.Load())
			cfg.SetSessionTicketKeys(au.keys)
		} else if err := au.rotateTicketKeys(l.clock.Now()); err != nil {
			return fmt.Errorf("listener: audience %q: ticket keys: %w", a.Name, err)
		}
	}
	theirs := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := l.check(cs); err != nil {
			return err
		}
		if theirs != nil {
			return theirs(cs)
		}
		return nil
	}
	return nil
}

func (a *audience) isStale(listenerWide func() bool) bool {
	if a.Stale != nil {
		return a.Stale()
	}
	return listenerWide != nil && listenerWide()
}

// lookup finds the audience for an SNI name.
func (r *router) lookup(sni string) *audience {
	name := strings.ToLower(strings.TrimSuffix(sni, "."))
	if name == "" {
		return r.def
	}
	if a := r.exact[name]; a != nil {
		return a
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		return r.wild[name[i+1:]]
	}
	return nil
}

// route is the base config's GetConfigForClient: it picks the audience and records it on
// the conn.
func (l *Listener) route(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	a := l.router.Load().lookup(hello.ServerName)
	if a == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownSNI, truncate(hello.ServerName, 64))
	}
	c, tracked := hello.Conn.(*conntrack.Conn)
	if tracked {
		c.Owner().(*ConnInfo).aud = a
	}
	if a.OnStale == StaleClosed && a.isStale(l.stale) {
		return nil, ErrStale
	}
	if tracked {
		if err := l.adm.admit(c, c.Owner().(*ConnInfo), a); err != nil {
			return nil, err
		}
	}
	if a.ownKeys {
		if now := l.clock.Now(); now.UnixNano()-a.rotatedAt.Load() >= int64(ticketKeyLifetime) {
			if err := a.rotateTicketKeys(now); err != nil {
				return nil, err
			}
		}
	}
	return a.cfg, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// chainsOf returns the verified chains, or the presented certificates when the audience
// asks for a certificate without verifying it: those can still be denied by key.
func chainsOf(cs *tls.ConnectionState) [][]*x509.Certificate {
	if len(cs.VerifiedChains) > 0 {
		return cs.VerifiedChains
	}
	if len(cs.PeerCertificates) > 0 {
		return [][]*x509.Certificate{cs.PeerCertificates}
	}
	return nil
}

// check is the revocation check, run by crypto/tls on full and resumed handshakes alike
// (VerifyPeerCertificate is skipped on resumption).
func (l *Listener) check(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) > l.maxChain {
		return fmt.Errorf("%w: %d certificates, more than %d", errChainTooLong, len(cs.PeerCertificates), l.maxChain)
	}
	chains := chainsOf(&cs)
	if len(chains) == 0 {
		return nil
	}
	keys := revoke.KeysOfChains(chains)
	if e, ok := l.set.AnyOf(keys); ok {
		return fmt.Errorf("%w: %s", ErrRevoked, e.Key)
	}
	l.checked.Store(chains[0][0], &checkedKeys{chains: chains, keys: keys})
	return nil
}

// checkedKeys are the keys check computed for one handshake's chains.
type checkedKeys struct {
	chains [][]*x509.Certificate
	keys   []revoke.Key
}

// keysOf returns the keys of a finished handshake's chains: the ones check computed when
// they are this conn's (the same chains slice), else computed now. It drops check's entry.
func (l *Listener) keysOf(chains [][]*x509.Certificate) []revoke.Key {
	if len(chains) == 0 || len(chains[0]) == 0 {
		return nil
	}
	if v, ok := l.checked.Load(chains[0][0]); ok {
		ck := v.(*checkedKeys)
		if len(ck.chains) == len(chains) && &ck.chains[0] == &chains[0] {
			l.checked.CompareAndDelete(chains[0][0], v)
			return ck.keys
		}
	}
	return revoke.KeysOfChains(chains)
}

// forget drops what check left for a handshake that then failed.
func (l *Listener) forget(tc *tls.Conn) {
	cs := tc.ConnectionState()
	if chains := chainsOf(&cs); len(chains) > 0 && len(chains[0]) > 0 {
		if v, ok := l.checked.Load(chains[0][0]); ok && &v.(*checkedKeys).chains[0] == &chains[0] {
			l.checked.CompareAndDelete(chains[0][0], v)
		}
	}
}

// Accept returns the next conn whose handshake succeeded and which is tracked. It returns
// an error only once the listener is closed or the wrapped listener fails for good.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, l.acceptErr
	}
}

// Addr returns the wrapped listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Close stops accepting: it closes the wrapped listener and every conn still in its
// handshake. Accepted conns stay open, and revocations still close them, until Stop.
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		err = l.inner.Close()
		l.shut(net.ErrClosed)
		l.hsMu.Lock()
		for c := range l.handshakes {
			c.Close()
		}
		l.hsMu.Unlock()
		l.wg.Wait()
	})
	return err
}

func (l *Listener) shut(err error) {
	l.hsMu.Lock()
	defer l.hsMu.Unlock()
	select {
	case <-l.done:
	default:
		l.acceptErr = err
		close(l.done)
	}
}

// Stop closes the listener and ends revocation enforcement: it unsubscribes from the Set
// and stops the registry's workers and expiry scheduler. Conns stay open. Call it after
// the server using the listener has shut down.
func (l *Listener) Stop() {
	l.Close()
	l.stopOnce.Do(func() {
		l.unsub()
		l.reg.Close()
	})
}

// SetAudiences replaces the audiences, as a configuration reload does: new handshakes use
// the new ones at once. A conn already served stays if an audience of its audience's name
// still exists and still trusts it (its client CA pool verifies the conn's chain, and it
// does not now require a certificate the conn lacks); otherwise it is closed with reason
// "policy". An invalid set changes nothing. It returns how many conns it closed.
func (l *Listener) SetAudiences(auds []Audience) (int, error) {
	l.reloadMu.Lock()
	defer l.reloadMu.Unlock()
	r, err := l.newRouter(auds, l.router.Load())
	if err != nil {
		return 0, err
	}
	l.router.Store(r)
	// A handshake that finishes from now on sees r after it is tracked (serveHandshake);
	// one tracked before is swept here.
	n := l.reg.EvictMatching(func(c *conntrack.Conn) (string, bool) {
		info, ok := c.Owner().(*ConnInfo)
		return "", ok && info.aud != nil && !l.stillTrusted(r, info)
	}, conntrack.Cause{Reason: conntrack.ReasonPolicy})
	return n, nil
}

// stillTrusted reports whether router r would serve the conn info describes.
func (l *Listener) stillTrusted(r *router, info *ConnInfo) bool {
	var a *audience
	for _, o := range r.auds {
		if o.Name == info.aud.Name {
			a = o
		}
	}
	switch {
	case a == nil:
		return false
	case a == info.aud:
		return true
	case len(info.chains) == 0:
		return a.ClientAuth < tls.RequireAnyClientCert
	case a.ClientAuth < tls.VerifyClientCertIfGiven:
		return true
	}
	for _, ch := range info.chains {
		inter := x509.NewCertPool()
		for _, c := range ch[1:] {
			inter.AddCert(c)
		}
		_, err := ch[0].Verify(x509.VerifyOptions{Roots: a.ClientCAs, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: l.clock.Now()})
		if err == nil {
			return true
		}
	}
	return false
}

// Conns calls fn with the ConnInfo of each live tracked conn until fn returns false; fn
// runs without the registry's locks held.
func (l *Listener) Conns(fn func(*ConnInfo) bool) {
	l.reg.Range(func(c *conntrack.Conn) bool {
		info, ok := c.Owner().(*ConnInfo)
		return !ok || fn(info)
	})
}

// Registry returns the registry of live conns.
func (l *Listener) Registry() *conntrack.Registry { return l.reg }

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	var delay time.Duration
	for {
		nc, err := l.inner.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				l.shut(err)
				return
			}
			// As net/http does: a resource error (EMFILE, ECONNABORTED) is waited out,
			// never returned, so that one bad moment does not stop the server.
			l.m.acceptErrors.Inc()
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Warn("accept failed; retrying", "err", err, "delay", delay)
			select {
			case <-time.After(delay):
			case <-l.done:
				return
			}
			continue
		}
		delay = 0
		info := &ConnInfo{}
		c := l.reg.Wrap(nc, info)
		victim, full := l.adm.accept()
		if victim != nil {
			l.m.shed.WithLabelValues("anonymous").Inc()
			victim.Close()
		}
		l.hsMu.Lock()
		select {
		case <-l.done:
			l.hsMu.Unlock()
			c.Close()
			return
		default:
		}
		var shed *conntrack.Conn
		if len(l.handshakes) >= l.maxHS || (full && len(l.handshakes) > 0) {
			e := l.hsOrder.Front()
			shed = e.Value.(*conntrack.Conn)
			l.hsOrder.Remove(e)
			delete(l.handshakes, shed)
		} else if full {
			// MaxConns, and every conn is served with a certificate: the new one waits
			// for none of them.
			l.hsMu.Unlock()
			l.m.shed.WithLabelValues("refused").Inc()
			c.Close()
			continue
		}
		l.handshakes[c] = l.hsOrder.PushBack(c)
		l.wg.Add(1)
		l.hsMu.Unlock()
		if shed != nil {
			shed.Close() // its handshake fails and is counted as "shed"
		}
		go l.serveHandshake(c, info)
	}
}

// endHandshake unregisters c's handshake; shed reports that the accept loop had already
// dropped it to admit a newer conn.
func (l *Listener) endHandshake(c *conntrack.Conn) (shed bool) {
	l.hsMu.Lock()
	defer l.hsMu.Unlock()
	e, ok := l.handshakes[c]
	if ok {
		delete(l.handshakes, c)
		l.hsOrder.Remove(e)
	}
	return !ok
}

func (l *Listener) serveHandshake(c *conntrack.Conn, info *ConnInfo) {
	defer l.wg.Done()
	tc := tls.Server(c, l.base)
	c.SetDeadline(time.Now().Add(l.timeout))
	err := tc.Handshake()
	if l.endHandshake(c) && err != nil {
		err = errShed
	}
	if err != nil {
		l.forget(tc)
		l.refuse(c, info, err)
		return
	}
	c.SetDeadline(time.Time{})
	cs := tc.ConnectionState()
	info.chains = chainsOf(&cs)
	info.serverName = cs.ServerName
	keys := l.keysOf(info.chains)
	strs := make([]string, len(keys))
	for i, k := range keys {
		strs[i] = string(k)
	}
	var notAfter time.Time
	if !l.keepExp {
		notAfter = expiry(info.chains)
	}
	if err := l.reg.Track(c, strs, notAfter); err != nil {
		return // closed during the handshake's last moments
	}
	// Track inserted first; a revocation applied before the insert was missed by its
	// Evict but is in the Set now. Likewise a reload's sweep, for the audiences.
	if e, ok := l.set.AnyOf(keys); ok {
		l.refuse(c, info, fmt.Errorf("%w: %s (revoked during the handshake)", ErrRevoked, e.Key))
		return
	}
	if !l.stillTrusted(l.router.Load(), info) {
		l.refuse(c, info, errPolicy)
		return
	}
	if !notAfter.IsZero() && l.clock.Now().After(notAfter) {
		l.refuse(c, info, errors.New("listener: certificate expired during the handshake"))
		return
	}
	l.adm.served(c, info)
	result := "full"
	if cs.DidResume {
		result = "resumed"
	}
	l.m.handshakes.WithLabelValues(info.aud.Name, result).Inc()
	select {
	case l.ready <- tc:
	case <-l.done:
		c.Close()
	}
}

// expiry is when the conn stops being valid: the latest, over its verified chains, of
// each chain's earliest NotAfter.
func expiry(chains [][]*x509.Certificate) time.Time {
	var best time.Time
	for _, ch := range chains {
		var first time.Time
		for _, c := range ch {
			if first.IsZero() || c.NotAfter.Before(first) {
				first = c.NotAfter
			}
		}
		if first.After(best) {
			best = first
		}
	}
	return best
}

func (l *Listener) refuse(c *conntrack.Conn, info *ConnInfo, err error) {
	reason := classify(err)
	aud := ""
	if info.aud != nil {
		aud = info.aud.Name
	}
	l.m.failures.WithLabelValues(reason).Inc()
	c.Close()
	l.log.Debug("handshake refused", "reason", reason, "audience", aud, "remote", c.RemoteAddr().String(), "err", err)
}

func classify(err error) string {
	var rh tls.RecordHeaderError
	switch {
	case errors.Is(err, ErrRevoked):
		return "revoked"
	case errors.Is(err, ErrUnknownSNI):
		return "unknown_sni"
	case errors.Is(err, ErrStale):
		return "stale"
	case errors.Is(err, errPolicy):
		return "policy"
	case errors.Is(err, errShed):
		return "shed"
	case errors.Is(err, errChainTooLong):
		return "chain_too_long"
	case errors.Is(err, errAudienceFull):
		return "audience_full"
	case errors.Is(err, errClientFull):
		return "client_full"
	case errors.Is(err, errReserved):
		return "reserved"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	case errors.As(err, &rh):
		return "not_tls"
	case errors.Is(err, net.ErrClosed):
		return "closed"
	}
	var ce *tls.CertificateVerificationError
	if errors.As(err, &ce) || strings.Contains(err.Error(), "certificate") {
		return "bad_certificate"
	}
	return "tls_error"
}

func confirm(c *conntrack.Conn, key string) bool {
	info, ok := c.Owner().(*ConnInfo)
	return ok && revoke.Matches(info.chains, revoke.Key(key))
}

func (l *Listener) onChange(ch revoke.Change) {
	if len(ch.Added) == 0 && !ch.Sweep {
		return
	}
	cause := conntrack.Cause{Reason: conntrack.ReasonRevoked, Since: time.Now()}
	n := 0
	if len(ch.Added) > 0 {
		keys := make([]string, len(ch.Added))
		for i, e := range ch.Added {
			keys[i] = string(e.Key)
		}
		n = l.reg.Evict(keys, cause)
	}
	if ch.Sweep {
		n += l.sweep(cause)
	}
	if l.onRev != nil {
		l.onRev(ch, n)
	}
}

// sweep re-checks the serial and keyserial keys of every live conn against the Set: a change
// revoked more serials (a CRL's first load) than it could list. A CRL's list answers
// keyserial keys only, which need each certificate's issuer from the chain; the Sweeper
// derives them and caches the issuers' hashes.
func (l *Listener) sweep(cause conntrack.Cause) int {
	sw := l.set.Sweeper()
	return l.reg.EvictMatching(func(c *conntrack.Conn) (string, bool) {
		info, ok := c.Owner().(*ConnInfo)
		if !ok {
			return "", false
		}
		k, ok := sw.Revoked(info.chains)
		return string(k), ok
	}, cause)
}

func (l *Listener) onEvict(e conntrack.Eviction) {
	if !l.log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	info, _ := e.Conn.Owner().(*ConnInfo)
	aud := ""
	if info != nil && info.aud != nil {
		aud = info.aud.Name
	}
	l.log.Info("conn evicted", "key", e.Key, "reason", e.Reason, "audience", aud,
		"remote", e.Conn.RemoteAddr().String(), "age", time.Since(e.Conn.Since()).Round(time.Millisecond),
		"latency", e.Latency)
}

// ConnInfo is what the listener knows of a conn: its audience and verified client chains.
type ConnInfo struct {
	aud        *audience
	chains     [][]*x509.Certificate
	serverName string

	adm  *list.Element // admission's, under its lock: see admittedMark
	idle atomic.Pointer[idleTimer]
}

// onClose uncounts a conn and stops its idle timer.
func (l *Listener) onClose(c *conntrack.Conn) {
	info, ok := c.Owner().(*ConnInfo)
	if !ok {
		return
	}
	l.adm.closed(c, info)
	info.idle.Load().stop()
}

// Audience returns the name of the audience that served the conn.
func (i *ConnInfo) Audience() string {
	if i.aud == nil {
		return ""
	}
	return i.aud.Name
}

// ServerName returns the SNI the client sent.
func (i *ConnInfo) ServerName() string { return i.serverName }

// Chains returns the client's verified chains (or its unverified certificates, for an
// audience that does not verify them); nil without a client certificate.
func (i *ConnInfo) Chains() [][]*x509.Certificate { return i.chains }

// Leaf returns the client certificate, or nil.
func (i *ConnInfo) Leaf() *x509.Certificate {
	if len(i.chains) == 0 || len(i.chains[0]) == 0 {
		return nil
	}
	return i.chains[0][0]
}

// Keys returns every revocation key that would close this conn.
func (i *ConnInfo) Keys() []revoke.Key { return revoke.KeysOfChains(i.chains) }

type ctxKey struct{}

// ConnContext is for http.Server.ConnContext: it puts the conn's ConnInfo in the context
// of every request on it, for FromContext.
func (l *Listener) ConnContext(ctx context.Context, c net.Conn) context.Context {
	if info, ok := FromConn(c); ok {
		return context.WithValue(ctx, ctxKey{}, info)
	}
	return ctx
}

// FromContext returns the ConnInfo that ConnContext stored.
func FromContext(ctx context.Context) (*ConnInfo, bool) {
	info, ok := ctx.Value(ctxKey{}).(*ConnInfo)
	return info, ok
}

// FromConn returns the ConnInfo of a conn that a Listener accepted.
func FromConn(c net.Conn) (*ConnInfo, bool) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		return nil, false
	}
	raw, ok := tc.NetConn().(*conntrack.Conn)
	if !ok {
		return nil, false
	}
	info, ok := raw.Owner().(*ConnInfo)
	return info, ok
}

type metrics struct {
	handshakes   *prometheus.CounterVec
	failures     *prometheus.CounterVec
	acceptErrors prometheus.Counter
	shed         *prometheus.CounterVec
	idleClosed   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_handshakes_total", Help: "Handshakes completed and tracked, by audience and kind (full, resumed).",
		}, []string{"audience", "kind"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_handshake_failures_total", Help: "Handshakes refused or failed, by reason.",
		}, []string{"reason"}),
		acceptErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "guardian_accept_errors_total", Help: "Errors from the wrapped listener's Accept, each retried.",
		}),
		shed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_conns_shed_total",
			Help: "Conns closed or refused at max_conns, by kind: anonymous (a served conn without a client certificate, closed to make room), refused (a new conn, with every slot held by a certificate).",
		}, []string{"kind"}),
		idleClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_conns_idle_closed_total", Help: "Conns closed after their audience's idle_timeout without a request, by audience.",
		}, []string{"audience"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.handshakes, m.failures, m.acceptErrors, m.shed, m.idleClosed} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("listener: register metrics: %w", err)
			}
		}
	}
	return m, nil
}
