package daemon

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/listener"
)

// How files that change are picked up: fsnotify events on their directories (a rename, a
// Kubernetes ..data symlink swap and a write all show there), settled for settleDelay so a
// pair written one file after the other is read whole; and, for file systems that send no
// events, a re-read every rereadEvery.
const (
	settleDelay = 150 * time.Millisecond
	rereadEvery = 10 * time.Second
)

// watchedFiles are the configuration's certificate, key and CA files, and its CRL files,
// resolved; the directories to watch are theirs.
func (c *Config) watchedFiles() []string {
	var files []string
	add := func(f ...string) {
		for _, x := range f {
			if x != "" {
				files = append(files, c.path(x))
			}
		}
	}
	for _, a := range c.Audiences {
		add(a.Cert, a.Key)
		add(a.ClientCA...)
	}
	if c.Admin.Listen != "" {
		add(c.Admin.Cert, c.Admin.Key)
		add(c.Admin.ClientCA...)
	}
	add(c.Revocation.CRLIssuers...)
	for _, cs := range c.Revocation.CRL {
		add(cs.File)
	}
	slices.Sort(files)
	return slices.Compact(files)
}

// fingerprint hashes the contents of files (through symlinks); a file that cannot be read
// counts as its error.
func fingerprint(files []string) [32]byte {
	h := sha256.New()
	for _, f := range files {
		io.WriteString(h, f)
		if fh, err := os.Open(f); err == nil {
			io.Copy(h, fh)
			fh.Close()
		} else {
			io.WriteString(h, err.Error())
		}
		h.Write([]byte{0})
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// watchFiles applies the certificate and CA files again whenever their contents change, as
// SIGHUP would for them, until ctx ends. A change that does not load — a new certificate
// with the old key, a truncated PEM — is not applied: the last good files stay in force, the
// failure is logged once and counted, and the next change (the key arriving) is tried again.
func (n *Node) watchFiles(ctx context.Context, reloads *prometheus.CounterVec) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		n.log.Warn("file watching unavailable; certificate files are re-read every 10s", "err", err)
	}
	var dirs []string
	watch := func() {
		if w == nil {
			return
		}
		for _, f := range n.Config().watchedFiles() {
			d := filepath.Dir(f)
			if !slices.Contains(dirs, d) {
				if err := w.Add(d); err == nil {
					dirs = append(dirs, d)
				}
			}
		}
	}
	watch()
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w != nil {
		defer w.Close()
		events, errs = w.Events, w.Errors
	}
	last := fingerprint(n.Config().watchedFiles())
	lastErr := ""
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	tick := time.NewTicker(rereadEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-events:
			settle.Reset(settleDelay)
			continue
		case err := <-errs:
			n.log.Warn("file watching", "err", err)
			continue
		case <-tick.C:
		case <-settle.C:
		}
		files := n.Config().watchedFiles()
		fp := fingerprint(files)
		if fp == last {
			continue
		}
		err := n.applyFiles()
		switch {
		case err == nil:
			last, lastErr = fp, ""
			reloads.WithLabelValues("ok").Inc()
			watch() // a reload may have named new directories
		case err.Error() != lastErr:
			lastErr = err.Error()
			reloads.WithLabelValues("error").Inc()
			n.log.Error("changed certificate files do not load; the last good ones stay in force until they do", "err", err)
		default:
			reloads.WithLabelValues("error").Inc()
		}
	}
}

// applyFiles reads the running configuration's certificate and CA files again and applies
// them to both listeners, and the CRL issuers; nothing changes if any fails to load. A CA
// that left a pool closes the conns that relied on it (reason policy); a new server
// certificate closes nothing.
func (n *Node) applyFiles() error {
	n.reloadMu.Lock()
	defer n.reloadMu.Unlock()
	cfg := n.cfg
	auds, err := cfg.audiences(n.rev.ocsp)
	if err != nil {
		return err
	}
	issuers, err := cfg.crlIssuers()
	if err != nil {
		return err
	}
	var adminAud listener.Audience
	if n.admin != nil {
		if adminAud, _, err = cfg.adminAudience(); err != nil {
			return err
		}
	}
	maxStale := time.Duration(cfg.Revocation.MaxStaleness)
	for i := range auds {
		auds[i].Stale = n.rev.stale(maxStale, auds[i].ClientCAs)
	}
	closed, err := n.data.SetAudiences(auds)
	if err != nil {
		return err
	}
	if n.admin != nil {
		c, err := n.admin.SetAudiences([]listener.Audience{adminAud})
		if err != nil {
			return errors.Join(errors.New("admin listener"), err)
		}
		closed += c
	}
	n.rev.setIssuers(issuers)
	for _, src := range n.rev.crls {
		go src.Load(context.Background()) // a CRL file that changed: at once, not at its next poll
	}
	n.log.Info("certificate files changed and applied", "conns_closed", closed)
	return nil
}
