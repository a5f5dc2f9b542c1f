// Package grpccreds lets a gRPC server run on guardian's listener. New returns the
// credentials.TransportCredentials to pass to grpc.Creds: its ServerHandshake takes the
// *tls.Conn that listener.Listener already handshook, verified and tracks, runs no second
// handshake, checks that the client negotiated "h2" by ALPN, and returns the conn with a
// credentials.TLSInfo, so that peer.FromContext in a handler carries the client's
// certificate and verified chains. The AuthInfo is a plain credentials.TLSInfo, as
// credentials.NewTLS gives (SPIFFEID included), not a type of this package: handlers and
// grpc-go's own authz interceptors type-assert that exact type. A revocation closes the conn
// under the gRPC transport, and its RPCs end with codes.Unavailable.
//
// It is the fix for two wirings that look right and are not. grpc.Creds(credentials.NewTLS(cfg))
// on guardian's listener runs a second TLS handshake inside the first: the server reads the
// client's HTTP/2 preface as a ClientHello and fails, and the client sees "error reading
// server preface: EOF" or a reset conn. A plain grpc.NewServer() serves, because the conn is
// already TLS, but peer.AuthInfo is nil: the client certificate is silently lost.
//
//	l, err := listener.New(inner, listener.Config{Set: set, Audiences: audiences})
//	...
//	srv := grpc.NewServer(grpc.Creds(grpccreds.New()))
//	go srv.Serve(l)
//
// grpccreds is server-side only: clients dial guardian with credentials.NewTLS. It never
// handshakes, reads configuration, or decides who may connect: the listener's audiences do
// that (an audience that does not require client certificates lets clients without one
// through, with no PeerCertificates). It refuses, and gRPC then closes, any conn that is not a
// *tls.Conn accepted by guardian's listener, and any conn that did not negotiate "h2".
//
// grpccreds is a module of its own, so that the guardian module does not require grpc-go.
package grpccreds
