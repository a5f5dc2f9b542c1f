package grpccreds

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"

	"google.golang.org/grpc/credentials"

	"github.com/guardian-mtls/guardian/listener"
)

// errClientSide is what ClientHandshake returns.
var errClientSide = errors.New("grpccreds: server-side only: dial guardian with credentials.NewTLS")

// creds is the TransportCredentials New returns. It holds no state.
type creds struct{}

// New returns the TransportCredentials of a gRPC server that serves a listener.Listener:
// pass it to grpc.Creds.
func New() credentials.TransportCredentials { return creds{} }

// ServerHandshake accepts rawConn if it is a *tls.Conn that a listener.Listener handshook,
// and it negotiated "h2"; it does no handshake of its own and returns rawConn itself.
func (creds) ServerHandshake(rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := rawConn.(*tls.Conn)
	if !ok {
		return nil, nil, fmt.Errorf("grpccreds: conn from %v is a %T, not a *tls.Conn: serve the gRPC server on guardian's listener (listener.New), not on the plain listener", rawConn.RemoteAddr(), rawConn)
	}
	if _, ok := listener.FromConn(tc); !ok {
		return nil, nil, fmt.Errorf("grpccreds: conn from %v is a *tls.Conn that guardian's listener did not accept: serve the gRPC server on listener.New's listener", tc.RemoteAddr())
	}
	cs := tc.ConnectionState()
	if !cs.HandshakeComplete {
		// Unreachable with guardian's listener, which handshakes before Accept returns.
		return nil, nil, fmt.Errorf("grpccreds: conn from %v has not completed its TLS handshake", tc.RemoteAddr())
	}
	if cs.NegotiatedProtocol != "h2" {
		return nil, nil, fmt.Errorf("grpccreds: conn from %v negotiated ALPN protocol %q; gRPC needs \"h2\" (keep \"h2\" in the audience's NextProtos, and dial with an ALPN-capable client)", tc.RemoteAddr(), cs.NegotiatedProtocol)
	}
	return tc, credentials.TLSInfo{
		State:          cs,
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		SPIFFEID:       spiffeID(cs),
	}, nil
}

// spiffeID returns the client certificate's SPIFFE ID, or nil, by the rules credentials.NewTLS
// follows: the leaf's only URI SAN, with the spiffe scheme, a trust domain of at most 255
// bytes and a path, at most 2048 bytes in all.
func spiffeID(cs tls.ConnectionState) *url.URL {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	uris := cs.PeerCertificates[0].URIs
	if len(uris) != 1 {
		return nil
	}
	u := uris[0]
	if u == nil || u.Scheme != "spiffe" || u.Opaque != "" || (u.User != nil && u.User.Username() != "") ||
		u.Host == "" || len(u.Host) > 255 || u.Path == "" || len(u.String()) > 2048 {
		return nil
	}
	return u
}

// ClientHandshake always fails: these credentials are for servers only.
func (creds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errClientSide
}

// Info reports the security protocol, "tls".
func (creds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

// Clone returns the credentials themselves, which hold no state.
func (c creds) Clone() credentials.TransportCredentials { return c }

// OverrideServerName does nothing: a server has no server name to override, and gRPC no
// longer calls it.
func (creds) OverrideServerName(string) error { return nil }
