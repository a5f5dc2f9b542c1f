package binding

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"strings"
)

// OwnedHeaders returns the request headers guardian sets for an upstream. Nothing a
// client sends under one of these names — in any case, with '_' for '-' — reaches the
// upstream: CGI and WSGI servers read X_Forwarded_Client_Cert as X-Forwarded-Client-Cert.
func OwnedHeaders() []string { return slices.Clone(ownedHeaders) }

var ownedHeaders = []string{
	"X-Forwarded-Client-Cert", "Client-Cert", "Client-Cert-Chain",
	"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded", "X-Real-Ip",
}

// StrippedHeaders returns request headers that guardian does not set but removes, in any
// spelling, because upstreams and frameworks behind other proxies trust them as the
// client's address or certificate (nginx's and Apache's client-certificate headers, Rails'
// Client-IP, Akamai's True-Client-IP); whole families go by prefix as well (X-Amzn-Mtls-,
// X-Client-Cert…, X-Ssl-Client-, X-Auth-Request-, X-Envoy-). Behind guardian only guardian
// speaks for the client.
func StrippedHeaders() []string { return slices.Clone(strippedHeaders) }

var strippedHeaders = []string{
	"X-Client-Cert", "X-Ssl-Client-Cert", "X-Ssl-Cert", "Ssl-Client-Cert", "X-Client-Verify",
	"X-Ssl-Client-Verify", "X-Ssl-Client-S-Dn", "X-Ssl-Client-I-Dn", "X-Ssl-Client-Dn", "X-Client-Dn",
	"X-Forwarded-Client-Cert-Chain", "X-Forwarded-Tls-Client-Cert", "X-Forwarded-Tls-Client-Cert-Info",
	"Client-Ip", "True-Client-Ip", "X-Client-Ip", "X-Cluster-Client-Ip", "X-Original-Forwarded-For",
	"X-Forwarded", "Forwarded-For", "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Ssl",
	"X-Forwarded-Server", "X-Forwarded-Scheme", "X-Url-Scheme", "Front-End-Https",
	"Cf-Connecting-Ip", "Fastly-Client-Ip", "X-Envoy-External-Address", "X-Originating-Ip",
	"X-Remote-Ip", "X-Remote-Addr", "X-Proxyuser-Ip", "X-Arr-Clientcert",
	"Remote-User", "X-Remote-User", "X-Forwarded-User", "X-Forwarded-Email", "X-Forwarded-Groups",
	"X-Forwarded-Preferred-Username", "X-Forwarded-Access-Token", "X-Webauth-User",
	"X-Original-Url", "X-Rewrite-Url", "X-Original-Host", "X-Host",
}

// strippedPrefixes are header families removed whole: AWS's, GCP's and Apache's
// client-certificate headers, oauth2-proxy's identity headers, Envoy's own.
var strippedPrefixes = []string{"x-amzn-mtls-", "x-client-cert", "x-ssl-client-", "x-auth-request-", "x-envoy-"}

// ownedSet is the headers guardian sets; strippedSet those and the ones it only removes.
var (
	ownedSet    = newHeaderSet(ownedHeaders, nil)
	strippedSet = newHeaderSet(append(slices.Clone(ownedHeaders), strippedHeaders...), strippedPrefixes)
)

// headerSet matches header names as CGI reads them (headerKey). A name as net/http
// canonicalises it off the wire, without '_', is looked up as it is, with no allocation on
// the request path; any other is folded first.
type headerSet struct {
	canon, folded                 map[string]bool
	canonPrefixes, foldedPrefixes []string
}

func newHeaderSet(names, prefixes []string) headerSet {
	s := headerSet{canon: map[string]bool{}, folded: map[string]bool{}, foldedPrefixes: prefixes}
	for _, n := range names {
		s.canon[http.CanonicalHeaderKey(n)] = true
		s.folded[headerKey(n)] = true
	}
	for _, p := range prefixes {
		s.canonPrefixes = append(s.canonPrefixes, http.CanonicalHeaderKey(p))
	}
	return s
}

func (s headerSet) has(name string) bool {
	if !strings.Contains(name, "_") && http.CanonicalHeaderKey(name) == name {
		return s.canon[name] || hasAnyPrefix(name, s.canonPrefixes)
	}
	k := headerKey(name)
	return s.folded[k] || hasAnyPrefix(k, s.foldedPrefixes)
}

// Underscores is what Headers does with a request header whose name holds an underscore.
type Underscores int

const (
	// UnderscoresDrop removes such headers, as nginx does by default.
	UnderscoresDrop Underscores = iota
	// UnderscoresAllow passes them on (those that read as an owned header still go).
	UnderscoresAllow
	// UnderscoresReject answers 400.
	UnderscoresReject
)

// ParseUnderscores reads "drop", "allow" or "reject"; "" is drop.
func ParseUnderscores(s string) (Underscores, error) {
	switch s {
	case "", "drop":
		return UnderscoresDrop, nil
	case "allow":
		return UnderscoresAllow, nil
	case "reject":
		return UnderscoresReject, nil
	}
	return 0, fmt.Errorf("binding: underscore_headers %q; want drop, allow or reject", s)
}

// Headers is the inbound half of the identity headers: it removes every client header
// that an upstream could read as one guardian owns (or as one of StrippedHeaders), and refuses (400) a request whose
// Connection header names one — httputil.ReverseProxy deletes the headers Connection names
// after its Director, which would strip guardian's own. The outbound half, SetIdentity,
// runs in the proxy's Rewrite, after hop-by-hop processing.
type Headers struct {
	Underscores Underscores
	// Protected are more names that Connection may not name (guardian serve adds Cookie
	// and Authorization when it binds them: the upstream must get what was checked).
	Protected []string
	Metrics   *Metrics
	Logger    *slog.Logger
}

// headerKey is a header name as CGI reads it, '_' for '-', case-folded.
func headerKey(name string) string {
	return strings.ToLower(strings.ReplaceAll(name, "_", "-"))
}

// Wrap returns the middleware around next.
func (h *Headers) Wrap(next http.Handler) http.Handler {
	protected := map[string]bool{}
	for k := range ownedSet.folded {
		protected[k] = true
	}
	for _, n := range h.Protected {
		protected[headerKey(n)] = true
	}
	log := h.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	refuse := func(w http.ResponseWriter, r *http.Request, reason, msg string) {
		h.Metrics.refuse("headers", reason)
		log.Warn("request refused: header", "check", "headers", "reason", reason, "remote", r.RemoteAddr)
		http.Error(w, msg, http.StatusBadRequest)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, v := range r.Header.Values("Connection") {
			for tok := range strings.SplitSeq(v, ",") {
				if protected[headerKey(trimSpace(tok))] {
					refuse(w, r, "connection_names_owned", "bad request: Connection names a header guardian sets or checks")
					return
				}
			}
		}
		for name := range r.Header {
			if strings.Contains(name, "_") {
				switch h.Underscores {
				case UnderscoresReject:
					refuse(w, r, "underscore", "bad request: header names with underscores are refused here")
					return
				case UnderscoresDrop:
					h.Metrics.refuse("headers", "underscore_dropped")
					delete(r.Header, name)
					continue
				}
			}
			if strippedSet.has(name) {
				delete(r.Header, name)
			}
		}
		next.ServeHTTP(w, r)
	})
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// SetIdentity is for an httputil.ReverseProxy's Rewrite, which runs after hop-by-hop
// headers are removed: it sets every header guardian owns on the outbound request — the
// X-Forwarded-For/-Host/-Proto trio, Forwarded (RFC 7239), X-Real-IP and, for a conn with
// a client certificate, X-Forwarded-Client-Cert — so nothing the client sent can remove or
// replace them.
func SetIdentity(pr *httputil.ProxyRequest) { SetIdentityWith(pr, XFCCHeader) }

// ClientCertHeaders says which headers carry the client certificate to the upstream.
type ClientCertHeaders int

const (
	// XFCCHeader is X-Forwarded-Client-Cert, Envoy's form: Hash, Subject, URI, DNS.
	XFCCHeader ClientCertHeaders = 1 << iota
	// RFC9440Headers are Client-Cert (the certificate, DER as a structured-field byte
	// sequence) and Client-Cert-Chain (the certificates the client sent after it).
	RFC9440Headers
)

// ParseClientCertHeaders reads a configuration's client_cert_header: xfcc (the default),
// rfc9440 or both.
func ParseClientCertHeaders(s string) (ClientCertHeaders, error) {
	switch s {
	case "", "xfcc":
		return XFCCHeader, nil
	case "rfc9440":
		return RFC9440Headers, nil
	case "both":
		return XFCCHeader | RFC9440Headers, nil
	}
	return 0, fmt.Errorf("binding: client certificate header %q; want xfcc, rfc9440 or both", s)
}

// SetIdentityWith is SetIdentity with the client certificate in the headers which names.
func SetIdentityWith(pr *httputil.ProxyRequest, which ClientCertHeaders) {
	for name := range pr.Out.Header {
		if ownedSet.has(name) {
			delete(pr.Out.Header, name)
		}
	}
	pr.SetXForwarded()
	ip, _, err := net.SplitHostPort(pr.In.RemoteAddr)
	if err == nil {
		pr.Out.Header.Set("X-Real-Ip", ip)
		proto := "http"
		if pr.In.TLS != nil {
			proto = "https"
		}
		forHost := ip
		if strings.Contains(ip, ":") {
			forHost = "[" + ip + "]"
		}
		pr.Out.Header.Set("Forwarded", fmt.Sprintf("for=%s;host=%s;proto=%s", quote(forHost), quote(pr.In.Host), proto))
	}
	if x := XFCC(pr.In); x != "" && which&XFCCHeader != 0 {
		pr.Out.Header.Set("X-Forwarded-Client-Cert", x)
	}
	if tls := pr.In.TLS; tls != nil && len(tls.PeerCertificates) > 0 && which&RFC9440Headers != 0 {
		// RFC 9440: each certificate a structured-field byte sequence, :base64(DER):.
		sf := func(der []byte) string { return ":" + base64.StdEncoding.EncodeToString(der) + ":" }
		pr.Out.Header.Set("Client-Cert", sf(tls.PeerCertificates[0].Raw))
		if rest := tls.PeerCertificates[1:]; len(rest) > 0 {
			chain := make([]string, len(rest))
			for i, c := range rest {
				chain[i] = sf(c.Raw)
			}
			pr.Out.Header.Set("Client-Cert-Chain", strings.Join(chain, ", "))
		}
	}
}

// ClientCertHeader removes every X-Forwarded-Client-Cert the client sent (any case, '_'
// for '-') and, for a conn with a client certificate, sets one in Envoy's form. For a
// reverse proxy, use Headers and SetIdentity instead: a header set here is still exposed
// to the proxy's hop-by-hop processing.
func ClientCertHeader(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for name := range r.Header {
			if headerKey(name) == "x-forwarded-client-cert" {
				delete(r.Header, name)
			}
		}
		if x := XFCC(r); x != "" {
			r.Header.Set("X-Forwarded-Client-Cert", x)
		}
		next.ServeHTTP(w, r)
	})
}

// XFCC renders the request's client certificate as one X-Forwarded-Client-Cert element in
// Envoy's form — Hash (hex SHA-256 of the leaf's DER), Subject, and each URI and DNS SAN —
// or "" for a request without a client certificate.
func XFCC(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return ""
	}
	c := r.TLS.PeerCertificates[0]
	h := thumbprint(c.Raw)
	parts := []string{"Hash=" + hex.EncodeToString(h[:]), "Subject=" + quote(c.Subject.String())}
	for _, u := range c.URIs {
		parts = append(parts, "URI="+quoteIfNeeded(u.String()))
	}
	for _, d := range c.DNSNames {
		parts = append(parts, "DNS="+quoteIfNeeded(d))
	}
	return strings.Join(parts, ";")
}

// quote is Envoy's quoting of an XFCC value: in double quotes, with " and \ escaped.
func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func quoteIfNeeded(s string) string {
	if strings.ContainsAny(s, `,;="\ `) {
		return quote(s)
	}
	return s
}
