// Package binding is HTTP middleware that ties requests to the TLS conn they arrive on:
//
//   - SNIHostGuard answers 421 when a request's Host is not the conn's SNI, which stops a
//     client from handshaking with one audience and addressing another (also by HTTP/2
//     connection coalescing);
//   - Sessions binds the session cookies a handler (or an upstream) sets to the client
//     certificate of the conn they were set on, so a stolen cookie is useless with another
//     certificate, with none, or on another audience;
//   - Tokens checks RFC 8705 certificate-bound JWTs (cnf.x5t#S256);
//   - ClientCertHeader sets X-Forwarded-Client-Cert for an upstream, after removing any the
//     client sent.
//
// Every refusal is the same generic answer; the reason goes to logs and metrics only. The
// middleware reads the conn's state from http.Request.TLS, so it works behind guardian's
// listener or any crypto/tls server. It never closes conns: revocation is the listener's.
package binding
