package grpccreds_test

import (
	"context"
	"crypto/tls"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/listener/grpccreds"
	"github.com/guardian-mtls/guardian/pkitest"
	"github.com/guardian-mtls/guardian/revoke"
)

// env is a real gRPC server, serving the health service, on guardian's listener on a
// loopback port, with a real revocation Set.
type env struct {
	t      *testing.T
	ca     *pkitest.CA
	server *pkitest.Leaf
	set    *revoke.Set
	addr   string
	health *health.Server
	// peers receives the peer of each Check call, as its handler saw it.
	peers chan *peer.Peer
}

// newEnv starts the server with the credentials creds returns; nil creds: none, as with a
// plain grpc.NewServer().
func newEnv(t *testing.T, creds func(e *env) credentials.TransportCredentials) *env {
	t.Helper()
	e := &env{t: t, ca: pkitest.NewCA(t), health: health.NewServer(), peers: make(chan *peer.Peer, 16)}
	e.server = e.ca.MustIssue(t, pkitest.Opts{CommonName: "server", DNS: []string{"localhost"}})
	set, err := revoke.NewSet(revoke.SetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.set = set
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := listener.New(inner, listener.Config{
		Set: set,
		Audiences: []listener.Audience{{
			Name: "grpc", SNI: []string{"localhost"}, Certificates: []tls.Certificate{e.server.TLS()},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: e.ca.Pool(),
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.addr = inner.Addr().String()
	var opts []grpc.ServerOption
	if creds != nil {
		opts = append(opts, grpc.Creds(creds(e)))
	}
	srv := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(srv, recordingHealth{Server: e.health, peers: e.peers})
	// After serve's srv.Stop (the last cleanup added runs first), which closes the listener
	// and every conn the server holds: the listener must then hold none, and end.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := l.Shutdown(ctx); err != nil {
			t.Errorf("listener Shutdown after the gRPC server stopped: %v (%d conns still open)", err, l.Len())
		}
	})
	serve(t, srv, l)
	return e
}

// serve serves srv on l until the test ends.
func serve(t *testing.T, srv *grpc.Server, l net.Listener) {
	t.Helper()
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
}

// guardianCreds is the credentials under test.
func guardianCreds(*env) credentials.TransportCredentials { return grpccreds.New() }

// recordingHealth is the health service whose Check handler records its caller's peer.
type recordingHealth struct {
	*health.Server
	peers chan *peer.Peer
}

func (h recordingHealth) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	p, _ := peer.FromContext(ctx)
	h.peers <- p
	return h.Server.Check(ctx, req)
}

// issue returns a client certificate named name, with the URI spiffe://test/<name>.
func (e *env) issue(name string) *pkitest.Leaf {
	e.t.Helper()
	return e.ca.MustIssue(e.t, pkitest.Opts{CommonName: name, URIs: []string{"spiffe://test/" + name}})
}

// dial returns a health client with leaf's certificate, on a conn of its own.
func (e *env) dial(leaf *pkitest.Leaf) healthpb.HealthClient {
	e.t.Helper()
	cfg := &tls.Config{RootCAs: e.ca.Pool(), ServerName: "localhost", Certificates: []tls.Certificate{leaf.TLS()}}
	return dial(e.t, e.addr, cfg)
}

func dial(t *testing.T, addr string, cfg *tls.Config) healthpb.HealthClient {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return healthpb.NewHealthClient(cc)
}

// revokeURI revokes leaf by its URI.
func (e *env) revokeURI(leaf *pkitest.Leaf) {
	e.t.Helper()
	k, err := revoke.KeyFor(leaf.Cert, revoke.KindURI)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.set.Add(revoke.SourceAPI, revoke.Entry{Key: k, Reason: "keyCompromise", RevokedAt: time.Now()}); err != nil {
		e.t.Fatal(err)
	}
}

// watch opens a Watch stream on service and returns what it receives, in order: each
// response, then the stream's error, after which the channel is closed.
func watch(t *testing.T, c healthpb.HealthClient, service string) <-chan recvResult {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := c.Watch(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		cancel()
		t.Fatalf("Watch(%q): %v", service, err)
	}
	out := make(chan recvResult, 16)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(out)
		for {
			resp, err := stream.Recv()
			out <- recvResult{resp, err}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return out
}

type recvResult struct {
	resp *healthpb.HealthCheckResponse
	err  error
}

// next waits, with a generous deadline, for the stream's next result.
func next(t *testing.T, stream <-chan recvResult, what string) recvResult {
	t.Helper()
	select {
	case r, ok := <-stream:
		if !ok {
			t.Fatalf("%s: stream already ended", what)
		}
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: nothing received in 10s", what)
	}
	panic("unreachable")
}

// expectStatus waits for the stream's next message and checks its status.
func expectStatus(t *testing.T, stream <-chan recvResult, want healthpb.HealthCheckResponse_ServingStatus, what string) {
	t.Helper()
	r := next(t, stream, what)
	if r.err != nil {
		t.Fatalf("%s: got error %v; want status %v", what, r.err, want)
	}
	if got := r.resp.GetStatus(); got != want {
		t.Fatalf("%s: got status %v; want %v", what, got, want)
	}
}

// recordingCreds records the error of each ServerHandshake of the credentials it wraps, as
// the gRPC server got it.
type recordingCreds struct {
	credentials.TransportCredentials
	errs chan error
}

func record(c credentials.TransportCredentials) recordingCreds {
	return recordingCreds{TransportCredentials: c, errs: make(chan error, 16)}
}

func (r recordingCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := r.TransportCredentials.ServerHandshake(c)
	if err != nil {
		r.errs <- err
	}
	return conn, info, err
}

// handshakeErr waits, with a generous deadline, for the server's next handshake error.
func (r recordingCreds) handshakeErr(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.errs:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("the server recorded no handshake error in 10s")
	}
	panic("unreachable")
}
