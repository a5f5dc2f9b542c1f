package daemon

import (
	"net/url"
	"path"
	"strings"
	"testing"
)

// A route applies to every spelling of its path an upstream might read: case, dot
// segments, doubled slashes, backslashes, ;parameters, percent-encoding (twice over).
func TestRouteReadings(t *testing.T) {
	admin := newRoute(RouteConfig{Path: "/admin/", Allow: []string{"uri:spiffe://ops/*"}})
	if sign := newRoute(RouteConfig{Path: "/sign/", Allow: []string{"uri:spiffe://ops/*"}}); !underAny(pathReadings(&url.URL{Path: "/\u017fign/x"}), sign.prefix) {
		t.Error("/ſign/x (long s) is not under /sign/")
	}
	for _, tt := range []struct {
		raw   string
		under bool
	}{
		{"/admin/", true}, {"/admin", true}, {"/admin/x", true}, {"/ADMIN/x", true}, {"//admin/x", true},
		{"/a/../admin/x", true}, {`/admin\x`, true}, {"/admin;jsessionid=1/x", true}, {"/%61dmin/x", true},
		{"/%2561dmin/x", true}, {"/x/%2e%2e/admin/x", true}, {"/%2fadmin/x", true},
		// Dot segments an upstream does not resolve (Flask's <path:p>, Express app.use):
		{"/admin/../x", true}, {"/admin/..", true}, {"/admin/users/../../x", true}, {"/admin%2f..%2fx", true},
		{"/admin%2F%2e%2e%2Fx", true}, {"/%61dmin/../x", true},
		// An invalid escape does not stop the decoding of the rest:
		{"/%2561dmin/%25zz", true}, {"/%2561dmin/%25", true},
		// Case folding as Java and Python do, Windows' trailing dots and spaces, NUL, overlong '.':
		{"/adm%C4%B1n/", true}, {"/admin./", true}, {"/admin%20/", true}, {"/admin%00/", true},
		{"/x/%c0%ae%c0%ae/admin/", true},
		{"/administrator", false}, {"/public/admin", false}, {"/", false}, {"/adminx/../y", false},
	} {
		u, err := url.Parse("https://h" + tt.raw)
		if err != nil {
			t.Fatal(err)
		}
		if got := underAny(pathReadings(u), admin.prefix); got != tt.under {
			t.Errorf("%s under /admin/: %v; want %v (readings %q)", tt.raw, got, tt.under, pathReadings(u))
		}
	}
	if root := newRoute(RouteConfig{Path: "/", Allow: []string{"uri:spiffe://ops/*"}}); !underAny(pathReadings(&url.URL{Path: "/anything"}), root.prefix) {
		t.Error("a route for / does not cover every path")
	}
}

// Client paths, through the route's readings: never a panic, a bounded number of readings,
// and a path that Go itself reads as under /admin/ is always under it.
func FuzzPathReadings(f *testing.F) {
	for _, s := range []string{"/admin/", "/x/../admin/", "/%2561dmin/%25zz", "/adm%C4%B1n/", `/a\b;c=d/%00`, "/%c0%ae%c0%ae/"} {
		f.Add(s)
	}
	admin := newRoute(RouteConfig{Path: "/admin/", Allow: []string{"uri:spiffe://ops/*"}})
	f.Fuzz(func(t *testing.T, raw string) {
		u, err := url.ParseRequestURI(raw)
		if err != nil {
			return
		}
		r := pathReadings(u)
		if len(r) > 200 {
			t.Fatalf("%d readings of %q", len(r), raw)
		}
		if clean := path.Clean("/" + strings.ToLower(u.Path)); (clean == "/admin" || strings.HasPrefix(clean, "/admin/")) && !underAny(r, admin.prefix) {
			t.Fatalf("%q: Go reads %q, under /admin/, but the route does not apply", raw, clean)
		}
	})
}
