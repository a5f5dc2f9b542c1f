package daemon

import (
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/guardian-mtls/guardian/listener"
)

// route is a path prefix and the clients admitted to it.
type route struct {
	prefix string // cleaned, lower-cased, without a trailing slash ("" for /)
	text   string // as configured, for logs
	policy *listener.Policy
}

// routesGuard answers 403 to a request under a route whose policy does not admit the
// conn's client. The upstream may read a path otherwise than Go does — decode it again, fold
// its case, take a backslash for a slash, drop ;parameters — so a route applies when any of
// those readings falls under it, and every route that applies must admit the client: no
// spelling of /admin/ reaches the upstream past /admin/'s policy.
func routesGuard(audience string, routes []route, refused *prometheus.CounterVec, log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info, _ := listener.FromContext(r.Context())
		readings := pathReadings(r.URL)
		for _, rt := range routes {
			if !underAny(readings, rt.prefix) {
				continue
			}
			if info != nil {
				if _, ok := rt.policy.Admits(info.Chains()); ok {
					continue
				}
			}
			refused.WithLabelValues(audience, rt.text).Inc()
			log.Warn("request refused by a route's allow policy", "audience", audience, "route", rt.text, "remote", r.RemoteAddr)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte(`{"message":"forbidden"}` + "\n"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// pathReadings are the ways an upstream might read the request's path, normalised: cleaned,
// lower-cased, backslashes as slashes, ;parameters dropped, and decoded up to three times.
func pathReadings(u *url.URL) []string {
	var out []string
	add := func(p string) {
		for _, q := range []string{p, dropParams(p)} {
			q = path.Clean("/" + strings.ToLower(strings.ReplaceAll(q, `\`, "/")))
			if q == "/" {
				q = ""
			}
			out = append(out, q)
		}
	}
	p := u.EscapedPath()
	add(u.Path)
	for range 3 {
		add(p)
		d, err := url.PathUnescape(p)
		if err != nil || d == p {
			break
		}
		p = d
	}
	add(p)
	return out
}

// dropParams removes each segment's ;parameters (/admin;x=1/ is /admin/ to Tomcat).
func dropParams(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		if j := strings.IndexByte(s, ';'); j >= 0 {
			segs[i] = s[:j]
		}
	}
	return strings.Join(segs, "/")
}

func underAny(readings []string, prefix string) bool {
	for _, p := range readings {
		if prefix == "" || p == prefix || strings.HasPrefix(p, prefix+"/") {
			return true
		}
	}
	return false
}

// newRoute is a configured route.
func newRoute(rc RouteConfig) route {
	pol, _ := listener.ParsePolicy(rc.Allow...) // validated with the config
	prefix := path.Clean("/" + strings.ToLower(rc.Path))
	if prefix == "/" {
		prefix = ""
	}
	return route{prefix: prefix, text: rc.Path, policy: pol}
}
