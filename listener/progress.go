package listener

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Progress wraps an HTTP handler so that a request in flight on a conn of this listener
// must keep moving, within its audience's IdleTimeout: a read of its body that waits
// longer (a POST that never sends the body it announced, an upload that pauses longer), or
// a write of its response that waits longer (an HTTP/2 client that opens no flow-control
// window, an HTTP/1.1 client that stops reading), fails, and the request ends. IdleTimeout
// through ConnState sees only conns with no request in flight; this covers the ones a
// client keeps "in flight". A response that is only quiet between writes is not cut: the
// deadline runs only while a write waits. With the audience's MinBodyRate a body must also
// keep up that average, counting only the time its reads wait. WebSockets, once hijacked,
// are the handler's. The deadlines replace an http.Server's ReadTimeout and WriteTimeout
// for these conns. It needs ConnState as the server's ConnState.
func (l *Listener) Progress(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info, ok := FromContext(r.Context())
		if ok && info.aud != nil && info.aud.MaxConnLifetime > 0 && l.clock.Now().Sub(info.Since()) >= info.aud.MaxConnLifetime {
			// Past its lifetime: this response ends the conn (HTTP/2: with a GOAWAY).
			w.Header().Set("Connection", "close")
		}
		if !ok || info.aud == nil || info.aud.IdleTimeout <= 0 {
			next.ServeHTTP(w, r)
			return
		}
		d := info.aud.IdleTimeout
		rc := http.NewResponseController(w)
		var body *progressBody
		if r.Body != nil && r.Body != http.NoBody {
			body = &progressBody{ReadCloser: r.Body, rc: rc, d: d, rate: info.aud.MinBodyRate}
			r.Body = body
		}
		pw := &progressWriter{ResponseWriter: w, rc: rc, d: d}
		next.ServeHTTP(pw, r)
		if body != nil {
			// The body may still be read after the handler returned — httputil.ReverseProxy's
			// transport copies it on a goroutine of its own — when a ResponseController of
			// the finished request must not be touched (net/http's HTTP/2 writer panics).
			body.finish()
		}
		switch {
		case pw.hijacked:
		case r.ProtoMajor >= 2:
			// The stream's buffered data goes now, under a deadline that is cleared after:
			// one left set on a stream that then closes would be a timer nobody stops.
			pw.Flush()
		default:
			// What the HTTP/1.1 server still writes after the handler returns (its buffer,
			// which keeps its Content-Length if it fits), and the rest of a body it reads to
			// reuse the conn, must go within d as well; ConnState clears them at idle.
			rc.SetWriteDeadline(time.Now().Add(d))
			if body != nil && !body.eof.Load() {
				rc.SetReadDeadline(time.Now().Add(d))
			}
		}
	})
}

type progressBody struct {
	io.ReadCloser
	rc     *http.ResponseController
	d      time.Duration
	rate   int           // bytes a second; 0: none
	n      int64         // bytes read
	waited time.Duration // in reads, waiting for the client
	// eof is read by the handler's goroutine after it returns, while a reverse proxy's
	// transport may still be reading the body on its own.
	eof atomic.Bool

	mu   sync.Mutex // held around rc's calls, so none runs once done is set
	done bool       // the handler returned
}

func (b *progressBody) finish() {
	b.mu.Lock()
	b.done = true
	b.mu.Unlock()
}

// setReadDeadline sets the request's read deadline unless the handler has returned.
func (b *progressBody) setReadDeadline(t time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.done {
		b.rc.SetReadDeadline(t)
	}
}

func (b *progressBody) Read(p []byte) (int, error) {
	wait, byRate := b.d, false
	if b.rate > 0 {
		// As Apache's mod_reqtimeout: d, and a second more for every rate bytes received —
		// counting only the time reads wait for the client, not the upstream's pace.
		r := int64(b.rate)
		allowed := b.d + time.Duration(b.n/r)*time.Second + time.Duration(b.n%r)*time.Second/time.Duration(r) - b.waited
		if allowed <= 0 {
			return 0, fmt.Errorf("listener: request body slower than %d bytes a second: %w", b.rate, os.ErrDeadlineExceeded)
		}
		if allowed < wait {
			wait, byRate = allowed, true
		}
	}
	start := time.Now()
	b.setReadDeadline(start.Add(wait))
	n, err := b.ReadCloser.Read(p)
	b.waited += time.Since(start)
	b.n += int64(n)
	if err == io.EOF {
		b.eof.Store(true)
	}
	if byRate && errors.Is(err, os.ErrDeadlineExceeded) {
		err = fmt.Errorf("listener: request body slower than %d bytes a second: %w", b.rate, err)
	}
	// No deadline between reads: net/http's HTTP/1.1 background read, which starts at the
	// body's end, would take one for the client going away.
	b.setReadDeadline(time.Time{})
	return n, err
}

type progressWriter struct {
	http.ResponseWriter
	rc       *http.ResponseController
	d        time.Duration
	hijacked bool
}

func (w *progressWriter) Write(p []byte) (int, error) {
	w.rc.SetWriteDeadline(time.Now().Add(w.d))
	n, err := w.ResponseWriter.Write(p)
	w.rc.SetWriteDeadline(time.Time{}) // an HTTP/2 stream's deadline is a timer: not while quiet
	return n, err
}

// Flush is for streaming responses (httputil.ReverseProxy flushes each chunk).
func (w *progressWriter) Flush() {
	w.rc.SetWriteDeadline(time.Now().Add(w.d))
	w.rc.Flush()
	w.rc.SetWriteDeadline(time.Time{})
}

// Hijack hands the conn over with no deadline left on it.
func (w *progressWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, rw, err := w.rc.Hijack()
	if err == nil {
		w.hijacked = true
		c.SetDeadline(time.Time{})
	}
	return c, rw, err
}

// Unwrap is for http.ResponseController.
func (w *progressWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
