package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"runtime"
	"time"
)

// MemoryStats is memory: the server's memory per idle conn, bare crypto/tls and guardian,
// at o.memConns conns each.
type MemoryStats struct {
	Conns int `json:"conns"`
	// Live heap plus goroutine stacks after a full GC, per held conn.
	BarePerConn     float64 `json:"bare_bytes_per_conn"`
	GuardianPerConn float64 `json:"guardian_bytes_per_conn"`
	Extra           float64 `json:"extra_bytes_per_conn"`
	// The two parts: guardian's tracking lives on the heap; the stacks differ because a
	// bare server handshakes on the conn's own goroutine (its stack grows and stays
	// grown while the conn idles) and guardian handshakes before Accept on a short-lived one.
	BareHeap      float64 `json:"bare_heap_bytes_per_conn"`
	GuardianHeap  float64 `json:"guardian_heap_bytes_per_conn"`
	ExtraHeap     float64 `json:"extra_heap_bytes_per_conn"`
	BareStack     float64 `json:"bare_stack_bytes_per_conn"`
	GuardianStack float64 `json:"guardian_stack_bytes_per_conn"`
}

// liveBytes is the process's live heap and goroutine stacks after two full collections
// (the second lets stacks shrink and finalizers run).
func liveBytes() (heap, stack float64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc), float64(m.StackInuse)
}

type perConn struct{ heap, stack float64 }

func memory(ctx context.Context, h *harness, cl *client) (*MemoryStats, error) {
	n := h.node
	_, names, err := issue(h.ca, h.dir, "mem", 100, h.o.progressTo)
	if err != nil {
		return nil, err
	}
	all := specs(names, h.o.memConns, 1, 1)
	measure := func(which string) (perConn, error) {
		var none perConn
		inner, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return none, err
		}
		var l net.Listener = tls.NewListener(inner, n.bareConfig())
		stop := func() { l.Close() }
		if which == "guardian" {
			gl, err := n.listen()
			if err != nil {
				inner.Close()
				return none, err
			}
			inner.Close()
			l, stop = gl, func() { shutdownNow(gl) }
		}
		defer stop()
		var srv heldServer
		go srv.serve(l)
		heap0, stack0 := liveBytes()
		if err := cl.dial(l.Addr().String(), h.caFile(), all, false, "memory: "+which+" conns", h.o.progressTo); err != nil {
			return none, err
		}
		if err := srv.waitHeld(int64(h.o.memConns), time.Minute); err != nil {
			return none, err
		}
		heap1, stack1 := liveBytes()
		per := perConn{(heap1 - heap0) / float64(h.o.memConns), (stack1 - stack0) / float64(h.o.memConns)}
		cl.send(clientCmd{Cmd: "close"})
		if _, err := cl.await("done", time.Minute, nil, nil); err != nil {
			return none, err
		}
		if err := srv.waitHeld(0, time.Minute); err != nil {
			return none, fmt.Errorf("after the client closed: %w", err)
		}
		return per, nil
	}
	bare, err := measure("bare")
	if err != nil {
		return nil, err
	}
	guard, err := measure("guardian")
	if err != nil {
		return nil, err
	}
	s := &MemoryStats{Conns: h.o.memConns, BarePerConn: bare.heap + bare.stack, GuardianPerConn: guard.heap + guard.stack,
		BareHeap: bare.heap, GuardianHeap: guard.heap, ExtraHeap: guard.heap - bare.heap,
		BareStack: bare.stack, GuardianStack: guard.stack}
	s.Extra = s.GuardianPerConn - s.BarePerConn
	return s, nil
}
