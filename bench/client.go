package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// The client process: it holds mTLS conns for the harness and reports, as JSON lines on
// stdout, the wall-clock moment each conn ends. Commands arrive as JSON lines on stdin.
// Running clients in their own process keeps each process under the fd limit and keeps the
// server's measurements free of client work.

type clientCmd struct {
	Cmd   string     `json:"cmd"` // dial | close
	Addr  string     `json:"addr,omitempty"`
	CA    string     `json:"ca,omitempty"`
	Certs []certSpec `json:"certs,omitempty"`
}

type certSpec struct {
	Cert, Key string
	Tag       int // reported with each close
	N         int // conns to open with this certificate
}

type clientEvent struct {
	Ev     string `json:"ev"` // ready | close | error | done
	Tag    int    `json:"tag,omitempty"`
	At     int64  `json:"at,omitempty"` // unix nanos
	N      int    `json:"n,omitempty"`
	Failed int    `json:"failed,omitempty"`
	Err    string `json:"err,omitempty"`
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
	var conns []net.Conn
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
			n, failed, err := dialAll(c, emit, func(tc net.Conn) {
				cmu.Lock()
				conns = append(conns, tc)
				cmu.Unlock()
			})
			if err != nil {
				emit(clientEvent{Ev: "error", Err: err.Error()})
				continue
			}
			emit(clientEvent{Ev: "ready", N: n, Failed: failed})
		case "close":
			cmu.Lock()
			for _, tc := range conns {
				tc.Close()
			}
			conns = nil
			cmu.Unlock()
			emit(clientEvent{Ev: "done"})
		}
	}
	return sc.Err()
}

func dialAll(c clientCmd, emit func(clientEvent), keep func(net.Conn)) (int, int, error) {
	pem, err := os.ReadFile(c.CA)
	if err != nil {
		return 0, 0, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	type job struct {
		cert tls.Certificate
		tag  int
	}
	jobs := make(chan job)
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok, failed := 0, 0
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", c.Addr, &tls.Config{
					RootCAs: pool, ServerName: "localhost", Certificates: []tls.Certificate{j.cert}, NextProtos: []string{"http/1.1"},
				})
				if err == nil {
					// One byte: the server has finished its side of the handshake and holds the conn.
					_, err = tc.Write([]byte{'x'})
				}
				mu.Lock()
				if err != nil {
					failed++
					mu.Unlock()
					continue
				}
				ok++
				mu.Unlock()
				keep(tc)
				go func(tc *tls.Conn, tag int) {
					buf := make([]byte, 1)
					for {
						if _, err := tc.Read(buf); err != nil {
							emit(clientEvent{Ev: "close", Tag: tag, At: time.Now().UnixNano()})
							return
						}
					}
				}(tc, j.tag)
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
		for i := 0; i < spec.N; i++ {
			jobs <- job{cert: cert, tag: spec.Tag}
		}
	}
	close(jobs)
	wg.Wait()
	return ok, failed, nil
}
