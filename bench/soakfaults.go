package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/logging"
	xocsp "golang.org/x/crypto/ocsp"

	"github.com/guardian-mtls/guardian/internal/redistest"
	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/crl"
	"github.com/guardian-mtls/guardian/revoke/ocsp"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// SoakFaults are the faults injected during the soak, on the node under its load, and what
// held through them.
type SoakFaults struct {
	// Redis: partitioned from the node (a proxy that blackholes), slowed (every chunk held
	// SlowMs each way), and SIGKILLed and restarted from its append-only file; each for
	// about a tenth of the soak.
	PartitionSeconds float64 `json:"partition_seconds"`
	SlowSeconds      float64 `json:"slow_seconds"`
	SlowMs           float64 `json:"slow_ms"`
	DownSeconds      float64 `json:"redis_down_seconds"`
	// WriteRetries are revocations the harness had to write again because Redis was down.
	WriteRetries int `json:"write_retries"`
	// StaleSeen: the node reported itself stale during the partition; MaxStaleness is the
	// longest it went unheard; FreshAtEnd: it was fresh again when the soak ended.
	StaleSeen    bool    `json:"stale_seen"`
	MaxStaleness float64 `json:"max_staleness_seconds"`
	FreshAtEnd   bool    `json:"fresh_at_end"`
	// The CRL URL and the OCSP responder hung, answered 500 and served garbage (the CRL
	// also an older CRL), FaultSeconds in all. What they counted meanwhile, from the node's
	// own metrics; and KeptRevoked of the KeptWanted revocations they had made before stayed
	// in force through it (must be all).
	FaultSeconds   float64 `json:"source_fault_seconds"`
	CRLFetchErrors float64 `json:"crl_fetch_errors"`
	CRLRefused     float64 `json:"crl_refused"`
	OCSPErrors     float64 `json:"ocsp_errors"`
	OCSPSoftAllows float64 `json:"ocsp_soft_allowed"`
	KeptRevoked    int     `json:"kept_revoked"`
	KeptWanted     int     `json:"kept_wanted"`
	// Held conns closed by each source's revocations: Redis, the CRL, OCSP.
	ClosedBy map[string]int `json:"revoked_conns_by_source"`
}

const (
	soakStaleAfter = 2 * time.Second
	soakSlow       = 200 * time.Millisecond
)

// soakRig is the soak's guardian node with what a production node runs beside its
// listener: a Redis feed — through a proxy the soak partitions and slows, to a persistent
// redis-server of its own that it kills — a CRL fetched from a URL, and OCSP in soft mode
// with re-validation of the live conns' certificates, both served by a faultServer. Every
// fault lands on a node under the soak's load.
type soakRig struct {
	rs     *redisProc
	proxy  *redistest.Proxy
	direct *redisfeed.Store // writes straight to Redis, as an operator's CLI does
	rdbs   []*redis.Client
	set    *revoke.Set
	feed   *redisfeed.Feed
	srcs   *faultServer
	reg    *prometheus.Registry
	l      *listener.Listener
	http   *http.Server
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startSoakRig(ctx context.Context, h *harness) (_ *soakRig, err error) {
	// go-redis logs each failed dial to stderr, over the progress bars; the soak kills and
	// partitions Redis on purpose and counts what matters itself.
	redis.SetLogger(&logging.VoidLogger{})
	r := &soakRig{reg: prometheus.NewRegistry()}
	defer func() {
		if err != nil {
			r.stop() // what was started before the failure
		}
	}()
	dir := filepath.Join(h.dir, "soak-redis")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if r.rs, err = startRedis(h.o.redisBin, dir, 0, true); err != nil {
		return nil, err
	}
	if r.proxy, err = redistest.ListenProxy(r.rs.addr()); err != nil {
		return nil, err
	}
	direct := redis.NewClient(&redis.Options{Addr: r.rs.addr(), PoolSize: 2, DialTimeout: time.Second})
	// The node's client: production-like timeouts, and a small pool (the feed needs one or
	// two conns; each costs the in-process proxy two more fds).
	rdb := redis.NewClient(&redis.Options{Addr: r.proxy.Addr(), PoolSize: 4, DialTimeout: time.Second,
		ReadTimeout: time.Second, WriteTimeout: time.Second})
	r.rdbs = []*redis.Client{direct, rdb}
	r.direct = redisfeed.NewStore(direct, "soak", 0)
	if r.set, err = revoke.NewSet(revoke.SetOptions{Metrics: r.reg}); err != nil {
		return nil, err
	}
	if r.feed, err = redisfeed.NewFeed(redisfeed.NewStore(rdb, "soak", 0), r.set,
		redisfeed.FeedOptions{Block: 500 * time.Millisecond, Metrics: r.reg}); err != nil {
		return nil, err
	}
	r.srcs = newFaultServer(h.ca)
	applier, err := crl.NewApplier(crl.Options{Set: r.set, Issuers: []*x509.Certificate{h.ca.Cert}, Metrics: r.reg})
	if err != nil {
		return nil, err
	}
	src := &crl.URL{URL: r.srcs.URL() + "/crl", Refresh: 500 * time.Millisecond, Timeout: time.Second, Applier: applier}
	checker, err := ocsp.New(ocsp.Options{Set: r.set, Responder: r.srcs.URL() + "/ocsp", Timeout: 500 * time.Millisecond,
		MaxAge: 3 * time.Second, RetryAfter: time.Second, Metrics: r.reg})
	if err != nil {
		return nil, err
	}

	rctx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	r.wg.Add(1)
	go func() { defer r.wg.Done(); r.feed.Run(rctx) }()
	select {
	case <-r.feed.Synced():
	case <-time.After(10 * time.Second):
		return nil, errors.New("the soak node's feed did not sync with Redis in 10s")
	}
	if err := src.Load(ctx); err != nil {
		return nil, fmt.Errorf("the soak's CRL: %w", err)
	}
	r.wg.Add(1)
	go func() { defer r.wg.Done(); src.Run(rctx) }()

	server, err := h.ca.Issue(pkitest.Opts{DNS: []string{"localhost"}})
	if err != nil {
		return nil, err
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r.l, err = listener.New(inner, listener.Config{Set: r.set, Metrics: r.reg, EvictionWorkers: evictionWorkers,
		Stale: r.feed.StaleAfter(soakStaleAfter), Audiences: []listener.Audience{{
			Name: "bench", SNI: []string{"localhost"}, Certificates: []tls.Certificate{server.TLS()},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: h.ca.Pool(), OnStale: listener.StaleOpen,
			TLS: &tls.Config{VerifyConnection: checker.VerifyConnection(ocsp.Soft)},
		}}})
	if err != nil {
		inner.Close()
		return nil, err
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		checker.Run(rctx, time.Second, r.l.ClientCerts(nil))
	}()
	r.http = &http.Server{Handler: okHandler, ConnContext: r.l.ConnContext, ReadHeaderTimeout: 10 * time.Second, ErrorLog: discardLog}
	go r.http.Serve(r.l)
	return r, nil
}

func (r *soakRig) stop() {
	if r.http != nil {
		r.http.Close()
	}
	if r.l != nil {
		shutdownNow(r.l)
	}
	if r.cancel != nil {
		r.cancel()
	}
	if r.srcs != nil {
		r.srcs.close()
	}
	r.wg.Wait()
	for _, c := range r.rdbs {
		c.Close()
	}
	if r.proxy != nil {
		r.proxy.Close()
	}
	if r.rs != nil {
		r.rs.stop()
	}
}

// write makes one change in Redis, retrying while Redis is down (the soak kills it); it
// returns how many attempts failed.
func (r *soakRig) write(ctx context.Context, f func(context.Context, *redisfeed.Store) error) (int, error) {
	deadline := time.Now().Add(30 * time.Second)
	for failed := 0; ; failed++ {
		err := f(ctx, r.direct)
		if err == nil {
			return failed, nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return failed, fmt.Errorf("writing to Redis for 30s: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// counter sums a counter of the node's metrics over the series whose label has value (all
// series if label is "").
func (r *soakRig) counter(name, label, value string) float64 {
	mfs, _ := r.reg.Gather()
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					match = true
				}
			}
			if match {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// faultServer serves a CA's CRL at /crl and answers OCSP requests at /ocsp — or, as the
// soak's schedule says, hangs, answers 500, or sends garbage.
type faultServer struct {
	ca  *pkitest.CA
	srv *httptest.Server

	mu          sync.Mutex
	mode        string        // "ok", "hang", "error", "garbage", or "old" (an older CRL)
	release     chan struct{} // closed when the mode changes: hung requests return
	crlNumber   int64
	crlDER      []byte // the current CRL
	oldDER      []byte // the CRL before it
	crlSerials  []*big.Int
	ocspRevoked map[string]bool // serials (decimal) OCSP calls revoked
}

func newFaultServer(ca *pkitest.CA) *faultServer {
	f := &faultServer{ca: ca, mode: "ok", release: make(chan struct{}), ocspRevoked: map[string]bool{}}
	f.publishCRL(nil)
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	return f
}

func (f *faultServer) URL() string { return f.srv.URL }

// setMode switches what both endpoints do; requests hung so far are released.
func (f *faultServer) setMode(mode string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.mode = mode
	close(f.release)
	f.release = make(chan struct{})
}

// publishCRL issues the next CRL, with serials added to those revoked before.
func (f *faultServer) publishCRL(serials []*big.Int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crlSerials = append(f.crlSerials, serials...)
	var entries []x509.RevocationListEntry
	for _, s := range f.crlSerials {
		entries = append(entries, pkitest.Revoked(s, 1))
	}
	f.crlNumber++
	der, err := f.ca.CRL(pkitest.CRLOpts{Number: f.crlNumber, Entries: entries})
	if err != nil {
		panic(err) // the harness's own CA signing its own CRL
	}
	f.oldDER, f.crlDER = f.crlDER, der
}

// revokeOCSP makes the responder answer revoked for serials from now on.
func (f *faultServer) revokeOCSP(serials []*big.Int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range serials {
		f.ocspRevoked[s.String()] = true
	}
}

func (f *faultServer) close() {
	f.setMode("ok")
	f.srv.Close()
}

func (f *faultServer) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	mode, release, crlDER, oldDER := f.mode, f.release, f.crlDER, f.oldDER
	f.mu.Unlock()
	switch mode {
	case "hang":
		select {
		case <-r.Context().Done():
		case <-release:
		}
		return
	case "error":
		http.Error(w, "responder down", http.StatusInternalServerError)
		return
	case "garbage":
		b := make([]byte, 512)
		randRead(b)
		w.Write(b)
		return
	}
	if r.URL.Path == "/crl" {
		if mode == "old" && oldDER != nil {
			crlDER = oldDER
		}
		w.Write(crlDER)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 64<<10))
	req, err := xocsp.ParseRequest(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	revoked := f.ocspRevoked[req.SerialNumber.String()]
	f.mu.Unlock()
	now := time.Now()
	tmpl := xocsp.Response{Status: xocsp.Good, SerialNumber: req.SerialNumber, ThisUpdate: now.Add(-time.Minute),
		NextUpdate: now.Add(time.Hour)}
	if revoked {
		tmpl.Status, tmpl.RevokedAt, tmpl.RevocationReason = xocsp.Revoked, now.Add(-time.Minute).Truncate(time.Second), xocsp.KeyCompromise
	}
	der, err := xocsp.CreateResponse(f.ca.Cert, f.ca.Cert, tmpl, f.ca.Key.(crypto.Signer))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/ocsp-response")
	w.Write(der)
}

// staleWatch samples the node's staleness until stopped.
type staleWatch struct {
	worst atomic.Int64
	seen  atomic.Bool
	stop  chan struct{}
	done  chan struct{}
}

func watchStaleness(feed *redisfeed.Feed) *staleWatch {
	w := &staleWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			s := feed.Staleness()
			if int64(s) > w.worst.Load() {
				w.worst.Store(int64(s))
			}
			if s > soakStaleAfter {
				w.seen.Store(true)
			}
		}
	}()
	return w
}

func (w *staleWatch) end() {
	close(w.stop)
	<-w.done
}

// runFaults injects the soak's faults on a schedule of fractions of the soak's duration d
// (f is a tenth of it), from start:
//
//	0.10  the CRL revokes the first half of crlTags' certificates
//	0.15  the OCSP responder answers revoked for the first half of ocspTags'
//	0.20  Redis partitioned from the node for f (at least twice the staleness bound)
//	0.35  Redis slowed, every chunk held soakSlow each way, for f
//	0.50  Redis SIGKILLed, and restarted from its append-only file after up to f
//	0.60  the CRL URL and OCSP responder hang (f), answer 500 (f/2), serve garbage (f/2),
//	      and the CRL URL an older CRL (f/2); then they are well again, and every revocation
//	      they made before must still be in force
//	0.87  the CRL and OCSP revoke the rest of their certificates
//
// markRevoked is told each certificate (by tag) as its revocation is published.
func runFaults(ctx context.Context, r *soakRig, start time.Time, d time.Duration, fs *SoakFaults,
	leaves []*pkitest.Leaf, crlTags, ocspTags []int, markRevoked func(...int)) error {
	f := d / 10
	at := func(frac float64) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Until(start.Add(time.Duration(frac * float64(d))))):
			return nil
		}
	}
	sleep := func(x time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(x):
			return nil
		}
	}
	serials := func(tags []int) []*big.Int {
		var out []*big.Int
		for _, t := range tags {
			out = append(out, leaves[t-1].Cert.SerialNumber)
		}
		return out
	}
	firstCRL, firstOCSP := crlTags[:len(crlTags)/2], ocspTags[:len(ocspTags)/2]

	if err := at(0.10); err != nil {
		return err
	}
	r.srcs.publishCRL(serials(firstCRL))
	markRevoked(firstCRL...)
	if err := at(0.15); err != nil {
		return err
	}
	r.srcs.revokeOCSP(serials(firstOCSP))
	markRevoked(firstOCSP...)

	if err := at(0.20); err != nil {
		return err
	}
	t0 := time.Now()
	r.proxy.Partition()
	err := sleep(max(f, 2*soakStaleAfter))
	r.proxy.Heal()
	fs.PartitionSeconds = time.Since(t0).Seconds()
	if err != nil {
		return err
	}

	if err := at(0.35); err != nil {
		return err
	}
	t0 = time.Now()
	r.proxy.SetDelay(soakSlow)
	err = sleep(f)
	r.proxy.SetDelay(0)
	fs.SlowSeconds, fs.SlowMs = time.Since(t0).Seconds(), float64(soakSlow)/float64(time.Millisecond)
	if err != nil {
		return err
	}

	if err := at(0.50); err != nil {
		return err
	}
	t0 = time.Now()
	r.rs.stop()
	err = sleep(min(f, 5*time.Second))
	if serr := r.rs.start(); serr != nil {
		return fmt.Errorf("restarting Redis: %w", serr)
	}
	fs.DownSeconds = time.Since(t0).Seconds()
	if err != nil {
		return err
	}

	if err := at(0.60); err != nil {
		return err
	}
	fetchErrors, refused := r.counter("guardian_crl_fetch_errors_total", "", ""), r.counter("guardian_crl_refused_total", "", "")
	ocspErrors, softAllowed := r.counter("guardian_ocsp_requests_total", "result", "error"), r.counter("guardian_ocsp_handshakes_total", "outcome", "soft_allowed")
	t0 = time.Now()
	for _, step := range []struct {
		mode string
		for_ time.Duration
	}{{"hang", f}, {"error", f / 2}, {"garbage", f / 2}, {"old", f / 2}} {
		r.srcs.setMode(step.mode)
		if err := sleep(step.for_); err != nil {
			r.srcs.setMode("ok")
			return err
		}
	}
	r.srcs.setMode("ok")
	fs.FaultSeconds = time.Since(t0).Seconds()
	fs.CRLFetchErrors = r.counter("guardian_crl_fetch_errors_total", "", "") - fetchErrors
	fs.CRLRefused = r.counter("guardian_crl_refused_total", "", "") - refused
	fs.OCSPErrors = r.counter("guardian_ocsp_requests_total", "result", "error") - ocspErrors
	fs.OCSPSoftAllows = r.counter("guardian_ocsp_handshakes_total", "outcome", "soft_allowed") - softAllowed
	for _, t := range append(slices.Clone(firstCRL), firstOCSP...) {
		fs.KeptWanted++
		// CRL and OCSP entries are keyed by the issuer's key as well as its DN.
		leaf := leaves[t-1].Cert
		if r.set.Has(revoke.KeySerialKey(leaf.RawIssuer, r.srcs.ca.Cert.RawSubjectPublicKeyInfo, leaf.SerialNumber)) {
			fs.KeptRevoked++
		}
	}

	if err := at(0.87); err != nil {
		return err
	}
	restCRL, restOCSP := crlTags[len(crlTags)/2:], ocspTags[len(ocspTags)/2:]
	r.srcs.publishCRL(serials(restCRL))
	r.srcs.revokeOCSP(serials(restOCSP))
	markRevoked(append(slices.Clone(restCRL), restOCSP...)...)
	return nil
}
