package listener

import (
	"container/list"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/clock"
	"github.com/guardian-mtls/guardian/conntrack"
	"github.com/guardian-mtls/guardian/internal/ratelog"
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
	// ErrNotAllowed is a verified client the audience's Allow policy does not admit.
	ErrNotAllowed = errors.New("listener: this client is not in the audience's allow policy")
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
	// Allow, if set, admits only the clients whose verified chain it matches; the others
	// are refused in the handshake (reason not_allowed), full and resumed alike, and a
	// reload that narrows it closes the live conns it no longer admits (reason policy).
	Allow *Policy
	// SessionTicketKeys, if set, are this audience's ticket keys (first one encrypts). If
	// nil, crypto/tls rotates keys of its own for this audience alone, so a ticket issued
	// for one audience never resumes a session on another.
	SessionTicketKeys [][32]byte
	// NextProtos are the ALPN protocols offered; nil means h2 and http/1.1, an empty,
	// non-nil slice none. A gRPC server needs h2; a raw TCP protocol names its own (e.g.
	// "mqtt") or none. A client that offers protocols, none of them these, is refused in
	// the handshake.
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
	// MaxConnLifetime, if set, ends every conn this old, so that each client handshakes —
	// and is checked — again at least this often: from then on an HTTP conn's responses
	// carry Connection: close (HTTP/2: a GOAWAY) and it is closed once idle; any conn still
	// open LifetimeGrace later is cut (reason lifetime). Give HTTP audiences a grace for
	// in-flight requests to finish (Progress and ConnState must be in use); a raw TCP
	// audience has no graceful end.
	MaxConnLifetime time.Duration
	LifetimeGrace   time.Duration
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
	Clock clock.Clock
	// Metrics, if set, receives the listener's metrics. Listeners sharing one Registerer
	// count into the same metrics.
	Metrics prometheus.Registerer
	Logger  *slog.Logger
	// Stale, if set, reports whether the revocation data is stale (its source unheard
	// for too long); audiences with OnStale: StaleClosed then refuse new handshakes.
	Stale func() bool
	// OnRevocation, if set, is told of each change that revoked keys and how many live
	// conns matched it (each is then confirmed and closed). It runs on the goroutine that
	// applied the change and must be quick.
	OnRevocation func(ch revoke.Change, matched int)
	// OnVerified, if set, is given each handshake's audience and verified client chains
	// before the revocation check, on the handshake's goroutine: crl.Applier.Learn takes the
	// intermediates from it, so that a CRL signed by one applies before the first client it
	// revokes is served. An error refuses the handshake (give it a reason with Refusal). It
	// must be quick, or bounded.
	OnVerified func(audience string, chains [][]*x509.Certificate) error
	// OnEvict, if set, is told of each conn the listener closed for a reason of its own —
	// a revocation, an expiry, a reload that no longer trusts it (policy), Shutdown, or
	// CloseConn (manual) — once the conn is closed. It runs on an eviction worker and must
	// be quick.
	OnEvict func(Eviction)
	// EvictionWorkers bounds the goroutines that close evicted conns; 0 means 4×GOMAXPROCS.
	EvictionWorkers int
	// MaxHandshakes bounds the conns in their handshake and those handshaken but not yet
	// taken by Accept; 0 means 1024. At the bound, the oldest handshake (else the oldest
	// conn waiting for Accept) is closed to admit the new conn: a flood of clients that
	// connect and never finish their handshake cannot starve the others, whose handshakes
	// take milliseconds.
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

// RefusalError is a handshake refused by a hook of the embedder's (OnVerified), with the
// reason counted and logged for it.
type RefusalError struct {
	Reason string
	Err    error
}

func (e *RefusalError) Error() string { return e.Err.Error() }
func (e *RefusalError) Unwrap() error { return e.Err }

// Refusal is err, to be counted as a refusal with reason (e.g. crl_unavailable).
func Refusal(reason string, err error) error { return &RefusalError{Reason: reason, Err: err} }

// Listener is a revocation-aware TLS listener. Create one with New.
type Listener struct {
	inner    net.Listener
	set      *revoke.Set
	reg      *conntrack.Registry
	base     *tls.Config
	router   atomic.Pointer[router] // replaced whole by SetAudiences
	reloadMu sync.Mutex             // serialises SetAudiences
	clock    clock.Clock
	timeout  time.Duration
	keepExp  bool
	stale    func() bool
	onRev    func(revoke.Change, int)
	onEv     func(Eviction)
	onVer    func(string, [][]*x509.Certificate) error
	log      *slog.Logger
	// refusedLog is log rate-limited per message, for refused handshakes.
	refusedLog *slog.Logger
	m          *metrics
	unsub      func()
	nextID     atomic.Uint64

	done      chan struct{} // closed by Close: no more Accept
	closeOnce sync.Once
	acceptErr error       // set before done is closed
	drained   atomic.Bool // Close has returned: no conn will be tracked any more
	endOnce   sync.Once
	ended     chan struct{} // closed once enforcement has ended

	hsMu       sync.Mutex
	handshakes map[*conntrack.Conn]*list.Element // in hsOrder, oldest first
	hsOrder    list.List
	queue      list.List     // *tls.Conn handshaken and tracked, for Accept, oldest first
	queued     chan struct{} // 1-buffered: the queue may hold conns
	maxHS      int
	maxChain   int
	adm        *admission
	wg         sync.WaitGroup
}

// New returns a Listener over inner. It subscribes to cfg.Set at once: every revocation
// applied from now on closes the matching conns, until the listener is closed and its last
// conn is gone (or Shutdown).
func New(inner net.Listener, cfg Config) (*Listener, error) {
	if cfg.Set == nil {
		return nil, errors.New("listener: Config.Set is required")
	}
	if len(cfg.Audiences) == 0 {
		return nil, errors.New("listener: no audiences")
	}
	l := &Listener{
		inner: inner, set: cfg.Set, clock: cfg.Clock, timeout: cfg.HandshakeTimeout,
		keepExp: cfg.KeepExpired, stale: cfg.Stale, onRev: cfg.OnRevocation, onEv: cfg.OnEvict, onVer: cfg.OnVerified, log: cfg.Logger,
		done: make(chan struct{}), ended: make(chan struct{}), queued: make(chan struct{}, 1),
		handshakes: map[*conntrack.Conn]*list.Element{},
		maxHS:      cfg.MaxHandshakes, maxChain: cfg.MaxChainLength, adm: newAdmission(cfg.MaxConns),
	}
	l.clock = clock.Or(l.clock)
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
	l.refusedLog = ratelog.Logger(l.log, 10, time.Second)
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

// Addr returns the wrapped listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Close stops accepting: it closes the wrapped listener, every conn still in its handshake
// and every conn Accept has not taken. The conns already accepted stay open, and
// revocations still close them; once the last of them is closed, the listener ends its
// enforcement (its Set subscription, eviction workers and expiry scheduler) by itself.
// http.Server.Serve calls Close; http.Server.Shutdown and Close then close the conns the
// server knows. Close is idempotent.
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		err = l.inner.Close()
		l.shut(net.ErrClosed)
		l.hsMu.Lock()
		for c := range l.handshakes {
			c.Close()
		}
		var waiting []*tls.Conn
		for e := l.queue.Front(); e != nil; e = e.Next() {
			waiting = append(waiting, e.Value.(*tls.Conn))
		}
		l.queue.Init()
		l.hsMu.Unlock()
		for _, tc := range waiting {
			tc.NetConn().Close()
		}
		l.wg.Wait()
		l.drained.Store(true)
		l.maybeEnd()
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

// Shutdown closes the listener, waits until every conn it served has closed or ctx ends,
// then closes those still open (reason shutdown) and returns once enforcement has ended.
// Call it after http.Server.Shutdown, for the conns the server no longer knows (hijacked
// WebSockets, or conns handed to another protocol). It returns ctx's error if it had to
// close conns.
func (l *Listener) Shutdown(ctx context.Context) error {
	l.Close()
	select {
	case <-l.ended:
		return nil
	case <-ctx.Done():
	}
	l.reg.EvictAll(conntrack.Cause{Reason: conntrack.ReasonShutdown})
	<-l.ended
	return ctx.Err()
}

// maybeEnd ends enforcement once the listener is closed and holds no conn.
func (l *Listener) maybeEnd() {
	if l.drained.Load() && l.reg.Len() == 0 {
		// Not on this goroutine: it may be an eviction worker, which reg.Close waits for.
		l.endOnce.Do(func() { go l.end() })
	}
}

func (l *Listener) end() {
	l.unsub()
	l.reg.Close()
	close(l.ended)
}

// Done is closed once the listener has ended its enforcement: it is closed, and its last
// conn is gone.
func (l *Listener) Done() <-chan struct{} { return l.ended }

// Len returns the number of live conns the listener has served.
func (l *Listener) Len() int { return l.reg.Len() }
