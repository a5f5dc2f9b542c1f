package main

import (
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/redistest"
)

// reconnectLoad is clients that reconnect without pause — every request a new conn with a
// full mTLS handshake — as a fleet of clients does while its terminator restarts.
type reconnectLoad struct {
	stop chan struct{}
	wg   sync.WaitGroup
	// served counts the requests of each certificate answered 200; servedAfter those of them
	// that began after the certificate's revocation had been written (forbidden).
	mu          sync.Mutex
	served      map[string]int
	failed      map[string]int
	servedAfter map[string]int
	revokedAt   map[string]time.Time
}

func startReconnectLoad(t *testing.T, d *runningDemo, port string, names ...string) *reconnectLoad {
	l := &reconnectLoad{stop: make(chan struct{}), served: map[string]int{}, failed: map[string]int{},
		servedAfter: map[string]int{}, revokedAt: map[string]time.Time{}}
	for _, name := range names {
		for range 3 {
			c := d.client(t, name)
			c.Transport.(*http.Transport).DisableKeepAlives = true
			c.Timeout = 5 * time.Second
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				for {
					select {
					case <-l.stop:
						return
					default:
					}
					began := time.Now()
					resp, err := c.Get("https://localhost:" + port + "/")
					ok := err == nil && resp.StatusCode == http.StatusOK
					if err == nil {
						resp.Body.Close()
					}
					l.mu.Lock()
					if ok {
						l.served[name]++
						if at, revoked := l.revokedAt[name]; revoked && began.After(at) {
							l.servedAfter[name]++
						}
					} else {
						l.failed[name]++
					}
					l.mu.Unlock()
					if !ok {
						time.Sleep(5 * time.Millisecond) // refused or down: retry at once, as clients do
					}
				}
			}()
		}
	}
	t.Cleanup(l.end)
	return l
}

// revoked records that name's revocation has been written: from now on no request of it
// may be served.
func (l *reconnectLoad) revoked(name string) {
	l.mu.Lock()
	l.revokedAt[name] = time.Now()
	l.mu.Unlock()
}

func (l *reconnectLoad) count(name string) (served, failed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.served[name], l.failed[name]
}

// waitServed waits until name has been served n more times than now.
func (l *reconnectLoad) waitServed(t *testing.T, name string, n int) {
	t.Helper()
	from, _ := l.count(name)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if s, _ := l.count(name); s >= from+n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s served %d more times within 20s, want %d", name, func() int { s, _ := l.count(name); return s - from }(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (l *reconnectLoad) end() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// guardian restarted while clients reconnect as fast as they can, with the embedded store
// and on Redis: from the first conn the restarted node accepts, every revocation is in force
// — one made before the load, and one made while the load ran (embedded: through the node's
// admin API) or while no node ran (Redis) — and the certificate nobody revoked is served
// again by the restarted node.
func TestServeRestartUnderReconnectingLoad(t *testing.T) {
	for _, store := range []string{"embedded", "redis"} {
		t.Run(store, func(t *testing.T) {
			dir := t.TempDir()
			if err := writePKI(dir); err != nil {
				t.Fatal(err)
			}
			var storeCfg, redisURL string
			var proxy *redistest.Proxy
			if store == "embedded" {
				storeCfg = "store: embedded\n  embedded: { path: state.db }"
			} else {
				// The node reaches Redis through a proxy, slowed for the restart: the
				// snapshot then takes a while to arrive, and the port must not open before
				// it has. The CLI writes to Redis directly.
				srv := redistest.Start(t, redistest.Options{})
				redisURL = srv.URL()
				proxy = redistest.NewProxy(t, srv.Addr())
				storeCfg = fmt.Sprintf("store: redis\n  redis: { url: %q }", "redis://"+proxy.Addr()+"/0")
			}
			// A fixed port, so that the restarted node is where the clients reconnect.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			_, port, _ := net.SplitHostPort(ln.Addr().String())
			ln.Close()
			cfg := strings.Replace(fmt.Sprintf(serveConfig, storeCfg, ""), `listen: "127.0.0.1:0"`, `listen: "127.0.0.1:`+port+`"`, 1)
			// on_stale: open, so that it is the snapshot read before the port opens that
			// keeps revoked clients out, not a stale node refusing everyone.
			cfg = strings.Replace(cfg, "on_stale: closed", "on_stale: open", 1)

			s := startServe(t, dir, cfg)
			d := s.demoView()
			revoke := func(name string) {
				t.Helper()
				args := []string{"revoke", "--cert", filepath.Join(dir, name+".pem")}
				if redisURL != "" {
					args = append(args, "--redis", redisURL)
				} else {
					args = append(args, d.adminArgs("admin")...)
				}
				if out, code := d.cli(t, args...); code != 0 {
					t.Fatalf("revoke %s: %s", name, out)
				}
			}
			revoke("client")
			load := startReconnectLoad(t, d, port, "client", "client2", "admin")
			load.revoked("client")
			load.waitServed(t, "admin", 20)
			load.waitServed(t, "client2", 20)
			if redisURL == "" {
				revoke("client2") // the embedded store must have persisted it
				load.revoked("client2")
			}
			s.stop()
			down := time.Now()
			if redisURL != "" {
				// Written while no node runs: the restarted node must read it before its port opens.
				revoke("client2")
				load.revoked("client2")
			}
			if proxy != nil {
				proxy.SetDelay(150 * time.Millisecond)
			}
			_, failedBefore := load.count("admin")
			time.Sleep(300 * time.Millisecond) // clients hammer a closed port meanwhile
			s2 := startServe(t, dir, cfg)
			t.Logf("down for %s", time.Since(down).Round(time.Millisecond))
			load.waitServed(t, "admin", 20) // served again by the restarted node
			load.end()
			for _, name := range []string{"client", "client2", "admin"} {
				served, failed := load.count(name)
				t.Logf("%s: %d served, %d refused or failed, %d served after its revocation", name, served, failed, load.servedAfter[name])
				if load.servedAfter[name] != 0 {
					t.Errorf("%s served %d times after its revocation was written", name, load.servedAfter[name])
				}
			}
			if _, failed := load.count("admin"); failed == failedBefore {
				t.Fatal("no request failed while the node was down (test premise broken: did it restart?)")
			}
			s2.stop()
		})
	}
}
