package crl_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/internal/metrictest"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke/crl"
)

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A CRL file is applied at Load and re-read when it changes; a missing or broken file
// leaves the last good CRL in force.
func TestFileSource(t *testing.T) {
	ca := pkitest.NewCA(t)
	set := newSet(t)
	reg := prometheus.NewRegistry()
	path := filepath.Join(t.TempDir(), "ca.crl")
	f := &crl.File{Path: path, Every: 20 * time.Millisecond, Applier: newApplier(t, set, reg, ca.Cert)}
	if err := f.Load(context.Background()); err == nil || !strings.Contains(err.Error(), "ca.crl") {
		t.Fatalf("missing file: %v; want an error naming it", err)
	}
	write := func(number int64, serials ...int64) {
		var entries []x509.RevocationListEntry
		for _, s := range serials {
			entries = append(entries, pkitest.Revoked(big.NewInt(s), 1))
		}
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, ca.MustCRL(t, pkitest.CRLOpts{Number: number, Entries: entries}), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Rename(tmp, path)
	}
	write(1, 10)
	if err := f.Load(context.Background()); err != nil || !set.Has(serialKey(ca, 10)) {
		t.Fatalf("Load: %v, serial 10 revoked %v", err, set.Has(serialKey(ca, 10)))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	write(2, 10, 20)
	eventually(t, "the rewritten file is applied", func() bool { return set.Has(serialKey(ca, 20)) })
	// Retry (a reload's) runs beside Run's loads; the race detector watches.
	if err := f.Retry(context.Background()); err != nil {
		t.Fatalf("Retry of an unchanged, applied file: %v", err)
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	eventually(t, "the broken file is refused", func() bool {
		return metrictest.Value(t, reg, "guardian_crl_refused_total", "reason", "malformed") >= 1
	})
	if !set.Has(serialKey(ca, 20)) {
		t.Fatal("a broken file dropped the last good CRL")
	}
}

// A CRL URL is fetched conditionally; a server that hangs or errs leaves the last good CRL
// in force and the fetch is cut at the timeout.
func TestURLSource(t *testing.T) {
	ca := pkitest.NewCA(t)
	var mu sync.Mutex
	body := ca.MustCRL(t, pkitest.CRLOpts{Number: 1, Entries: []x509.RevocationListEntry{pkitest.Revoked(big.NewInt(5), 1)}})
	mode, version := "ok", 1
	var full, notModified atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		b, m, v := body, mode, version
		mu.Unlock()
		switch m {
		case "hang":
			<-r.Context().Done()
			return
		case "error":
			http.Error(w, "boom", 500)
			return
		case "chunked": // no Content-Length: only the read's own limit can stop it
			w.Write(b[:10])
			w.(http.Flusher).Flush()
			w.Write(b[10:])
			return
		}
		etag := fmt.Sprintf(`"v%d"`, v)
		if r.Header.Get("If-None-Match") == etag {
			notModified.Add(1)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		full.Add(1)
		w.Header().Set("ETag", etag)
		w.Write(b)
	}))
	defer srv.Close()
	set := newSet(t)
	reg := prometheus.NewRegistry()
	u := &crl.URL{URL: srv.URL + "/ca.crl", Timeout: 200 * time.Millisecond, Applier: newApplier(t, set, reg, ca.Cert)}
	ctx := context.Background()
	if err := u.Load(ctx); err != nil || !set.Has(serialKey(ca, 5)) {
		t.Fatalf("first fetch: %v", err)
	}
	if err := u.Load(ctx); err != nil || full.Load() != 1 || notModified.Load() != 1 {
		t.Fatalf("second fetch: %v, %d full and %d not-modified answers; want 1 and 1", err, full.Load(), notModified.Load())
	}
	for _, m := range []string{"hang", "error"} {
		mu.Lock()
		mode = m
		mu.Unlock()
		start := time.Now()
		if err := u.Load(ctx); err == nil {
			t.Fatalf("%s: no error", m)
		}
		if m == "hang" && time.Since(start) > 5*time.Second {
			t.Fatalf("a hanging server held the fetch for %v; the timeout is 200ms", time.Since(start))
		}
		if !set.Has(serialKey(ca, 5)) {
			t.Fatalf("%s: the last good CRL was dropped", m)
		}
	}
	if v := metrictest.Value(t, reg, "guardian_crl_fetch_errors_total", "kind", "url"); v != 2 {
		t.Errorf("guardian_crl_fetch_errors_total{kind=url} = %v; want 2", v)
	}
	mu.Lock()
	mode = "ok"
	body = ca.MustCRL(t, pkitest.CRLOpts{Number: 2, Entries: []x509.RevocationListEntry{pkitest.Revoked(big.NewInt(6), 1)}})
	version = 2
	mu.Unlock()
	if err := u.Load(ctx); err != nil || !set.Has(serialKey(ca, 6)) || set.Has(serialKey(ca, 5)) {
		t.Fatalf("after recovery: %v; want serial 6 revoked and 5 not", err)
	}
	big := &crl.URL{URL: srv.URL, MaxSize: 100, Applier: u.Applier}
	if err := big.Load(ctx); err == nil || !strings.Contains(err.Error(), "larger than the size cap") {
		t.Fatalf("oversized CRL: %v", err)
	}
	mu.Lock()
	mode = "chunked"
	mu.Unlock()
	if err := big.Retry(ctx); err == nil || !strings.Contains(err.Error(), "more than 100 bytes") {
		t.Fatalf("oversized CRL without a Content-Length: %v", err)
	}
}
