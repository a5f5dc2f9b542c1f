package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The client process: it holds mTLS conns and drives request and handshake load for the
// harness, and reports, as JSON lines on stdout, the wall-clock moment each held conn ends.
// Commands arrive as JSON lines on stdin. Running clients in their own process keeps each
// process under the fd limit and keeps the server's measurements free of client work.

type clientCmd struct {
	Cmd   string     `json:"cmd"` // dial | load | report | close | tcp-bulk | tcp-conns
	Addr  string     `json:"addr,omitempty"`
	CA    string     `json:"ca,omitempty"`
	Certs []certSpec `json:"certs,omitempty"`
	// HTTP: each held conn makes one HTTP/1.1 request and then idles as a keep-alive conn
	// (for servers that speak HTTP: the peers); otherwise it writes one byte and idles.
	HTTP bool `json:"http,omitempty"`
	// Hold: the conns' close events are kept in the client process until a "report"
	// command instead of streamed, so that reporting thousands of closes does not take CPU
	// from the server while it evicts. Timestamps are still taken when each close is seen.
	Hold bool `json:"hold,omitempty"`
	// load: Mode "requests" (keep-alive conns, one request after another) or "handshakes"
	// (a new conn, a full mTLS handshake and one request, then close), by Workers
	// goroutines for Duration.
	Mode     string        `json:"mode,omitempty"`
	Workers  int           `json:"workers,omitempty"`
	Duration time.Duration `json:"duration,omitempty"`
	// tcp-bulk (the tcp scenario): one conn moves Bytes to the upstream (Dir "up") or from
	// it ("down"); tcp-conns: Workers open conns for Duration, each a full mTLS handshake,
	// a small message echoed by the upstream, and a close.
	Bytes int64  `json:"bytes,omitempty"`
	Dir   string `json:"dir,omitempty"`
}

type certSpec struct {
	Cert, Key string
	Tag       int // reported with each close
	N         int // conns to open with this certificate
}

type clientEvent struct {
	Ev     string `json:"ev"` // progress | ready | close | loaded | bulked | reported | error | done
	Tag    int    `json:"tag,omitempty"`
	At     int64  `json:"at,omitempty"` // unix nanos
	N      int    `json:"n,omitempty"`
	Failed int    `json:"failed,omitempty"`
	Err    string `json:"err,omitempty"`
	Dur    int64  `json:"dur,omitempty"`  // tcp-bulk, tcp-conns: nanoseconds the client measured
	Info   string `json:"info,omitempty"` // tcp-bulk: the TLS version, cipher suite and key exchange
}

func clientMain(in io.Reader, out io.Writer) error {
	// One writer goroutine batches events: thousands of closes at once must not cost a
	// write(2) each on the cores the server under test is using. Timestamps are taken
	// where the close is seen, before queueing.
	events := make(chan clientEvent, 1<<16)
	go func() {
		bw := bufio.NewWriterSize(out, 1<<16)
		enc := json.NewEncoder(bw)
		for e := range events {
			enc.Encode(e)
			for drained := false; !drained; {
				select {
				case e := <-events:
					enc.Encode(e)
				default:
					drained = true
				}
			}
			bw.Flush()
		}
	}()
	emit := func(e clientEvent) { events <- e }
	watch, err := newWatcher()
	if err != nil {
		return err
	}
	var conns []net.Conn
	var held []clientEvent // close events of Hold conns, until "report"
	var cmu sync.Mutex
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var c clientCmd
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			emit(clientEvent{Ev: "error", Err: err.Error()})
			continue
		}
		switch c.Cmd {
		case "dial":
			onClose := emit
			if c.Hold {
				onClose = func(e clientEvent) {
					cmu.Lock()
					held = append(held, e)
					cmu.Unlock()
				}
			}
			n, failed, err := dialAll(c, watch, emit, onClose, func(tc net.Conn) {
				cmu.Lock()
				conns = append(conns, tc)
				cmu.Unlock()
			})
			if err != nil {
				emit(clientEvent{Ev: "error", Err: err.Error()})
				continue
			}
			emit(clientEvent{Ev: "ready", N: n, Failed: failed})
		case "load":
			n, failed, err := load(c)
			if err != nil {
				emit(clientEvent{Ev: "error", Err: err.Error()})
				continue
			}
			emit(clientEvent{Ev: "loaded", N: n, Failed: failed})
		case "tcp-bulk":
			e, err := tcpBulk(c)
			if err != nil {
				emit(clientEvent{Ev: "error", Err: err.Error()})
				continue
			}
			emit(e)
		case "tcp-conns":
			e, err := tcpConns(c)
			if err != nil {
				emit(clientEvent{Ev: "error", Err: err.Error()})
				continue
			}
			emit(e)
		case "report":
			cmu.Lock()
			out := held
			held = nil
			cmu.Unlock()
			for _, e := range out {
				emit(e)
			}
			emit(clientEvent{Ev: "reported", N: len(out)})
		case "close":
			watch.closeAll()
			cmu.Lock()
			for _, tc := range conns {
				tc.Close()
			}
			conns = nil
			cmu.Unlock()
			emit(clientEvent{Ev: "done"})
		default:
			emit(clientEvent{Ev: "error", Err: fmt.Sprintf("unknown command %q", c.Cmd)})
		}
	}
	return sc.Err()
}

func clientTLS(caFile string, cert tls.Certificate) (*tls.Config, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate", caFile)
	}
	return &tls.Config{RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}, nil
}

const request = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"

func dialAll(c clientCmd, watch *watcher, emit, onClose func(clientEvent), keep func(net.Conn)) (int, int, error) {
	type job struct {
		cfg *tls.Config
		tag int
	}
	total := 0
	for _, spec := range c.Certs {
		total += spec.N
	}
	jobs := make(chan job)
	var wg sync.WaitGroup
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				tc, br, err := dialOne(c, j.cfg)
				if err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					failed.Add(1)
					continue
				}
				if n := ok.Add(1); n%500 == 0 {
					emit(clientEvent{Ev: "progress", N: int(n), Failed: int(failed.Load())})
				}
				if !c.HTTP && watch != nil {
					// The server wrote nothing, so nothing is buffered in tc: the kernel's
					// view of the socket is the whole story from here.
					if err := watch.add(tc.NetConn(), j.tag, onClose); err != nil {
						firstErr.CompareAndSwap(nil, err.Error())
					}
					continue
				}
				keep(tc)
				go func(tag int) {
					buf := make([]byte, 1)
					for {
						if _, err := br.Read(buf); err != nil {
							onClose(clientEvent{Ev: "close", Tag: tag, At: time.Now().UnixNano()})
							return
						}
					}
				}(j.tag)
			}
		}()
	}
	for _, spec := range c.Certs {
		cert, err := tls.LoadX509KeyPair(spec.Cert, spec.Key)
		if err != nil {
			close(jobs)
			wg.Wait()
			return 0, 0, fmt.Errorf("load %s: %w", spec.Cert, err)
		}
		cfg, err := clientTLS(c.CA, cert)
		if err != nil {
			close(jobs)
			wg.Wait()
			return 0, 0, err
		}
		for i := 0; i < spec.N; i++ {
			jobs <- job{cfg: cfg, tag: spec.Tag}
		}
	}
	close(jobs)
	wg.Wait()
	if failed.Load() > 0 && ok.Load() == 0 {
		return 0, int(failed.Load()), fmt.Errorf("every dial failed, e.g. %v", firstErr.Load())
	}
	return int(ok.Load()), int(failed.Load()), nil
}

// dialOne opens one held conn: after it returns, the server has finished its side of the
// handshake and holds the conn.
func dialOne(c clientCmd, cfg *tls.Config) (*tls.Conn, *bufio.Reader, error) {
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", c.Addr, cfg)
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(tc, 512)
	if !c.HTTP {
		if _, err := tc.Write([]byte{'x'}); err != nil {
			tc.Close()
			return nil, nil, err
		}
		return tc, br, nil
	}
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(tc, request); err != nil {
		tc.Close()
		return nil, nil, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		tc.Close()
		return nil, nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		tc.Close()
		return nil, nil, fmt.Errorf("status %s", resp.Status)
	}
	tc.SetDeadline(time.Time{})
	return tc, br, nil
}

// load drives request or handshake load for c.Duration and returns the operations done.
func load(c clientCmd) (int, int, error) {
	if len(c.Certs) == 0 || c.Workers <= 0 || c.Duration <= 0 {
		return 0, 0, fmt.Errorf("load needs a certificate, workers and a duration")
	}
	cert, err := tls.LoadX509KeyPair(c.Certs[0].Cert, c.Certs[0].Key)
	if err != nil {
		return 0, 0, fmt.Errorf("load %s: %w", c.Certs[0].Cert, err)
	}
	cfg, err := clientTLS(c.CA, cert)
	if err != nil {
		return 0, 0, err
	}
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := time.Now().Add(c.Duration)
	var wg sync.WaitGroup
	for w := 0; w < c.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var tc *tls.Conn
			var br *bufio.Reader
			for time.Now().Before(stop) {
				if tc == nil {
					var err error
					if tc, err = tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", c.Addr, cfg); err != nil {
						firstErr.CompareAndSwap(nil, err.Error())
						failed.Add(1)
						time.Sleep(time.Millisecond)
						continue
					}
					br = bufio.NewReaderSize(tc, 4096)
				}
				err := roundTrip(tc, br)
				if err == nil {
					ok.Add(1)
				} else {
					firstErr.CompareAndSwap(nil, err.Error())
					failed.Add(1)
				}
				if err != nil || c.Mode == "handshakes" {
					tc.Close()
					tc = nil
				}
			}
			if tc != nil {
				tc.Close()
			}
		}()
	}
	wg.Wait()
	if ok.Load() == 0 {
		return 0, int(failed.Load()), fmt.Errorf("no %s succeeded, e.g. %v", c.Mode, firstErr.Load())
	}
	return int(ok.Load()), int(failed.Load()), nil
}

func roundTrip(tc *tls.Conn, br *bufio.Reader) error {
	if _, err := io.WriteString(tc, request); err != nil {
		return err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return err
}
