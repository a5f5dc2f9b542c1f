package crl

import (
	"context"
	"crypto/x509"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"time"
)

// Discovery fetches the CRLs that certificates name in their CRL Distribution Points, as it
// sees them in verified chains (Learn): each HTTP URL becomes a URL source of the Applier —
// the same size cap, timeout, ETag/Last-Modified caching and refresh before nextUpdate as a
// configured URL — verified against its issuer as any CRL is.
type Discovery struct {
	// Applier applies what is fetched. Required.
	Applier *Applier
	// Refresh, Timeout and MaxSize are each source's (see URL).
	Refresh, Timeout time.Duration
	MaxSize          int64
	// Max bounds the distinct URLs followed; 0 means 256. A certificate naming others is
	// treated as one whose CRL is unavailable.
	Max int

	mu      sync.Mutex
	ctx     context.Context
	sources map[string]*discovered
	client  *http.Client
}

type discovered struct {
	src   *URL
	tried chan struct{} // closed once the first fetch has ended, either way
}

// ErrNotHTTP is a distribution point that is not an http:// URL (LDAP, file, or a redirect
// to one): guardian fetches CRLs over HTTP only.
var ErrNotHTTP = errors.New("crl: distribution point is not an http:// URL")

// Start makes d fetch and refresh, until ctx ends, the CRLs Learn finds.
func (d *Discovery) Start(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ctx = ctx
	d.sources = map[string]*discovered{}
	// A distribution point may redirect, but never away from HTTP(S).
	d.client = &http.Client{CheckRedirect: func(req *http.Request, via []*http.Request) error {
		if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
			return ErrNotHTTP
		}
		if len(via) >= 5 {
			return errors.New("crl: more than 5 redirects")
		}
		return nil
	}}
}

// points returns the http:// distribution points of the certificates in chains.
func points(chains [][]*x509.Certificate) []string {
	var out []string
	for _, ch := range chains {
		for _, c := range ch {
			for _, p := range c.CRLDistributionPoints {
				if u, err := url.Parse(p); err == nil && u.Scheme == "http" && u.Host != "" && !slices.Contains(out, p) {
					out = append(out, p)
				}
			}
		}
	}
	return out
}

// Learn starts following the distribution points of the certificates in chains that it
// does not follow yet.
func (d *Discovery) Learn(chains [][]*x509.Certificate) {
	for _, p := range points(chains) {
		d.source(p)
	}
}

// source returns the source of p, started if new; nil when Max are followed already, or
// before Start.
func (d *Discovery) source(p string) *discovered {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sources == nil {
		return nil
	}
	if s, ok := d.sources[p]; ok {
		return s
	}
	max := d.Max
	if max <= 0 {
		max = 256
	}
	if len(d.sources) >= max {
		return nil
	}
	s := &discovered{src: &URL{URL: p, Refresh: d.Refresh, Timeout: d.Timeout, MaxSize: d.MaxSize, Client: d.client, Applier: d.Applier},
		tried: make(chan struct{})}
	d.sources[p] = s
	ctx := d.ctx
	go func() {
		s.src.Load(ctx) // logs and counts a failure
		close(s.tried)
		s.src.Run(ctx)
	}()
	return s
}

// Unavailable returns the distribution points of the certificates in chains whose CRL is
// not in force, waiting up to wait for first fetches still under way: one unreachable point
// delays only the handshakes of the certificates that name it, and never longer than wait.
func (d *Discovery) Unavailable(chains [][]*x509.Certificate, wait time.Duration) []string {
	ps := points(chains)
	if len(ps) == 0 {
		return nil
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	expired := false
	var out []string
	for _, p := range ps {
		s := d.source(p)
		if s == nil {
			out = append(out, p)
			continue
		}
		if !expired {
			select {
			case <-s.tried:
			case <-deadline.C:
				expired = true
			}
		}
		if !s.src.Loaded() {
			out = append(out, p)
		}
	}
	return out
}

// Failing returns the followed distribution points whose CRL is not in force, for
// readiness.
func (d *Discovery) Failing() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for p, s := range d.sources {
		select {
		case <-s.tried:
			if !s.src.Loaded() {
				out = append(out, p)
			}
		default:
		}
	}
	slices.Sort(out)
	return out
}
