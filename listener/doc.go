// Package listener is where a connection meets a certificate. New wraps a net.Listener so
// that Accept yields *tls.Conn (net/http fills r.TLS and speaks HTTP/2 only for those), with
// one tls.Config per audience chosen by SNI, a revocation check in VerifyConnection (which Go
// also calls on resumed sessions), and every accepted conn tracked by the identity of its
// client certificate so that a revocation or an expiry closes it while it is live.
//
// The handshake runs in a goroutine of its own, bounded by a timeout, before Accept returns
// the conn: the conn is tracked, and re-checked against the revocation Set, before a single
// application byte is served. A failing handshake closes that conn only; Accept returns an
// error only when the wrapped listener is closed.
//
// Whatever serves on the listener gets the same enforcement: net/http (ConnContext,
// ConnState and Progress add per-request identity, idle timeouts and progress), gRPC
// through listener/grpccreds, or a raw TCP protocol reading FromConn. Close stops accepting
// and leaves enforcement running until the last served conn is gone; Shutdown closes what is
// left at its deadline. Conns, CloseConn and Config.OnEvict list, close and report conns.
//
// listener never parses configuration files, talks to Redis, or serves HTTP.
package listener
