package crl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// A Source reads one CRL and hands it to an Applier: now (Load, at start-up, so that its
// revocations are in force before the first conn is accepted) and whenever it changes (Run).
type Source interface {
	// Load reads the CRL once and applies it if it changed.
	Load(ctx context.Context) error
	// Run loads the CRL whenever it may have changed, until ctx ends. Errors are logged
	// and counted, never returned: the last good CRL stays in force.
	Run(ctx context.Context)
	// Origin names the source in logs: a path or a URL.
	Origin() string
	// Loaded reports whether a CRL from this source is in force. Until one is, the node
	// lacks revocations it was configured to have: it is stale.
	Loaded() bool
	// Retry loads the CRL even if it looks unchanged: the Applier's trust changed, and a
	// CRL it refused before may be good now.
	Retry(ctx context.Context) error
}

// File is a CRL in a local file, DER or PEM, re-read when its size or modification time
// changes.
type File struct {
	Path string
	// Every is how often the file is checked; 0 means 2s.
	Every time.Duration
	// MaxSize caps the file; 0 means DefaultMaxSize.
	MaxSize int64
	Applier *Applier

	mu     sync.Mutex // held by a load, so Run's and Retry's never overlap
	stamp  fileStamp  // the file as last read
	loaded atomic.Bool
}

type fileStamp struct {
	size int64
	mod  time.Time
}

// Origin is the file's path.
func (f *File) Origin() string { return f.Path }

// Loaded reports whether a CRL read from the file is in force: one the Applier took at
// once, or one it held until a client presented its issuer.
func (f *File) Loaded() bool { return f.loaded.Load() || f.Applier.InForce(f.Path) }

// Load reads the file if it changed since the last read and applies it.
func (f *File) Load(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	st, err := os.Stat(f.Path)
	if err != nil {
		return f.Applier.fetchFailed(f.Path, "file", err)
	}
	stamp := fileStamp{st.Size(), st.ModTime()}
	if stamp == f.stamp {
		return nil
	}
	limit := sizeCap(f.MaxSize)
	if st.Size() > limit {
		return f.Applier.fetchFailed(f.Path, "file", fmt.Errorf("%w: %d bytes, more than %d", ErrTooLarge, st.Size(), limit))
	}
	file, err := os.Open(f.Path)
	if err != nil {
		return f.Applier.fetchFailed(f.Path, "file", err)
	}
	b, err := readAtMost(file, limit, st.Size())
	file.Close()
	if err != nil {
		return f.Applier.fetchFailed(f.Path, "file", err)
	}
	// Either way, retry only once the file changes again: the same bytes would be refused
	// again.
	f.stamp = stamp
	if _, err := f.Applier.Apply(b, f.Path); err != nil {
		return err
	}
	f.loaded.Store(true)
	return nil
}

// Retry re-reads the file even if it did not change.
func (f *File) Retry(ctx context.Context) error {
	f.mu.Lock()
	f.stamp = fileStamp{}
	f.mu.Unlock()
	return f.Load(ctx)
}

// Run checks the file every Every until ctx ends.
func (f *File) Run(ctx context.Context) {
	every := f.Every
	if every <= 0 {
		every = 2 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f.Load(ctx)
		}
	}
}

// sizeCap is a source's MaxSize, or DefaultMaxSize.
func sizeCap(n int64) int64 {
	if n <= 0 {
		return DefaultMaxSize
	}
	return n
}

// readAtMost reads r to its end, refusing more than limit bytes. size, when known (a file's
// size, a Content-Length), sizes the buffer at once: io.ReadAll's doubling would briefly
// hold up to twice a large CRL.
func readAtMost(r io.Reader, limit, size int64) ([]byte, error) {
	buf := bytes.NewBuffer(make([]byte, 0, min(max(size, 0), limit)+bytes.MinRead))
	_, err := buf.ReadFrom(io.LimitReader(r, limit+1))
	b := buf.Bytes()
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit)
	}
	return b, nil
}

// URL is a CRL served over HTTP(S). It is fetched with If-None-Match and If-Modified-Since,
// so an unchanged CRL costs a 304, at Refresh and never later than the applied CRL's
// nextUpdate.
type URL struct {
	URL string
	// Refresh is the longest time between fetches; 0 means 5 minutes. A CRL whose
	// nextUpdate comes sooner is fetched then.
	Refresh time.Duration
	// Timeout bounds one fetch; 0 means 30s.
	Timeout time.Duration
	// MaxSize caps the body; 0 means DefaultMaxSize.
	MaxSize int64
	// Client is the HTTP client; nil means one with no other settings.
	Client  *http.Client
	Applier *Applier

	mu                 sync.Mutex // held by a load, so Run's and Retry's never overlap
	etag, lastModified string     // of the last good fetch
	nextUpdate         time.Time  // of the CRL it last applied
	loaded             atomic.Bool
}

// Origin is the URL.
func (u *URL) Origin() string { return u.URL }

// Loaded reports whether a CRL fetched from the URL is in force: one the Applier took at
// once, or one it held until a client presented its issuer.
func (u *URL) Loaded() bool { return u.loaded.Load() || u.Applier.InForce(u.URL) }

// Load fetches the CRL and applies it if the server sent a new one.
func (u *URL) Load(ctx context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	timeout := u.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.URL, nil)
	if err != nil {
		return u.Applier.fetchFailed(u.URL, "url", err)
	}
	if u.etag != "" {
		req.Header.Set("If-None-Match", u.etag)
	}
	if u.lastModified != "" {
		req.Header.Set("If-Modified-Since", u.lastModified)
	}
	client := u.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return u.Applier.fetchFailed(u.URL, "url", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotModified:
		return nil
	case http.StatusOK:
	default:
		return u.Applier.fetchFailed(u.URL, "url", fmt.Errorf("HTTP %s", resp.Status))
	}
	limit := sizeCap(u.MaxSize)
	if resp.ContentLength > limit {
		return u.Applier.fetchFailed(u.URL, "url", fmt.Errorf("%w: Content-Length %d, more than %d", ErrTooLarge, resp.ContentLength, limit))
	}
	b, err := readAtMost(resp.Body, limit, resp.ContentLength)
	if err != nil {
		return u.Applier.fetchFailed(u.URL, "url", err)
	}
	res, err := u.Applier.Apply(b, u.URL)
	if err != nil {
		return err
	}
	u.etag, u.lastModified, u.nextUpdate = resp.Header.Get("ETag"), resp.Header.Get("Last-Modified"), res.NextUpdate
	u.loaded.Store(true)
	return nil
}

// Retry fetches the CRL without the conditional headers.
func (u *URL) Retry(ctx context.Context) error {
	u.mu.Lock()
	u.etag, u.lastModified = "", ""
	u.mu.Unlock()
	return u.Load(ctx)
}

// Run fetches the CRL at Refresh, or at the applied CRL's nextUpdate when that is sooner,
// until ctx ends; after a failure it retries sooner, backing off up to Refresh.
func (u *URL) Run(ctx context.Context) {
	refresh := u.Refresh
	if refresh <= 0 {
		refresh = 5 * time.Minute
	}
	var retry time.Duration
	for {
		wait := refresh
		if retry > 0 {
			wait = retry
		}
		u.mu.Lock()
		next := u.nextUpdate
		u.mu.Unlock()
		if !next.IsZero() {
			// A CA publishes its next CRL before the current one's nextUpdate, when the
			// node would turn stale: fetch a minute ahead, and after that, while the same CRL
			// comes back, every few seconds until a new one does.
			if until := time.Until(next) - time.Minute; until < wait {
				wait = max(until, min(refresh, 5*time.Second))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if err := u.Load(ctx); err != nil && !errors.Is(err, ErrRollback) {
			retry = min(max(2*retry, time.Second), refresh)
			continue
		}
		retry = 0
	}
}
