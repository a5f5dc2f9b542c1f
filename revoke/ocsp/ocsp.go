package ocsp

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	xocsp "golang.org/x/crypto/ocsp"

	"github.com/guardian-mtls/guardian/clock"
	"github.com/guardian-mtls/guardian/revoke"
)

// Mode is what an audience does with OCSP.
type Mode int

const (
	// Off asks no responder.
	Off Mode = iota
	// Soft refuses a certificate the responder says is revoked; an unreachable or unusable
	// responder lets the handshake through (counted).
	Soft
	// Hard also refuses when no good answer can be had.
	Hard
)

// ParseMode reads off, soft or hard.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", "off":
		return Off, nil
	case "soft":
		return Soft, nil
	case "hard":
		return Hard, nil
	}
	return Off, fmt.Errorf("ocsp: mode %q; want off, soft or hard", s)
}

func (m Mode) String() string { return [...]string{"off", "soft", "hard"}[m] }

// Status is a certificate's OCSP status as the Checker knows it.
type Status int

const (
	// Unavailable: no usable answer (no responder, a timeout, an error, a bad response).
	Unavailable Status = iota
	Good
	Revoked
	// Unknown: the responder does not know the certificate.
	Unknown
)

func (s Status) String() string { return [...]string{"unavailable", "good", "revoked", "unknown"}[s] }

// Result is one certificate's status.
type Result struct {
	Status     Status
	Reason     revoke.Reason // when revoked
	RevokedAt  time.Time
	ThisUpdate time.Time
	NextUpdate time.Time
	// Err says why the status is Unavailable.
	Err error
}

// ErrNotGood is wrapped by the handshake check's refusals.
var ErrNotGood = errors.New("ocsp: client certificate status is not good")

// Options configures a Checker.
type Options struct {
	// Set receives a revoked answer as a keyserial entry with source "ocsp", which closes the
	// certificate's live conns. Required.
	Set *revoke.Set
	// Timeout bounds how long a handshake waits for an answer that is not cached, and one
	// request; 0 means 2s.
	Timeout time.Duration
	// MaxAge caps how long an answer is cached, and is its lifetime when the response has
	// no nextUpdate; 0 means 1h.
	MaxAge time.Duration
	// RetryAfter is how long a failed request is remembered, so that handshakes do not each
	// wait for a responder that is down; 0 means 10s.
	RetryAfter time.Duration
	// MaxResponseSize caps a response; 0 means 64 KiB.
	MaxResponseSize int64
	// Responder, if set, is asked instead of each certificate's AIA OCSP URL.
	Responder string
	// Client is the HTTP client; nil means one with no other settings.
	Client *http.Client
	// Clock is the time source; nil means the real clock.
	Clock   clock.Clock
	Logger  *slog.Logger
	Metrics prometheus.Registerer
}

// Checker asks OCSP responders about client certificates, caches their answers, and turns
// a revoked answer into a revocation in the Set.
type Checker struct {
	o   Options
	log *slog.Logger
	m   *metrics

	mu       sync.Mutex
	cache    map[revoke.Key]*entry
	inflight map[revoke.Key]*call
}

type entry struct {
	res     Result
	expires time.Time // when the answer is no longer used
}

type call struct {
	done chan struct{}
	res  Result
}

// New returns a Checker for opts.
func New(o Options) (*Checker, error) {
	if o.Set == nil {
		return nil, errors.New("ocsp: Options.Set is required")
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.MaxAge <= 0 {
		o.MaxAge = time.Hour
	}
	if o.RetryAfter <= 0 {
		o.RetryAfter = 10 * time.Second
	}
	if o.MaxResponseSize <= 0 {
		o.MaxResponseSize = 64 << 10
	}
	if o.Client == nil {
		o.Client = &http.Client{}
	}
	o.Clock = clock.Or(o.Clock)
	c := &Checker{o: o, log: o.Logger, cache: map[revoke.Key]*entry{}, inflight: map[revoke.Key]*call{}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(o.Metrics)
	if err != nil {
		return nil, err
	}
	c.m = m
	return c, nil
}

// Check returns leaf's status: the cached answer while it is fresh, else the responder's,
// waiting at most Timeout (concurrent checks of one certificate share one request).
func (c *Checker) Check(ctx context.Context, leaf, issuer *x509.Certificate) Result {
	// Keyed by the issuer's key too: two CAs may share a DN, and an answer speaks only for
	// the certificates of the key that issued them.
	k := revoke.KeySerialKey(leaf.RawIssuer, issuer.RawSubjectPublicKeyInfo, leaf.SerialNumber)
	now := c.o.Clock.Now()
	c.mu.Lock()
	if e := c.cache[k]; e != nil && now.Before(e.expires) {
		c.mu.Unlock()
		c.m.cache.WithLabelValues("hit").Inc()
		return e.res
	}
	c.m.cache.WithLabelValues("miss").Inc()
	cl := c.inflight[k]
	if cl == nil {
		cl = &call{done: make(chan struct{})}
		c.inflight[k] = cl
		go c.fetch(k, leaf, issuer, cl)
	}
	c.mu.Unlock()
	t := time.NewTimer(c.o.Timeout)
	defer t.Stop()
	select {
	case <-cl.done:
		return cl.res
	case <-t.C:
		return Result{Err: fmt.Errorf("ocsp: no answer within %s", c.o.Timeout)}
	case <-ctx.Done():
		return Result{Err: ctx.Err()}
	}
}

// fetch asks the responder, on its own goroutine and deadline so that no caller's cancel
// cuts a request others wait for, caches the answer and records a revocation.
func (c *Checker) fetch(k revoke.Key, leaf, issuer *x509.Certificate, cl *call) {
	ctx, cancel := context.WithTimeout(context.Background(), c.o.Timeout)
	defer cancel()
	res := c.ask(ctx, leaf, issuer)
	now := c.o.Clock.Now()
	e := &entry{res: res}
	switch {
	case res.Status == Unavailable:
		e.expires = now.Add(c.o.RetryAfter)
		c.m.requests.WithLabelValues("error").Inc()
		c.log.Warn("OCSP check failed; the last good answer, if any, stays in force", "key", k, "err", res.Err)
	default:
		e.expires = now.Add(c.o.MaxAge)
		if !res.NextUpdate.IsZero() && res.NextUpdate.Before(e.expires) {
			e.expires = res.NextUpdate
		}
		c.m.requests.WithLabelValues(res.Status.String()).Inc()
	}
	if res.Status == Revoked {
		reason := res.Reason
		if _, err := c.o.Set.Add(revoke.SourceOCSP, revoke.Entry{Key: k, Reason: reason, RevokedAt: res.RevokedAt, Expires: leaf.NotAfter}); err != nil {
			c.log.Error("recording an OCSP revocation failed", "key", k, "err", err)
		}
		c.log.Info("OCSP responder says revoked", "key", k, "reason", reason)
	}
	c.mu.Lock()
	// An outage never replaces a good or revoked answer that is still fresh.
	if old := c.cache[k]; res.Status != Unavailable || old == nil || !now.Before(old.expires) || old.res.Status == Unavailable {
		c.cache[k] = e
	}
	delete(c.inflight, k)
	cl.res = res
	c.mu.Unlock()
	close(cl.done)
}

// ask sends one request and checks the response.
func (c *Checker) ask(ctx context.Context, leaf, issuer *x509.Certificate) Result {
	url := c.o.Responder
	if url == "" {
		if len(leaf.OCSPServer) == 0 {
			return Result{Err: errors.New("ocsp: the certificate names no OCSP responder and none is configured")}
		}
		url = leaf.OCSPServer[0]
	}
	req, err := xocsp.CreateRequest(leaf, issuer, &xocsp.RequestOptions{Hash: crypto.SHA1})
	if err != nil {
		return Result{Err: fmt.Errorf("ocsp: request: %w", err)}
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(req))
	if err != nil {
		return Result{Err: fmt.Errorf("ocsp: %w", err)}
	}
	hreq.Header.Set("Content-Type", "application/ocsp-request")
	hreq.Header.Set("Accept", "application/ocsp-response")
	resp, err := c.o.Client.Do(hreq)
	if err != nil {
		return Result{Err: fmt.Errorf("ocsp: %s: %w", url, err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Result{Err: fmt.Errorf("ocsp: %s: HTTP %s", url, resp.Status)}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.o.MaxResponseSize+1))
	if err != nil {
		return Result{Err: fmt.Errorf("ocsp: %s: %w", url, err)}
	}
	if int64(len(body)) > c.o.MaxResponseSize {
		return Result{Err: fmt.Errorf("ocsp: %s: response larger than %d bytes", url, c.o.MaxResponseSize)}
	}
	res, err := verify(body, leaf, issuer, c.o.Clock.Now())
	if err != nil {
		return Result{Err: fmt.Errorf("ocsp: %s: %w", url, err)}
	}
	return res
}

// maxSkew is how far in the future a response's thisUpdate may lie.
const maxSkew = 5 * time.Minute

// verify parses and checks a response for leaf: signed by issuer, or by a responder that
// issuer certified for OCSP signing; about leaf (serial and issuer); current.
func verify(der []byte, leaf, issuer *x509.Certificate, now time.Time) (Result, error) {
	r, err := xocsp.ParseResponseForCert(der, leaf, issuer)
	if err != nil {
		// x/crypto/ocsp requires issuer to have signed any certificate the response
		// carries, even when that certificate is the issuer's own (openssl ocsp -rsigner
		// with the CA sends it), which only a root passes (golang/go#59641, #81395). Then
		// the response must verify against issuer itself.
		own, err2 := xocsp.ParseResponseForCert(der, leaf, nil)
		if err2 != nil || own.Certificate == nil || !bytes.Equal(own.Certificate.Raw, issuer.Raw) {
			return Result{}, err
		}
		if err := own.CheckSignatureFrom(issuer); err != nil {
			return Result{}, err
		}
		r = own
	}
	if r.Certificate != nil && !bytes.Equal(r.Certificate.Raw, issuer.Raw) {
		// A delegated responder (RFC 6960 4.2.2.2): x/crypto/ocsp checked that issuer
		// signed its certificate, not that it may sign OCSP responses or is valid now
		// (golang/go#43522).
		if !hasEKU(r.Certificate, x509.ExtKeyUsageOCSPSigning) {
			return Result{}, errors.New("signed by a certificate without the OCSP-signing extended key usage")
		}
		if now.Before(r.Certificate.NotBefore) || now.After(r.Certificate.NotAfter) {
			return Result{}, errors.New("the responder's certificate is not valid now")
		}
	}
	if err := checkCertID(der, leaf, issuer); err != nil {
		return Result{}, err
	}
	if r.ThisUpdate.After(now.Add(maxSkew)) {
		return Result{}, fmt.Errorf("thisUpdate %s is in the future", r.ThisUpdate.Format(time.RFC3339))
	}
	if !r.NextUpdate.IsZero() && now.After(r.NextUpdate) {
		return Result{}, fmt.Errorf("expired: nextUpdate %s has passed", r.NextUpdate.Format(time.RFC3339))
	}
	res := Result{ThisUpdate: r.ThisUpdate, NextUpdate: r.NextUpdate}
	switch r.Status {
	case xocsp.Good:
		res.Status = Good
	case xocsp.Revoked:
		if !revoke.ReasonCodeRevokes(r.RevocationReason) {
			// removeFromCRL: the certificate is no longer revoked (a released hold), which
			// is what a CRL entry with that code says too.
			res.Status = Good
			break
		}
		res.Status, res.RevokedAt, res.Reason = Revoked, r.RevokedAt, revoke.ReasonFromCode(r.RevocationReason)
	default:
		res.Status = Unknown
	}
	return res, nil
}

func hasEKU(c *x509.Certificate, eku x509.ExtKeyUsage) bool {
	for _, u := range c.ExtKeyUsage {
		if u == eku {
			return true
		}
	}
	return false
}

// The parts of a response that x/crypto/ocsp does not expose: the CertID of each
// SingleResponse, to check that the one for leaf's serial is for leaf's issuer too.
type responseASN1 struct {
	Status   asn1.Enumerated
	Response struct {
		ResponseType asn1.ObjectIdentifier
		Response     []byte
	} `asn1:"explicit,tag:0,optional"`
}

// checkCertID finds the SingleResponse for leaf's serial and checks its issuer hashes,
// which x/crypto/ocsp matches on the serial alone and does not expose (golang/go#81396).
// Only SHA-1 CertIDs, what x/crypto/ocsp requests and RFC 5019 responders answer, are
// compared; other hashes are refused.
func checkCertID(der []byte, leaf, issuer *x509.Certificate) error {
	ids, err := certIDs(der)
	if err != nil {
		return err
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(issuer.RawSubjectPublicKeyInfo, &spki); err != nil {
		return fmt.Errorf("issuer public key: %w", err)
	}
	nameHash := sha1.Sum(leaf.RawIssuer)
	keyHash := sha1.Sum(spki.PublicKey.RightAlign())
	for _, id := range ids {
		if id.serial.Cmp(leaf.SerialNumber) != 0 {
			continue
		}
		if !id.sha1 {
			return errors.New("the response's CertID uses a hash other than SHA-1")
		}
		if !bytes.Equal(id.nameHash, nameHash[:]) || !bytes.Equal(id.keyHash, keyHash[:]) {
			return errors.New("the response is for a certificate of the same serial from another issuer")
		}
		return nil
	}
	return errors.New("no response for this certificate")
}

type certID struct {
	sha1              bool
	nameHash, keyHash []byte
	serial            *big.Int
}

var oidSHA1 = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}

func certIDs(der []byte) ([]certID, error) {
	var resp responseASN1
	if _, err := asn1.Unmarshal(der, &resp); err != nil {
		return nil, err
	}
	// BasicOCSPResponse ::= SEQUENCE { tbsResponseData, signatureAlgorithm, signature, certs }
	// ResponseData ::= SEQUENCE { version [0] EXPLICIT OPTIONAL, responderID, producedAt,
	// responses SEQUENCE OF SingleResponse, ... }
	var basic, tbs asn1.RawValue
	if _, err := asn1.Unmarshal(resp.Response.Response, &basic); err != nil {
		return nil, err
	}
	if _, err := asn1.Unmarshal(basic.Bytes, &tbs); err != nil {
		return nil, err
	}
	rest := tbs.Bytes
	var field asn1.RawValue
	var err error
	if rest, err = asn1.Unmarshal(rest, &field); err != nil {
		return nil, err
	}
	if field.Class == asn1.ClassContextSpecific && field.Tag == 0 { // version; then responderID
		if rest, err = asn1.Unmarshal(rest, &field); err != nil {
			return nil, err
		}
	}
	if rest, err = asn1.Unmarshal(rest, &field); err != nil { // producedAt
		return nil, err
	}
	var responses []asn1.RawValue
	if _, err := asn1.Unmarshal(rest, &responses); err != nil {
		return nil, err
	}
	var out []certID
	for _, r := range responses {
		// SingleResponse ::= SEQUENCE { certID, certStatus, thisUpdate, ... }
		var id struct {
			HashAlgorithm pkix.AlgorithmIdentifier
			NameHash      []byte
			IssuerKeyHash []byte
			SerialNumber  *big.Int
		}
		if _, err := asn1.Unmarshal(r.Bytes, &id); err != nil {
			return nil, err
		}
		out = append(out, certID{sha1: id.HashAlgorithm.Algorithm.Equal(oidSHA1), nameHash: id.NameHash, keyHash: id.IssuerKeyHash, serial: id.SerialNumber})
	}
	return out, nil
}

// VerifyConnection returns a check for tls.Config.VerifyConnection that applies mode to the
// client certificate (the leaf of the first verified chain, and its issuer there). A
// revoked answer always refuses; hard also refuses when no good answer can be had.
func (c *Checker) VerifyConnection(mode Mode) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if mode == Off || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) < 2 {
			return nil
		}
		leaf, issuer := cs.VerifiedChains[0][0], cs.VerifiedChains[0][1]
		res := c.Check(context.Background(), leaf, issuer)
		switch {
		case res.Status == Good:
			return nil
		case res.Status == Revoked:
			return fmt.Errorf("%w: revoked (%s)", ErrNotGood, res.Reason)
		case mode == Hard:
			c.m.handshakes.WithLabelValues("hard_refused").Inc()
			return fmt.Errorf("%w: %s, and this audience's ocsp mode is hard", ErrNotGood, explain(res))
		}
		c.m.handshakes.WithLabelValues("soft_allowed").Inc()
		return nil
	}
}

func explain(r Result) string {
	if r.Err != nil {
		return r.Err.Error()
	}
	return r.Status.String()
}

type metrics struct {
	requests      *prometheus.CounterVec
	cache         *prometheus.CounterVec
	handshakes    *prometheus.CounterVec
	revalidations prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_ocsp_requests_total", Help: "OCSP requests, by result (good, revoked, unknown, error).",
		}, []string{"result"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_ocsp_cache_total", Help: "OCSP status lookups, by cache result (hit, miss).",
		}, []string{"result"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_ocsp_handshakes_total", Help: "Handshakes without a good OCSP answer, by outcome (soft_allowed, hard_refused).",
		}, []string{"outcome"}),
		revalidations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "guardian_ocsp_revalidations_total", Help: "Background re-checks of certificates that live conns rely on.",
		}),
	}
	if reg != nil {
		for _, col := range []prometheus.Collector{m.requests, m.cache, m.handshakes, m.revalidations} {
			if err := reg.Register(col); err != nil {
				return nil, fmt.Errorf("ocsp: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

// Run re-checks, until ctx ends, the certificates that live conns rely on, before their
// cached answers expire: every interval, live yields each (leaf, issuer) of a live conn in
// an audience that uses OCSP; an answer due to expire within two intervals is asked for
// again in the background, at most 8 requests at a time. A revoked answer becomes a
// revocation in the Set, which closes the conns; a responder outage closes nothing, and the
// last answer is used until a new one comes. Answers for certificates no live conn holds are
// dropped once they expire.
func (c *Checker) Run(ctx context.Context, every time.Duration, live func(yield func(leaf, issuer *x509.Certificate))) {
	t := time.NewTicker(every)
	defer t.Stop()
	sem := make(chan struct{}, 8)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := c.o.Clock.Now()
		seen := map[revoke.Key]bool{}
		live(func(leaf, issuer *x509.Certificate) {
			k := revoke.KeySerialKey(leaf.RawIssuer, issuer.RawSubjectPublicKeyInfo, leaf.SerialNumber)
			if seen[k] {
				return
			}
			seen[k] = true
			c.mu.Lock()
			e, busy := c.cache[k], c.inflight[k] != nil
			due := e == nil || !now.Add(2*every).Before(e.expires)
			var cl *call
			if due && !busy {
				cl = &call{done: make(chan struct{})}
				c.inflight[k] = cl
			}
			c.mu.Unlock()
			if cl == nil {
				return
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				c.mu.Lock()
				delete(c.inflight, k)
				c.mu.Unlock()
				close(cl.done)
				return
			}
			c.m.revalidations.Inc()
			go func() {
				defer func() { <-sem }()
				c.fetch(k, leaf, issuer, cl)
			}()
		})
		c.mu.Lock()
		for k, e := range c.cache {
			if !seen[k] && !now.Before(e.expires) {
				delete(c.cache, k)
			}
		}
		c.mu.Unlock()
	}
}
