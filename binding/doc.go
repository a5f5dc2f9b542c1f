// Package binding is HTTP middleware that ties requests to the TLS conn they arrive on and
// owns what an upstream is told about the client:
//
//   - SNIHostGuard answers 421 when a request's Host is not the conn's SNI, which stops a
//     client from handshaking with one audience and addressing another (also by HTTP/2
//     connection coalescing), and 400 for a Host that is not a plain name or address;
//   - Headers removes every client header an upstream could read as one guardian sets
//     (any case, '_' for '-', as CGI and WSGI servers read them) or as another proxy's
//     identity header, drops headers with underscores by default, and refuses a Connection
//     header that names one; SetIdentity, in an httputil.ReverseProxy's Rewrite, then sets
//     X-Forwarded-Client-Cert, X-Forwarded-For/-Host/-Proto, Forwarded and X-Real-Ip after the
//     proxy's hop-by-hop processing, so nothing the client sends can remove them;
//   - Sessions binds the session cookies a handler (or an upstream) sets to the client
//     certificate of the conn they were set on, sealed so a stolen cookie reveals nothing;
//     it parses every Cookie field itself and checks every pair any common upstream parser
//     could read as a bound cookie, so none is skipped because Go's parser gave up;
//   - Tokens checks RFC 8705 certificate-bound JWTs (cnf.x5t#S256) in exactly one
//     Authorization field, and refuses tokens in the query or a form body;
//   - ClientCertHeader sets X-Forwarded-Client-Cert for a handler that is not a proxy.
//
// Every session or token refusal is the same generic 401; the reason goes to logs and
// metrics only. Malformed requests (a Host, a Connection header, too many cookies) get a
// plain 400 or 431. The middleware reads the conn's state from http.Request.TLS, so it works
// behind guardian's listener or any crypto/tls server. It never closes conns: revocation is
// the listener's.
package binding
