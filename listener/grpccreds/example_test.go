package grpccreds_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/guardian-mtls/guardian/listener"
	"github.com/guardian-mtls/guardian/listener/grpccreds"
	"github.com/guardian-mtls/guardian/revoke"
)

// Serve gRPC on guardian's listener: its handlers see the client certificate, and revoking
// it in the Set closes the client's conn.
func Example() {
	roots, serverCert, clientCert := examplePKI() // your CA pool and certificates

	set, _ := revoke.NewSet(revoke.SetOptions{}) // fed by Redis, CRLs, OCSP or your own code
	inner, _ := net.Listen("tcp", "127.0.0.1:0")
	l, err := listener.New(inner, listener.Config{
		Set: set,
		Audiences: []listener.Audience{{
			Name: "grpc", SNI: []string{"localhost"},
			Certificates: []tls.Certificate{serverCert},
			ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: roots,
		}},
	})
	if err != nil {
		panic(err)
	}

	srv := grpc.NewServer(
		grpc.Creds(grpccreds.New()), // not credentials.NewTLS: the listener did the handshake
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
			p, _ := peer.FromContext(ctx)
			client := p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0]
			fmt.Println("server: call from", client.URIs[0])
			return next(ctx, req)
		}),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(l)
	defer srv.Stop() // closes l too

	cc, err := grpc.NewClient(inner.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: roots, Certificates: []tls.Certificate{clientCert}, ServerName: "localhost",
	})))
	if err != nil {
		panic(err)
	}
	defer cc.Close()
	resp, err := healthpb.NewHealthClient(cc).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		panic(err)
	}
	fmt.Println("client:", resp.GetStatus())
	// Output:
	// server: call from spiffe://example/alice
	// client: SERVING
}
