package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// adminAPI serves the operator API: revocations and live conns. It runs behind a listener
// that verifies client certificates against the admin CA; on top of that it answers only
// certificates holding one of the allowed identity keys.
type adminAPI struct {
	set   *revoke.Set
	store revocationStore
	data  *listener.Listener // the data listener: its conns
	// ready, if set, answers /readyz: "" when ready, else why not.
	ready func() string
	// feed is the Redis feed, for /v1/reseed; nil for other stores.
	feed *redisfeed.Feed
	// fleet, if set, answers /v1/fleet: every live node's heartbeat.
	fleet func(context.Context) ([]redisfeed.NodeStatus, error)
	// crls, if set, answers /v1/crls: the CRLs in force on this node.
	crls    func() []crlView
	allowed []revoke.Key
	log     *slog.Logger
	// gatherer, if set, is served on /metrics.
	gatherer prometheus.Gatherer
	requests *prometheus.CounterVec
}

func newAdminAPI(set *revoke.Set, store revocationStore, data *listener.Listener, allowed []revoke.Key, log *slog.Logger, metrics *prometheus.Registry) (*adminAPI, error) {
	a := &adminAPI{set: set, store: store, data: data, allowed: allowed, log: log,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_admin_requests_total",
			Help: "Admin API requests by operation and result (ok, bad_request, forbidden, not_found, cross_origin, unsupported_media_type).",
		}, []string{"op", "result"})}
	if metrics != nil {
		a.gatherer = metrics
		if err := metrics.Register(a.requests); err != nil {
			return nil, err
		}
	}
	return a, nil
}

func (a *adminAPI) count(op string, code int) {
	result := map[int]string{200: "ok", 400: "bad_request", 403: "forbidden", 404: "not_found"}[code]
	if result == "" {
		result = fmt.Sprint(code)
	}
	a.requests.WithLabelValues(op, result).Inc()
}

type revokeRequest struct {
	Key    string `json:"key"`
	Reason string `json:"reason,omitempty"`
}

type revokeResponse struct {
	Entry   revoke.Entry `json:"entry"`
	Version uint64       `json:"version"`
	// Matched counts this node's live conns the key hit; each is being closed.
	Matched int `json:"matched_conns"`
}

// crlView is one CRL in force, for /v1/crls and `guardian crl list`.
type crlView struct {
	ID         string    `json:"id"`
	Issuer     string    `json:"issuer"`
	IssuerKey  string    `json:"issuer_key"` // SHA-256 of the verifying CA key: two CAs may share a DN
	Subject    string    `json:"subject"`
	Number     string    `json:"number"`
	ThisUpdate time.Time `json:"this_update"`
	NextUpdate time.Time `json:"next_update,omitzero"`
	Entries    int       `json:"entries"`
	Origin     string    `json:"origin"`
	AppliedAt  time.Time `json:"applied_at"`
	Stale      bool      `json:"stale"`
}

type connView struct {
	Remote   string    `json:"remote"`
	Audience string    `json:"audience"`
	Subject  string    `json:"subject,omitempty"`
	URIs     []string  `json:"uris,omitempty"`
	Since    time.Time `json:"since"`
	Keys     []string  `json:"keys,omitempty"`
}

const maxAdminBody = 64 << 10

func (a *adminAPI) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if a.ready != nil {
			if why := a.ready(); why != "" {
				http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
				return
			}
		}
		io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("GET /v1/revocations", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.set.Entries())
	})
	mux.HandleFunc("POST /v1/revocations", a.revoke)
	mux.HandleFunc("DELETE /v1/revocations", a.unrevoke)
	mux.HandleFunc("GET /v1/conns", a.conns)
	mux.HandleFunc("GET /v1/crls", func(w http.ResponseWriter, r *http.Request) {
		views := []crlView{}
		if a.crls != nil {
			views = a.crls()
		}
		writeJSON(w, http.StatusOK, views)
	})
	mux.HandleFunc("POST /v1/reseed", a.reseed)
	mux.HandleFunc("GET /v1/fleet", func(w http.ResponseWriter, r *http.Request) {
		if a.fleet == nil {
			writeError(w, http.StatusNotFound, "no fleet status on this node")
			return
		}
		nodes, err := a.fleet(r.Context())
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, nodes)
	})
	if a.gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(a.gatherer, promhttp.HandlerOpts{}))
	}
	return a.authorize(a.guard(mux))
}

// adminOps names the state-changing routes' op label, for the refusals guard counts.
var adminOps = map[string]string{
	"POST /v1/revocations":   "revoke",
	"DELETE /v1/revocations": "unrevoke",
	"POST /v1/reseed":        "reseed",
}

// guard refuses what a browser holding the admin certificate can be made to send from
// another site's page. Every method but GET, HEAD and OPTIONS must be same-origin
// (net/http's CrossOriginProtection: Sec-Fetch-Site, else Origin against Host), or 403,
// and must declare Content-Type application/json, or 415: a cross-site form or a fetch
// without a preflight can only send text/plain, form or multipart bodies. The CLI sends
// application/json and neither header. DELETE carries no body but is held to the same
// rule, so that one sentence covers every change; the CLI already complies.
func (a *adminAPI) guard(mux *http.ServeMux) http.Handler {
	cop := http.NewCrossOriginProtection()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			mux.ServeHTTP(w, r)
			return
		}
		_, pattern := mux.Handler(r)
		op := adminOps[pattern]
		if op == "" {
			op = "any"
		}
		if err := cop.Check(r); err != nil {
			a.log.Warn("admin API refused a cross-origin request", "op", op, "origin", r.Header.Get("Origin"),
				"sec_fetch_site", r.Header.Get("Sec-Fetch-Site"), "remote", r.RemoteAddr)
			a.requests.WithLabelValues(op, "cross_origin").Inc()
			writeError(w, http.StatusForbidden, "refused: "+err.Error()+"; the admin API answers no web page")
			return
		}
		if why := notJSON(r.Header.Get("Content-Type")); why != "" {
			a.requests.WithLabelValues(op, "unsupported_media_type").Inc()
			writeError(w, http.StatusUnsupportedMediaType, why)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// notJSON says what is wrong with a request's Content-Type, or "" for application/json
// (parameters such as charset are ignored: JSON is UTF-8).
func notJSON(ct string) string {
	if ct == "" {
		return "Content-Type missing: the admin API takes application/json (curl: -H 'Content-Type: application/json')"
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return fmt.Sprintf("Content-Type %q: %v; want application/json", ct, err)
	}
	if mt != "application/json" {
		return fmt.Sprintf("Content-Type %s is not application/json", mt)
	}
	return ""
}

// decodeBody reads a request body of exactly one JSON object into v.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) error {
	return decodeOne(http.MaxBytesReader(w, r.Body, maxAdminBody), v)
}

// decodeOne reads exactly one JSON object into v, refusing unknown fields. A second value
// or any data after the object but white space is refused too: json.Decoder alone stops
// after the first value, and a request must be acted on whole or not at all.
func decodeOne(rd io.Reader, v any) error {
	dec := json.NewDecoder(rd)
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty body; want one JSON object")
		}
		return err
	}
	var next json.RawMessage
	switch err := dec.Decode(&next); {
	case err == nil:
		return errors.New("a second JSON value after the first; want one JSON object")
	case !errors.Is(err, io.EOF):
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return err
		}
		return fmt.Errorf("data after the JSON object: %w", err)
	}
	if raw[0] != '{' {
		return errors.New("not a JSON object; want one JSON object")
	}
	strict := json.NewDecoder(bytes.NewReader(raw))
	strict.DisallowUnknownFields()
	return strict.Decode(v)
}

// authorize refuses every request whose client certificate lacks an allowed identity.
func (a *adminAPI) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			writeError(w, http.StatusForbidden, "admin certificate required")
			return
		}
		if len(a.allowed) == 0 { // any certificate the admin CA verifies
			next.ServeHTTP(w, r)
			return
		}
		for _, k := range revoke.KeysOf(r.TLS.VerifiedChains[0][:1]) {
			if slices.Contains(a.allowed, k) {
				next.ServeHTTP(w, r)
				return
			}
		}
		a.log.Warn("admin API refused a certificate", "subject", r.TLS.VerifiedChains[0][0].Subject.String(), "remote", r.RemoteAddr)
		a.count("any", http.StatusForbidden)
		writeError(w, http.StatusForbidden, "this certificate is not an admin")
	})
}

func (a *adminAPI) revoke(w http.ResponseWriter, r *http.Request) {
	w = &countingWriter{ResponseWriter: w, done: func(code int) { a.count("revoke", code) }}
	var req revokeRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad request body: "+err.Error())
		return
	}
	key, err := revoke.ParseKey(req.Key)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	reason, err := revoke.ParseReason(req.Reason)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	matched := 0
	a.data.Conns(func(info *listener.ConnInfo) bool {
		if revoke.Matches(info.Chains(), key) {
			matched++
		}
		return true
	})
	e := revoke.Entry{Key: key, Reason: reason, RevokedAt: time.Now().UTC(), Source: "api"}
	v, err := a.store.Revoke(r.Context(), e)
	if err != nil {
		a.log.Error("revoke failed", "key", key, "err", err)
		writeError(w, http.StatusServiceUnavailable, "store: "+err.Error())
		return
	}
	a.log.Info("revoked", "key", key, "reason", reason, "matched_conns", matched)
	writeJSON(w, http.StatusOK, revokeResponse{Entry: e, Version: v, Matched: matched})
}

func (a *adminAPI) unrevoke(w http.ResponseWriter, r *http.Request) {
	w = &countingWriter{ResponseWriter: w, done: func(code int) { a.count("unrevoke", code) }}
	key, err := revoke.ParseKey(r.URL.Query().Get("key"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	changed, err := a.store.Unrevoke(r.Context(), key)
	if err != nil {
		a.log.Error("unrevoke failed", "key", key, "err", err)
		writeError(w, http.StatusServiceUnavailable, "store: "+err.Error())
		return
	}
	if !changed {
		writeError(w, http.StatusNotFound, "not revoked: "+string(key))
		return
	}
	a.log.Info("unrevoked", "key", key)
	writeJSON(w, http.StatusOK, map[string]any{"key": key})
}

type reseedRequest struct {
	Apply bool `json:"apply"`
}

type reseedResponse struct {
	Missing []revoke.Entry `json:"missing"`
	Written int            `json:"written"`
	Version uint64         `json:"version,omitempty"`
}

// reseed shows (and with apply, writes back) this node's entries that Redis lacks.
func (a *adminAPI) reseed(w http.ResponseWriter, r *http.Request) {
	w = &countingWriter{ResponseWriter: w, done: func(code int) { a.count("reseed", code) }}
	if a.feed == nil {
		writeError(w, http.StatusNotFound, "this node's revocation store is not Redis; nothing to reseed")
		return
	}
	var req reseedRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad request body: "+err.Error())
		return
	}
	missing, err := a.feed.Missing(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	resp := reseedResponse{Missing: missing}
	if req.Apply && len(missing) > 0 {
		resp.Written, resp.Version, err = a.feed.Store().Reseed(r.Context(), missing, a.feed.Status().Applied)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		a.log.Warn("reseeded redis from this node", "written", resp.Written, "version", resp.Version)
	}
	writeJSON(w, http.StatusOK, resp)
}

func (a *adminAPI) conns(w http.ResponseWriter, r *http.Request) {
	out := []connView{}
	a.data.Conns(func(info *listener.ConnInfo) bool {
		v := connView{Remote: info.RemoteAddr().String(), Since: info.Since(), Audience: info.Audience()}
		if leaf := info.Leaf(); leaf != nil {
			v.Subject = leaf.Subject.String()
			for _, u := range leaf.URIs {
				v.URIs = append(v.URIs, u.String())
			}
		}
		for _, k := range info.Keys() {
			v.Keys = append(v.Keys, string(k))
		}
		out = append(out, v)
		return true
	})
	writeJSON(w, http.StatusOK, out)
}

// countingWriter reports the status code of a response once.
type countingWriter struct {
	http.ResponseWriter
	done func(code int)
}

func (c *countingWriter) WriteHeader(code int) {
	if c.done != nil {
		c.done(code)
		c.done = nil
	}
	c.ResponseWriter.WriteHeader(code)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// adminClient talks to a node's admin API with an admin certificate.
type adminClient struct {
	base string
	http *http.Client
}

func newAdminClient(url, certFile, keyFile, caFile string) (*adminClient, error) {
	if url == "" || certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("--admin, --admin-cert, --admin-key and --admin-ca are all required")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("admin certificate %s / %s: %w", certFile, keyFile, err)
	}
	pool, err := loadPool(caFile)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}}
	return &adminClient{base: strings.TrimSuffix(url, "/"), http: &http.Client{Transport: tr, Timeout: 30 * time.Second}}, nil
}

func (c *adminClient) do(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = strings.NewReader(string(b))
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("admin API %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("admin API: %s (HTTP %d)", e.Error, resp.StatusCode)
		}
		return fmt.Errorf("admin API: HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func loadPool(files ...string) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	for _, f := range files {
		certs, err := loadCerts(f)
		if err != nil {
			return nil, err
		}
		for _, c := range certs {
			pool.AddCert(c)
		}
	}
	return pool, nil
}

// loadCerts reads every certificate of a PEM file, or one DER certificate.
func loadCerts(file string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	certs, err := parseCerts(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return certs, nil
}

// parseCerts reads every certificate of PEM input, or one DER certificate.
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return nil, errors.New("no PEM certificate and not a DER certificate")
		}
		out = append(out, c)
	}
	return out, nil
}
