package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/binding"
	"github.com/guardian-mtls/guardian/internal/ratelog"
	"github.com/guardian-mtls/guardian/listener"
)

// handlerMetrics are what the audience handlers count; registered once, shared by every
// handler a reload builds.
type handlerMetrics struct {
	binding      *binding.Metrics
	proxyErrors  *prometheus.CounterVec
	routeRefused *prometheus.CounterVec
}

func newHandlerMetrics(reg prometheus.Registerer) (*handlerMetrics, error) {
	bm, err := binding.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	pe := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "guardian_proxy_errors_total",
		Help: "Requests the proxy could not complete, by audience and kind (client_canceled, timeout, upstream).",
	}, []string{"audience", "kind"})
	if err := reg.Register(pe); err != nil {
		return nil, err
	}
	rr := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "guardian_route_refused_total",
		Help: "Requests refused (403) by a route's allow policy, by audience and route.",
	}, []string{"audience", "route"})
	if err := reg.Register(rr); err != nil {
		return nil, err
	}
	return &handlerMetrics{binding: bm, proxyErrors: pe, routeRefused: rr}, nil
}

// audienceHandler sends each request to its audience's upstream, or to the identity echo
// for an audience without one, through the audience's checks: every request passes the
// SNI/Host guard, then the identity-header guard, then session and token binding. The
// identity headers are set in the proxy's Rewrite, after hop-by-hop processing, so nothing
// the client sends can strip or replace them. log is for lines clients can cause:
// rate-limit it.
func audienceHandler(cfg *Config, m *handlerMetrics, log *slog.Logger) (http.Handler, error) {
	echo := echoHandler()
	byName := map[string]http.Handler{}
	upstreamConns := cfg.upstreamConns()
	for i, a := range cfg.Audiences {
		if a.tcp() {
			continue // its conns never reach the HTTP server: httpListener splices them
		}
		field := fmt.Sprintf("audiences[%d]", i)
		h := echo
		if a.Upstream != "" {
			u, err := url.Parse(a.Upstream)
			if err != nil {
				return nil, err
			}
			ut := a.UpstreamTimeouts
			name := a.Name
			which, _ := binding.ParseClientCertHeaders(a.ClientCertHeader) // validated with the config
			h = &httputil.ReverseProxy{
				Rewrite: func(pr *httputil.ProxyRequest) {
					pr.SetURL(u)
					binding.SetIdentityWith(pr, which)
				},
				Transport: &http.Transport{
					Proxy:                 nil, // an upstream is dialled directly, never through HTTP_PROXY
					DialContext:           (&net.Dialer{Timeout: time.Duration(ut.Dial), KeepAlive: 30 * time.Second}).DialContext,
					ResponseHeaderTimeout: time.Duration(ut.ResponseHeader),
					IdleConnTimeout:       time.Duration(ut.Idle),
					MaxIdleConnsPerHost:   64,
					// Each request in flight holds an upstream conn: bounded, so clients of one
					// audience cannot spend the descriptors the others need.
					MaxConnsPerHost:   upstreamConns[a.Name],
					ForceAttemptHTTP2: true,
				},
				// Streaming responses go through as they come; a WebSocket upgrade is
				// spliced (the request's conn is hijacked through the binding wrappers).
				FlushInterval: -1,
				ErrorLog:      slog.NewLogLogger(ratelog.Shared(log.Handler(), 10, time.Second), slog.LevelWarn),
				ErrorHandler:  proxyError(name, m.proxyErrors, log),
			}
		}
		if tb := a.TokenBinding; tb != nil {
			var keys []any
			for j, f := range tb.Keys {
				b, err := os.ReadFile(cfg.path(f))
				if err == nil {
					var k any
					if k, err = binding.ParseKey(b); err == nil {
						keys = append(keys, k)
					}
				}
				if err != nil {
					return nil, configError(cfg.name(), fmt.Sprintf("%s.token_binding.keys[%d]", field, j), "%v", err)
				}
			}
			t := &binding.Tokens{Issuer: tb.Issuer, Audience: tb.Audience, Algorithms: tb.Algorithms, Keys: keys,
				Leeway: time.Duration(tb.Leeway), Metrics: m.binding, Logger: log}
			var err error
			if h, err = t.Wrap(h); err != nil {
				return nil, configError(cfg.name(), field+".token_binding", "%v", err)
			}
		}
		protected := []string{}
		if sb := a.SessionBinding; sb != nil {
			var keys [][]byte
			for j, file := range sb.keyFiles() {
				key, err := os.ReadFile(cfg.path(file))
				if err != nil {
					return nil, configError(cfg.name(), fmt.Sprintf("%s.session_binding.keys[%d]", field, j), "%v", err)
				}
				keys = append(keys, bytes.TrimSpace(key))
			}
			s := &binding.Sessions{Cookies: sb.Cookies, Keys: keys, Audience: a.Name, Metrics: m.binding, Logger: log}
			var err error
			if h, err = s.Wrap(h); err != nil {
				return nil, configError(cfg.name(), field+".session_binding", "%v", err)
			}
			protected = append(protected, "Cookie")
		}
		if a.TokenBinding != nil {
			protected = append(protected, "Authorization")
		}
		if len(a.Routes) > 0 {
			routes := make([]route, len(a.Routes))
			for j, rc := range a.Routes {
				routes[j] = newRoute(rc)
			}
			h = routesGuard(a.Name, routes, m.routeRefused, log, h)
		}
		us, _ := binding.ParseUnderscores(a.UnderscoreHeaders) // validated with the config
		h = (&binding.Headers{Underscores: us, Protected: protected, Metrics: m.binding, Logger: log}).Wrap(h)
		byName[a.Name] = h
	}
	return binding.SNIHostGuard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info, ok := listener.FromContext(r.Context())
		if !ok {
			http.Error(w, "no connection identity", http.StatusInternalServerError)
			return
		}
		h := byName[info.Audience()]
		if h == nil {
			http.Error(w, "unknown audience", http.StatusMisdirectedRequest)
			return
		}
		h.ServeHTTP(w, r)
	}), m.binding, log), nil
}

// proxyError answers a request the proxy could not complete. A client that went away is
// counted only: an HTTP/2 rapid-reset flood cancels thousands of requests a second.
func proxyError(audience string, errs *prometheus.CounterVec, log *slog.Logger) func(http.ResponseWriter, *http.Request, error) {
	return func(w http.ResponseWriter, r *http.Request, err error) {
		kind := "upstream"
		var ne net.Error
		switch {
		case r.Context().Err() != nil && errors.Is(err, context.Canceled):
			kind = "client_canceled"
		case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
			kind = "timeout"
		}
		errs.WithLabelValues(audience, kind).Inc()
		if kind != "client_canceled" {
			log.Warn("upstream request failed", "audience", audience, "kind", kind, "err", err)
		}
		w.WriteHeader(http.StatusBadGateway)
	}
}

// echoHandler, for an audience without an upstream, echoes the caller's identity and session; /login starts a session; /stream
// keeps a response open, one line a second, so that a revocation can be seen ending a live
// request.
func echoHandler() http.Handler {
	mux := http.NewServeMux()
	identity := func(r *http.Request) string {
		info, ok := listener.FromContext(r.Context())
		if !ok || info.Leaf() == nil {
			return "anonymous"
		}
		leaf := info.Leaf()
		id := leaf.Subject.String()
		if len(leaf.URIs) > 0 {
			id = leaf.URIs[0].String()
		}
		return fmt.Sprintf("%s (audience %s, serial %s)", id, info.Audience(), leaf.SerialNumber.Text(16))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello %s\n", identity(r))
		if c, err := r.Cookie("session"); err == nil {
			fmt.Fprintf(w, "your session: %s\n", c.Value)
		}
	})
	mux.HandleFunc("/login", func(w http.ResponseWriter, r *http.Request) {
		var b [8]byte
		rand.Read(b[:])
		http.SetCookie(w, &http.Cookie{Name: "session", Value: fmt.Sprintf("%x", b), Path: "/"})
		fmt.Fprintf(w, "logged in as %s\n", identity(r))
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		f, _ := w.(http.Flusher)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for i := 0; ; i++ {
			fmt.Fprintf(w, "%s still connected as %s\n", time.Now().Format(time.TimeOnly), identity(r))
			if f != nil {
				f.Flush()
			}
			select {
			case <-r.Context().Done():
				return
			case <-t.C:
			}
		}
	})
	return mux
}
