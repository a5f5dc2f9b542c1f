package grpccreds_test

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/guardian-mtls/guardian/listener/grpccreds"
	"github.com/guardian-mtls/guardian/pkitest"
)

// A handler's peer carries the client certificate that guardian's listener verified.
func TestPeerCarriesClientCertificate(t *testing.T) {
	e := newEnv(t, guardianCreds)
	alice := e.issue("alice")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.dial(alice).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("Check: %v", err)
	}
	p := <-e.peers
	if p == nil {
		t.Fatal("got no peer in the handler's context")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		t.Fatalf("got AuthInfo %T; want credentials.TLSInfo", p.AuthInfo)
	}
	if got, want := info.AuthType(), "tls"; got != want {
		t.Errorf("got AuthType %q; want %q", got, want)
	}
	if got, want := info.SecurityLevel, credentials.PrivacyAndIntegrity; got != want {
		t.Errorf("got SecurityLevel %v; want %v", got, want)
	}
	if got, want := info.State.NegotiatedProtocol, "h2"; got != want {
		t.Errorf("got ALPN %q; want %q", got, want)
	}
	if len(info.State.PeerCertificates) == 0 {
		t.Fatal("got no peer certificates")
	}
	leaf := info.State.PeerCertificates[0]
	if got, want := leaf.Subject.CommonName, "alice"; got != want {
		t.Errorf("got CN %q; want %q", got, want)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://test/alice" {
		t.Errorf("got URIs %v; want [spiffe://test/alice]", leaf.URIs)
	}
	if info.SPIFFEID == nil || info.SPIFFEID.String() != "spiffe://test/alice" {
		t.Errorf("got SPIFFEID %v; want spiffe://test/alice", info.SPIFFEID)
	}
	if n := len(info.State.VerifiedChains); n != 1 {
		t.Fatalf("got %d verified chains; want 1", n)
	}
	if got, want := info.State.VerifiedChains[0][len(info.State.VerifiedChains[0])-1], e.ca.Cert; !got.Equal(want) {
		t.Errorf("got chain ending in %v; want the test CA %v", got.Subject, want.Subject)
	}
	if p.Addr == nil || p.LocalAddr == nil || p.LocalAddr.String() != e.addr {
		t.Errorf("got peer addrs %v -> %v; want a client -> %v", p.Addr, p.LocalAddr, e.addr)
	}
}

// TLSInfo.SPIFFEID is set as credentials.NewTLS sets it: the leaf's only URI SAN, if a
// SPIFFE ID.
func TestSPIFFEID(t *testing.T) {
	e := newEnv(t, guardianCreds)
	for _, tc := range []struct {
		uris []string
		want string
	}{
		{[]string{"spiffe://test/alice"}, "spiffe://test/alice"},
		{[]string{"spiffe://test/alice", "https://alice.test/"}, ""},
		{[]string{"https://alice.test/"}, ""},
		{[]string{"spiffe://test"}, ""},
		{nil, ""},
	} {
		leaf := e.ca.MustIssue(t, pkitest.Opts{CommonName: "alice", URIs: tc.uris})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := e.dial(leaf).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err != nil {
			t.Fatalf("URIs %v: Check: %v", tc.uris, err)
		}
		got := ""
		if id := (<-e.peers).AuthInfo.(credentials.TLSInfo).SPIFFEID; id != nil {
			got = id.String()
		}
		if got != tc.want {
			t.Errorf("URIs %v: got SPIFFEID %q; want %q", tc.uris, got, tc.want)
		}
	}
}

// Revoking one client's certificate ends that client's stream with Unavailable; another
// client's stream, on its own conn, keeps receiving.
func TestRevocationEndsOnlyThatClientsStream(t *testing.T) {
	e := newEnv(t, guardianCreds)
	alice, bob := e.issue("alice"), e.issue("bob")
	e.health.SetServingStatus("a", healthpb.HealthCheckResponse_SERVING)
	e.health.SetServingStatus("b", healthpb.HealthCheckResponse_SERVING)
	streamA := watch(t, e.dial(alice), "a")
	streamB := watch(t, e.dial(bob), "b")
	expectStatus(t, streamA, healthpb.HealthCheckResponse_SERVING, "alice, first message")
	expectStatus(t, streamB, healthpb.HealthCheckResponse_SERVING, "bob, first message")
	// Both streams are live: each carries a change.
	e.health.SetServingStatus("a", healthpb.HealthCheckResponse_NOT_SERVING)
	expectStatus(t, streamA, healthpb.HealthCheckResponse_NOT_SERVING, "alice, before the revocation")
	e.health.SetServingStatus("b", healthpb.HealthCheckResponse_NOT_SERVING)
	expectStatus(t, streamB, healthpb.HealthCheckResponse_NOT_SERVING, "bob, before the revocation")

	e.revokeURI(alice)

	r := next(t, streamA, "alice, after the revocation")
	if r.err == nil {
		t.Fatalf("alice's stream: got message %v; want it to end", r.resp)
	}
	if got, want := status.Code(r.err), codes.Unavailable; got != want {
		t.Fatalf("alice's stream: got code %v (%v); want %v", got, r.err, want)
	}
	t.Logf("alice's stream ended: %v", r.err)

	// Bob's stream still carries every change.
	for i, s := range []healthpb.HealthCheckResponse_ServingStatus{
		healthpb.HealthCheckResponse_SERVING,
		healthpb.HealthCheckResponse_NOT_SERVING,
		healthpb.HealthCheckResponse_SERVING,
	} {
		e.health.SetServingStatus("b", s)
		expectStatus(t, streamB, s, "bob, after the revocation, change "+string(rune('1'+i)))
	}
}

// ServerHandshake refuses, with an error that says what is wrong, a conn that is not a
// *tls.Conn guardian's listener accepted, or that did not negotiate h2; the gRPC server
// then closes it.
func TestServerHandshakeRefuses(t *testing.T) {
	t.Run("plain TCP listener", func(t *testing.T) {
		e := newEnv(t, guardianCreds) // for its certificates
		inner, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		rec := record(grpccreds.New())
		serve(t, grpc.NewServer(grpc.Creds(rec)), inner)
		cfg := &tls.Config{RootCAs: e.ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{e.issue("alice").TLS()}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = dial(t, inner.Addr().String(), cfg).Check(ctx, &healthpb.HealthCheckRequest{})
		if got, want := status.Code(err), codes.Unavailable; got != want {
			t.Errorf("client: got code %v (%v); want %v", got, err, want)
		}
		expectErr(t, rec.handshakeErr(t), "is a *net.TCPConn, not a *tls.Conn", "guardian's listener")
	})
	t.Run("crypto/tls listener", func(t *testing.T) {
		e := newEnv(t, guardianCreds)
		inner, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l := tls.NewListener(inner, &tls.Config{
			Certificates: []tls.Certificate{e.server.TLS()}, NextProtos: []string{"h2"},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: e.ca.Pool(),
		})
		rec := record(grpccreds.New())
		serve(t, grpc.NewServer(grpc.Creds(rec)), l)
		cfg := &tls.Config{RootCAs: e.ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{e.issue("alice").TLS()}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = dial(t, l.Addr().String(), cfg).Check(ctx, &healthpb.HealthCheckRequest{})
		if got, want := status.Code(err), codes.Unavailable; got != want {
			t.Errorf("client: got code %v (%v); want %v", got, err, want)
		}
		expectErr(t, rec.handshakeErr(t), "a *tls.Conn that guardian's listener did not accept")
	})
	for _, tc := range []struct {
		name  string
		alpn  []string
		wants []string
	}{
		{"guardian, http/1.1", []string{"http/1.1"}, []string{`negotiated ALPN protocol "http/1.1"`, `gRPC needs "h2"`}},
		{"guardian, no ALPN", nil, []string{`negotiated ALPN protocol ""`, `gRPC needs "h2"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := record(grpccreds.New())
			e := newEnv(t, func(*env) credentials.TransportCredentials { return rec })
			conn, err := tls.Dial("tcp", e.addr, &tls.Config{
				RootCAs: e.ca.Pool(), ServerName: "localhost", NextProtos: tc.alpn,
				Certificates: []tls.Certificate{e.issue("alice").TLS()},
			})
			if err != nil {
				t.Fatalf("TLS handshake with guardian: %v", err)
			}
			defer conn.Close()
			expectErr(t, rec.handshakeErr(t), tc.wants...)
			// The server closed the conn.
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := conn.Read(make([]byte, 1)); err == nil || isTimeout(err) {
				t.Errorf("client read: got %d bytes, %v; want the conn closed", n, err)
			}
		})
	}
}

// A client gets a clear error from ClientHandshake, and the credentials describe themselves.
func TestServerSideOnly(t *testing.T) {
	c := grpccreds.New()
	if _, _, err := c.ClientHandshake(context.Background(), "localhost:443", nil); err == nil || !strings.Contains(err.Error(), "server-side only") {
		t.Errorf("ClientHandshake: got %v; want a server-side only error", err)
	}
	if got, want := c.Info().SecurityProtocol, "tls"; got != want {
		t.Errorf("got SecurityProtocol %q; want %q", got, want)
	}
	if got, want := c.Clone().Info(), c.Info(); got != want {
		t.Errorf("Clone: got Info %+v; want %+v", got, want)
	}
	if err := c.OverrideServerName("x"); err != nil {
		t.Errorf("OverrideServerName: got %v; want nil", err)
	}
}

// The failure this package fixes: credentials.NewTLS on guardian's listener runs a second
// TLS handshake inside the first one, over the client's HTTP/2 preface.
func TestNewTLSOnGuardianFails(t *testing.T) {
	var rec recordingCreds
	e := newEnv(t, func(e *env) credentials.TransportCredentials {
		rec = record(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{e.server.TLS()},
			ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: e.ca.Pool(),
		}))
		return rec
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := e.dial(e.issue("alice")).Check(ctx, &healthpb.HealthCheckRequest{})
	if got, want := status.Code(err), codes.Unavailable; got != want {
		t.Errorf("client: got code %v (%v); want %v", got, err, want)
	}
	t.Logf("client: %v", err)
	expectErr(t, rec.handshakeErr(t), "first record does not look like a TLS handshake")
}

// The other failure this package fixes: a plain grpc.NewServer() on guardian's listener
// serves, and its handlers see no client certificate.
func TestPlainServerLosesCertificate(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.dial(e.issue("alice")).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if p := <-e.peers; p == nil || p.AuthInfo != nil {
		t.Errorf("got peer %+v; want one with no AuthInfo", p)
	}
}

func expectErr(t *testing.T, err error, wants ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error; want one saying %q", wants)
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("got error %q; want it to say %q", err, w)
		}
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
