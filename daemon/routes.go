package daemon

import (
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strconv"
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

// pathReadings are the ways an upstream might read the request's path: as sent and
// percent-decoded up to three times (leniently: an invalid escape stays, the rest decode),
// each with backslashes as slashes, ;parameters dropped or kept, cut at a NUL or not, with
// trailing dots and spaces of each segment trimmed or not (Windows), case-folded as Go and as
// Java or Python do (ToUpper first: "ı" and "ſ" become I and S), and both with dot segments
// resolved and as they stand — an upstream that does not resolve them routes /admin/../x to
// /admin/.
func pathReadings(u *url.URL) []string {
	var out []string
	add := func(p string) {
		for _, q := range []string{p, dropParams(p)} {
			if i := strings.IndexByte(q, 0); i >= 0 {
				out = addForms(out, q[:i])
			}
			out = addForms(out, q)
			out = addForms(out, trimSegments(q))
		}
	}
	add(u.Path)
	p := u.EscapedPath()
	for range 4 {
		add(p)
		d := lenientUnescape(p)
		if d == p {
			break
		}
		p = d
	}
	return out
}

// addForms appends p's normal forms: case-folded two ways, backslashes as slashes, cleaned
// and as it stands (without a trailing slash, so that it compares with a prefix).
func addForms(out []string, p string) []string {
	p = strings.ReplaceAll(p, `\`, "/")
	p = strings.ReplaceAll(p, "\xc0\xae", ".") // overlong UTF-8 for '.', which old decoders take
	for _, c := range []string{strings.ToLower(p), strings.ToLower(strings.ToUpper(p))} {
		cleaned := path.Clean("/" + c)
		if cleaned == "/" {
			cleaned = ""
		}
		out = append(out, cleaned, strings.TrimRight("/"+c, "/"))
	}
	return out
}

// trimSegments drops each segment's trailing dots and spaces, as Windows does.
func trimSegments(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = strings.TrimRight(s, ". ")
	}
	return strings.Join(segs, "/")
}

// lenientUnescape decodes each valid %XX and leaves the rest as it is, as many decoders do:
// url.PathUnescape refuses the whole path at one invalid escape.
func lenientUnescape(p string) string {
	if !strings.Contains(p, "%") {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) {
			if v, err := strconv.ParseUint(p[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
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
