package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/revoke"
	"github.com/guardian-mtls/guardian/revoke/redisfeed"
)

// Options are what the admin API serves.
type Options struct {
	Set *revoke.Set
	// Store is where revocations are written.
	Store revoke.Store
	// Conns is the data listener: its live conns are listed, matched and closed.
	Conns *listener.Listener
	// Allowed lists the identity keys of the certificates the API answers; none means any
	// certificate the admin listener verified.
	Allowed []revoke.Key
	// Ready, if set, answers /readyz: "" when ready, else why not.
	Ready func() string
	// Feed is the Redis feed, for /v1/reseed; nil for other stores.
	Feed *redisfeed.Feed
	// Fleet, if set, answers /v1/fleet: every live node's heartbeat.
	Fleet func(context.Context) ([]redisfeed.NodeStatus, error)
	// CRLs, if set, answers /v1/crls: the CRLs in force on this node.
	CRLs func() []CRL
	// Logger is for lines clients can cause: rate-limit it.
	Logger *slog.Logger
	// Metrics, if set, counts the API's requests.
	Metrics prometheus.Registerer
	// Gatherer, if set, is served on /metrics.
	Gatherer prometheus.Gatherer
}

// Server is the operator API: revocations and live conns. It runs behind a listener that
// verifies client certificates against the admin CA; on top of that it answers only
// certificates holding one of the allowed identity keys.
type Server struct {
	opts     Options
	log      *slog.Logger
	requests *prometheus.CounterVec
}

// New returns the admin API of o.
func New(o Options) (*Server, error) {
	if o.Set == nil || o.Store == nil || o.Conns == nil {
		return nil, errors.New("admin: Options.Set, Store and Conns are required")
	}
	a := &Server{opts: o, log: o.Logger,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "guardian_admin_requests_total",
			Help: "Admin API requests by operation and result (ok, bad_request, forbidden, not_found, cross_origin, unsupported_media_type).",
		}, []string{"op", "result"})}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if o.Metrics != nil {
		if err := o.Metrics.Register(a.requests); err != nil {
			return nil, fmt.Errorf("admin: register metrics: %w", err)
		}
	}
	return a, nil
}

func (a *Server) count(op string, code int) {
	result := map[int]string{200: "ok", 400: "bad_request", 403: "forbidden", 404: "not_found"}[code]
	if result == "" {
		result = fmt.Sprint(code)
	}
	a.requests.WithLabelValues(op, result).Inc()
}

const maxAdminBody = 64 << 10

// Handler returns the API's routes behind its checks: the allowed identities, then the
// same-origin and Content-Type rules for every change.
func (a *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if a.opts.Ready != nil {
			if why := a.opts.Ready(); why != "" {
				http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
				return
			}
		}
		io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("GET /v1/revocations", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.opts.Set.Entries())
	})
	mux.HandleFunc("POST /v1/revocations", a.revoke)
	mux.HandleFunc("DELETE /v1/revocations", a.unrevoke)
	mux.HandleFunc("GET /v1/conns", a.conns)
	mux.HandleFunc("DELETE /v1/conns", a.closeConn)
	mux.HandleFunc("GET /v1/crls", func(w http.ResponseWriter, r *http.Request) {
		views := []CRL{}
		if a.opts.CRLs != nil {
			views = a.opts.CRLs()
		}
		writeJSON(w, http.StatusOK, views)
	})
	mux.HandleFunc("POST /v1/reseed", a.reseed)
	mux.HandleFunc("GET /v1/fleet", func(w http.ResponseWriter, r *http.Request) {
		if a.opts.Fleet == nil {
			writeError(w, http.StatusNotFound, "no fleet status on this node")
			return
		}
		nodes, err := a.opts.Fleet(r.Context())
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, nodes)
	})
	if a.opts.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(a.opts.Gatherer, promhttp.HandlerOpts{}))
	}
	return a.authorize(a.guard(mux))
}

// adminOps names the state-changing routes' op label, for the refusals guard counts.
var adminOps = map[string]string{
	"POST /v1/revocations":   "revoke",
	"DELETE /v1/revocations": "unrevoke",
	"POST /v1/reseed":        "reseed",
	"DELETE /v1/conns":       "close_conn",
}

// guard refuses what a browser holding the admin certificate can be made to send from
// another site's page. Every method but GET, HEAD and OPTIONS must be same-origin
// (net/http's CrossOriginProtection: Sec-Fetch-Site, else Origin against Host), or 403,
// and must declare Content-Type application/json, or 415: a cross-site form or a fetch
// without a preflight can only send text/plain, form or multipart bodies. The CLI sends
// application/json and neither header. DELETE carries no body but is held to the same
// rule, so that one sentence covers every change; the CLI already complies.
func (a *Server) guard(mux *http.ServeMux) http.Handler {
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
func (a *Server) authorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			writeError(w, http.StatusForbidden, "admin certificate required")
			return
		}
		if len(a.opts.Allowed) == 0 { // any certificate the admin CA verifies
			next.ServeHTTP(w, r)
			return
		}
		for _, k := range revoke.KeysOf(r.TLS.VerifiedChains[0][:1]) {
			if slices.Contains(a.opts.Allowed, k) {
				next.ServeHTTP(w, r)
				return
			}
		}
		a.log.Warn("admin API refused a certificate", "subject", r.TLS.VerifiedChains[0][0].Subject.String(), "remote", r.RemoteAddr)
		a.count("any", http.StatusForbidden)
		writeError(w, http.StatusForbidden, "this certificate is not an admin")
	})
}

func (a *Server) revoke(w http.ResponseWriter, r *http.Request) {
	w = &countingWriter{ResponseWriter: w, done: func(code int) { a.count("revoke", code) }}
	var req RevokeRequest
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
	a.opts.Conns.Conns(func(info *listener.ConnInfo) bool {
		if revoke.Matches(info.Chains(), key) {
			matched++
		}
		return true
	})
	e := revoke.Entry{Key: key, Reason: reason, RevokedAt: time.Now().UTC(), Source: "api"}
	v, err := a.opts.Store.Revoke(r.Context(), e)
	if err != nil {
		a.log.Error("revoke failed", "key", key, "err", err)
		writeError(w, http.StatusServiceUnavailable, "store: "+err.Error())
		return
	}
	a.log.Info("revoked", "key", key, "reason", reason, "matched_conns", matched)
	writeJSON(w, http.StatusOK, RevokeResponse{Entry: e, Version: v, Matched: matched})
}

func (a *Server) unrevoke(w http.ResponseWriter, r *http.Request) {
	w = &countingWriter{ResponseWriter: w, done: func(code int) { a.count("unrevoke", code) }}
	key, err := revoke.ParseKey(r.URL.Query().Get("key"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	_, changed, err := a.opts.Store.Unrevoke(r.Context(), key)
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

// reseed shows (and with apply, writes back) this node's entries that Redis lacks.
func (a *Server) reseed(w http.ResponseWriter, r *http.Request) {
	w = &countingWriter{ResponseWriter: w, done: func(code int) { a.count("reseed", code) }}
	if a.opts.Feed == nil {
		writeError(w, http.StatusNotFound, "this node's revocation store is not Redis; nothing to reseed")
		return
	}
	var req ReseedRequest
	if err := decodeBody(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad request body: "+err.Error())
		return
	}
	missing, err := a.opts.Feed.Missing(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	resp := ReseedResponse{Missing: missing}
	if req.Apply && len(missing) > 0 {
		resp.Written, resp.Version, err = a.opts.Feed.Store().Reseed(r.Context(), missing, a.opts.Feed.Status().Applied)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		a.log.Warn("reseeded redis from this node", "written", resp.Written, "version", resp.Version)
	}
	writeJSON(w, http.StatusOK, resp)
}

func (a *Server) conns(w http.ResponseWriter, r *http.Request) {
	out := []Conn{}
	a.opts.Conns.Conns(func(info *listener.ConnInfo) bool {
		v := Conn{ID: info.ID(), Remote: info.RemoteAddr().String(), Since: info.Since(), Audience: info.Audience(), AllowedBy: info.AllowedBy()}
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

// closeConn closes one live conn by ID, without revoking its certificate.
func (a *Server) closeConn(w http.ResponseWriter, r *http.Request) {
	w = &countingWriter{ResponseWriter: w, done: func(code int) { a.count("close_conn", code) }}
	id, err := strconv.ParseUint(r.URL.Query().Get("id"), 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, "id: want the conn's number, as guardian conns lists it")
		return
	}
	if !a.opts.Conns.CloseConn(id) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no live conn %d", id))
		return
	}
	a.log.Info("conn closed by the admin API", "conn", id)
	writeJSON(w, http.StatusOK, map[string]any{"closed": id})
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
