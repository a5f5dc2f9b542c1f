package crl

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/clock"
	"github.com/guardian-mtls/guardian/revoke"
)

// DefaultMaxSize caps a CRL read from a file, a URL or Redis.
const DefaultMaxSize = 128 << 20

// Sentinel errors of a refused CRL, checked with errors.Is.
var (
	ErrUntrusted = errors.New("crl: no trusted CA issued this CRL")
	// ErrPending is a CRL whose issuer no configured CA is and no client has presented
	// yet: it is held, and applied once a verified chain shows that issuer (Learn).
	ErrPending  = fmt.Errorf("%w yet", ErrUntrusted)
	ErrFuture   = errors.New("crl: thisUpdate is in the future")
	ErrRollback = errors.New("crl: older than the CRL already applied")
	ErrTooLarge = errors.New("crl: larger than the size cap")
)

// Options configures an Applier.
type Options struct {
	// Set receives each issuer's CRL as a serial list. Required.
	Set *revoke.Set
	// Issuers are the CA certificates whose CRLs may be applied: a CRL is applied only if
	// the certificate whose subject is its issuer signed it. Intermediates that clients
	// present are learned besides (Learn).
	Issuers []*x509.Certificate
	// MaxSkew is how far in the future a CRL's thisUpdate may lie (the CA's clock running
	// ahead of this node's); 0 means one minute.
	MaxSkew time.Duration
	// Clock is the time source; nil means the real clock.
	Clock   clock.Clock
	Logger  *slog.Logger
	Metrics prometheus.Registerer
}

// Applier checks CRLs and applies each, as a diff against the one it replaces, to a Set.
// It is the only way a CRL reaches the Set, whichever source (file, URL, Redis) read it.
type Applier struct {
	set     *revoke.Set
	issuers atomic.Pointer[map[string][]*x509.Certificate] // by RawSubject; replaced by SetIssuers
	// learned are the CAs seen in clients' verified chains, by RawSubject: an intermediate
	// that chains to a configured CA is trusted for its CRLs as that CA is. Copied on
	// write: read on every handshake, written once per new CA.
	learned atomic.Pointer[map[string][]*x509.Certificate]
	learnMu sync.Mutex
	pending map[string]pendingCRL // by the CRL's RawIssuer, under mu: waiting for their issuer
	skew    time.Duration
	now     func() time.Time
	log     *slog.Logger
	m       *applierMetrics

	mu      sync.Mutex // serialises Apply; guards applied
	applied map[string]*Applied
}

// Applied describes the CRL in force for one list ID: one CA key's (and scope's) latest.
type Applied struct {
	ID     string
	Issuer string // SHA-256 of the issuer DN, hex
	// IssuerKey is the SHA-256 (hex) of the SubjectPublicKeyInfo of the key that verified
	// the CRL: two CAs of one DN (or one CA's old and new keys) each have their own CRL.
	IssuerKey  string
	Subject    string // the issuer's DN, for people
	Number     *big.Int
	ThisUpdate time.Time
	NextUpdate time.Time
	Entries    int
	Origin     string // where it was read: a file, a URL, "redis"
	AppliedAt  time.Time
	// Signer is the CA certificate whose signature the CRL carries.
	Signer *x509.Certificate `json:"-"`
	raw    []byte
}

// Result says what one Apply did.
type Result struct {
	Applied
	Added, Removed int
	Sweep          bool // more serials were added than listed: subscribers re-check live conns
	Unchanged      bool // the same CRL (or the same number) was applied already
}

// NewApplier returns an Applier for opts.
func NewApplier(opts Options) (*Applier, error) {
	if opts.Set == nil {
		return nil, errors.New("crl: Options.Set is required")
	}
	a := &Applier{set: opts.Set, skew: opts.MaxSkew, now: clock.Or(opts.Clock).Now, log: opts.Logger, applied: map[string]*Applied{},
		pending: map[string]pendingCRL{}}
	a.learned.Store(&map[string][]*x509.Certificate{})
	if a.skew <= 0 {
		a.skew = time.Minute
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	a.SetIssuers(opts.Issuers)
	m, err := newApplierMetrics(opts.Metrics, a)
	if err != nil {
		return nil, err
	}
	a.m = m
	return a, nil
}

// SetIssuers replaces the CA certificates whose CRLs may be applied, as a configuration
// reload does. CRLs already applied stay in force: they can only deny more.
func (a *Applier) SetIssuers(issuers []*x509.Certificate) {
	m := map[string][]*x509.Certificate{}
	for _, c := range issuers {
		m[string(c.RawSubject)] = append(m[string(c.RawSubject)], c)
	}
	a.issuers.Store(&m)
}

// Apply checks the CRL in b (DER or PEM), read from origin, and applies it. A refused CRL
// changes nothing: the last good one stays in force. Every refusal is logged and counted.
func (a *Applier) Apply(b []byte, origin string) (Result, error) {
	res, err := a.apply(b, origin)
	if errors.Is(err, ErrPending) {
		a.m.refused.WithLabelValues("pending").Inc()
		a.log.Warn("CRL held until a client presents its issuer; until then its audiences count as stale", "origin", origin, "err", err)
		return res, err
	}
	if err != nil {
		a.m.refused.WithLabelValues(refusal(err)).Inc()
		a.log.Error("CRL refused; the last good one stays in force", "origin", origin, "err", err)
		return res, err
	}
	if res.Unchanged {
		a.m.loads.WithLabelValues("unchanged").Inc()
		return res, nil
	}
	a.m.loads.WithLabelValues("applied").Inc()
	a.log.Info("CRL applied", "origin", origin, "issuer", res.Subject, "number", numberString(res.Number),
		"entries", res.Entries, "added", res.Added, "removed", res.Removed, "next_update", res.NextUpdate)
	return res, nil
}

func refusal(err error) string {
	switch {
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrUntrusted):
		return "untrusted"
	case errors.Is(err, ErrSignature):
		return "signature"
	case errors.Is(err, ErrFuture):
		return "future"
	case errors.Is(err, ErrRollback):
		return "rollback"
	case errors.Is(err, ErrTooLarge):
		return "too_large"
	}
	return "unusable"
}

func (a *Applier) apply(b []byte, origin string) (Result, error) {
	if len(b) > DefaultMaxSize {
		return Result{}, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(b))
	}
	c, err := Parse(b)
	if err != nil {
		return Result{}, err
	}
	var signer *x509.Certificate
	var sigErrs []error
	candidates := append(slices.Clip((*a.issuers.Load())[string(c.RawIssuer)]), (*a.learned.Load())[string(c.RawIssuer)]...)
	for _, ca := range candidates {
		if err := c.CheckSignatureFrom(ca); err != nil {
			sigErrs = append(sigErrs, err)
			continue
		}
		signer = ca
		break
	}
	if signer == nil {
		if len(sigErrs) > 0 {
			return Result{}, errors.Join(sigErrs...)
		}
		a.hold(c, b, origin)
		return Result{}, fmt.Errorf("%w: its issuer %q is none of the configured CAs, and no client has presented it; the CRL is held and applied once a client's verified chain shows that CA — or list the CA's certificate in revocation.crl_issuers (or a client_ca bundle)", ErrPending, dnString(c.RawIssuer))
	}
	a.mu.Lock()
	delete(a.pending, string(c.RawIssuer))
	a.mu.Unlock()
	now := a.now()
	if c.ThisUpdate.After(now.Add(a.skew)) {
		return Result{}, fmt.Errorf("%w: %s, and this node's clock says %s", ErrFuture, c.ThisUpdate.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if !c.NextUpdate.IsZero() && c.NextUpdate.Before(c.ThisUpdate) {
		return Result{}, fmt.Errorf("%w: nextUpdate %s is before thisUpdate %s", ErrMalformed, c.NextUpdate.Format(time.RFC3339), c.ThisUpdate.Format(time.RFC3339))
	}
	_, id := names(c, revoke.SPKIHash(signer.RawSubjectPublicKeyInfo))

	a.mu.Lock()
	defer a.mu.Unlock()
	prev := a.applied[id]
	if prev != nil {
		if unchanged, err := newer(prev, c); err != nil || unchanged {
			if unchanged {
				if !bytes.Equal(prev.raw, c.Raw) {
					a.log.Warn("a CRL with the number already applied but other content; keeping the applied one",
						"origin", origin, "issuer", prev.Subject, "number", numberString(c.Number))
				}
				return Result{Applied: *prev, Unchanged: true}, nil
			}
			return Result{}, err
		}
	}
	t, err := newTable(c, signer)
	if err != nil {
		return Result{}, err
	}
	// Only an Applier puts lists under "crl:" IDs, and it holds mu.
	var oldList revoke.SerialList
	old, _ := a.set.List(id).(*Table)
	d := Diff(old, t)
	if old != nil {
		oldList = old
	}
	if _, err := a.set.SwapList(oldList, t, d); err != nil {
		return Result{}, err
	}
	ap := &Applied{ID: id, Issuer: t.Issuer(), IssuerKey: t.IssuerKey(), Subject: dnString(c.RawIssuer), Number: c.Number,
		ThisUpdate: c.ThisUpdate, NextUpdate: c.NextUpdate, Entries: t.Len(), Origin: origin, AppliedAt: now, Signer: signer, raw: c.Raw}
	a.applied[id] = ap
	return Result{Applied: *ap, Added: len(d.Added), Removed: len(d.Removed), Sweep: d.Sweep}, nil
}

// newer tells whether c may replace prev: an error for a rollback, unchanged for the same
// CRL again.
func newer(prev *Applied, c *CRL) (unchanged bool, err error) {
	switch {
	case prev.Number != nil && c.Number == nil:
		return false, fmt.Errorf("%w: it has no CRL number, and the applied one has number %s", ErrRollback, prev.Number)
	case prev.Number != nil:
		switch c.Number.Cmp(prev.Number) {
		case -1:
			return false, fmt.Errorf("%w: CRL number %s is lower than the applied %s", ErrRollback, c.Number, prev.Number)
		case 0:
			return true, nil
		}
		return false, nil
	case c.ThisUpdate.Before(prev.ThisUpdate):
		return false, fmt.Errorf("%w: thisUpdate %s is before the applied CRL's %s", ErrRollback,
			c.ThisUpdate.Format(time.RFC3339), prev.ThisUpdate.Format(time.RFC3339))
	case c.ThisUpdate.Equal(prev.ThisUpdate) && bytes.Equal(c.Raw, prev.raw):
		return true, nil
	}
	return false, nil
}

// Applied returns the CRLs in force, by list ID.
func (a *Applier) Applied() []Applied {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Applied, 0, len(a.applied))
	for _, ap := range a.applied {
		out = append(out, *ap)
	}
	return out
}

// Stale returns the applied CRLs whose nextUpdate has passed: the issuer has published a
// newer one that this node does not have. A CRL whose key no configured issuer holds any
// more is left out (it stays in force): once a key rollover is done and the old CA
// certificate is removed, the old key publishes no more CRLs, and its last one going past
// its nextUpdate is no reason to be stale.
func (a *Applier) Stale() []Applied {
	now := a.now()
	issuers, learned := *a.issuers.Load(), *a.learned.Load()
	var out []Applied
	for _, ap := range a.Applied() {
		if !ap.NextUpdate.IsZero() && now.After(ap.NextUpdate) && (holds(issuers, ap) || holds(learned, ap)) {
			out = append(out, ap)
		}
	}
	return out
}

// holds reports whether a configured issuer has the DN and key that verified ap.
func holds(issuers map[string][]*x509.Certificate, ap Applied) bool {
	for _, c := range issuers[string(ap.Signer.RawSubject)] {
		if revoke.SPKIHash(c.RawSubjectPublicKeyInfo) == ap.IssuerKey {
			return true
		}
	}
	return false
}

func numberString(n *big.Int) string {
	if n == nil {
		return "none"
	}
	return n.String()
}

// IssuerString is the CRL issuer's DN in RFC 4514 form.
func (c *CRL) IssuerString() string { return dnString(c.RawIssuer) }

func dnString(raw []byte) string {
	var seq pkix.RDNSequence
	if rest, err := asn1.Unmarshal(raw, &seq); err == nil && len(rest) == 0 {
		return seq.String()
	}
	return fmt.Sprintf("%x", raw)
}

// fetchFailed logs and counts a source that could not read its CRL.
func (a *Applier) fetchFailed(origin, kind string, err error) error {
	a.m.fetchErrors.WithLabelValues(kind).Inc()
	a.log.Warn("reading a CRL failed; the last good one stays in force", "origin", origin, "err", err)
	return fmt.Errorf("crl: read %s: %w", origin, err)
}

type applierMetrics struct {
	loads       *prometheus.CounterVec
	refused     *prometheus.CounterVec
	fetchErrors *prometheus.CounterVec
}

func newApplierMetrics(reg prometheus.Registerer, a *Applier) (*applierMetrics, error) {
	m := &applierMetrics{
		loads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_crl_loads_total", Help: "CRLs read and accepted, by result (applied, unchanged).",
		}, []string{"result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_crl_refused_total", Help: "CRLs refused, by reason; the last good CRL stays in force.",
		}, []string{"reason"}),
		fetchErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_crl_fetch_errors_total", Help: "Failures to read a CRL source, by kind (file, url).",
		}, []string{"kind"}),
	}
	if reg == nil {
		return m, nil
	}
	stale := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "guardian_crl_stale", Help: "Applied CRLs past their nextUpdate.",
	}, func() float64 { return float64(len(a.Stale())) })
	pending := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "guardian_crl_pending", Help: "CRLs held until a client presents their issuer (an intermediate no configured CA is); their audiences count as stale.",
	}, func() float64 { return float64(len(a.Pending())) })
	for _, c := range []prometheus.Collector{m.loads, m.refused, m.fetchErrors, stale, pending} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("crl: register metrics: %w", err)
		}
	}
	return m, nil
}

// Bounds on what a node keeps for CRLs of issuers it has not seen: a verified chain can only
// show CAs a configured CA vouches for, and CRLs come from the configuration's sources, but
// neither should grow without bound.
const (
	maxLearned = 10000
	maxPending = 64
)

// pendingCRL is a CRL waiting for its issuer.
type pendingCRL struct {
	der     []byte
	origin  string
	subject string
	at      time.Time
}

// Pending describes a CRL held until a client presents its issuer.
type Pending struct {
	Origin string
	Issuer string // the CRL issuer's DN
	Since  time.Time
}

// hold keeps the CRL c (read as der from origin) until its issuer is learned; a later CRL
// of the same issuer replaces it.
func (a *Applier) hold(c *CRL, der []byte, origin string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := string(c.RawIssuer)
	if _, ok := a.pending[k]; !ok && len(a.pending) >= maxPending {
		return // refused, not held: the error still says what to configure
	}
	a.pending[k] = pendingCRL{der: slices.Clone(der), origin: origin, subject: dnString(c.RawIssuer), at: a.now()}
}

// Pending returns the CRLs held until a client presents their issuer.
func (a *Applier) Pending() []Pending {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Pending, 0, len(a.pending))
	for _, p := range a.pending {
		out = append(out, Pending{Origin: p.origin, Issuer: p.subject, Since: p.at})
	}
	slices.SortFunc(out, func(x, y Pending) int { return strings.Compare(x.Origin, y.Origin) })
	return out
}

// InForce reports whether a CRL read from origin is in force.
func (a *Applier) InForce(origin string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ap := range a.applied {
		if ap.Origin == origin {
			return true
		}
	}
	return false
}

// Learn takes note of the CA certificates in a client's verified chains — intermediates,
// which client_ca need not list, and their roots — as issuers whose CRLs may be applied:
// each chains to a CA the audience trusts. A CRL held for one of them is applied at once,
// before Learn returns, so that when the listener calls Learn ahead of its revocation
// check (listener.Config.OnVerified) the first client a held CRL revokes is refused. It
// costs a map lookup per CA certificate when they are known.
func (a *Applier) Learn(chains [][]*x509.Certificate) {
	var fresh []*x509.Certificate
	for _, ch := range chains {
		for _, c := range ch[min(1, len(ch)):] {
			if !a.knows(c) && !slices.Contains(fresh, c) {
				fresh = append(fresh, c)
			}
		}
	}
	if len(fresh) == 0 {
		return
	}
	a.learnMu.Lock()
	old := *a.learned.Load()
	next := make(map[string][]*x509.Certificate, len(old)+len(fresh))
	n := 0
	for k, v := range old {
		next[k] = v
		n += len(v)
	}
	var added []*x509.Certificate
	for _, c := range fresh {
		if n >= maxLearned || slices.ContainsFunc(next[string(c.RawSubject)], c.Equal) {
			continue
		}
		next[string(c.RawSubject)] = append(slices.Clip(next[string(c.RawSubject)]), c)
		added = append(added, c)
		n++
	}
	a.learned.Store(&next)
	a.learnMu.Unlock()
	for _, c := range added {
		a.log.Info("CRL issuer learned from a client's verified chain", "issuer", c.Subject.String())
		a.mu.Lock()
		p, ok := a.pending[string(c.RawSubject)]
		a.mu.Unlock()
		if ok {
			a.Apply(p.der, p.origin) // logs and counts its result; applied, it leaves pending
		}
	}
}

// knows reports whether c is a configured or learned issuer.
func (a *Applier) knows(c *x509.Certificate) bool {
	return slices.ContainsFunc((*a.issuers.Load())[string(c.RawSubject)], c.Equal) ||
		slices.ContainsFunc((*a.learned.Load())[string(c.RawSubject)], c.Equal)
}
