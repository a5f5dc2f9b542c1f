// Package ratelog bounds the log lines that outsiders can trigger. A Handler wraps a
// slog.Handler and lets through, per message, a burst and then one record per interval;
// the records it drops are counted on the next one it lets through (attribute
// "suppressed"), so a flood of refused requests costs a few lines, not one per request.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Handler is a rate-limiting slog.Handler. Create one with New.
type Handler struct {
	next  slog.Handler
	state *state
}

type state struct {
	burst  int
	every  time.Duration
	now    func() time.Time
	shared bool // one rate for every message

	mu   sync.Mutex
	msgs map[string]*bucket
}

type bucket struct {
	tokens     float64
	last       time.Time
	suppressed int
}

// maxMessages bounds the messages tracked; messages are constants in guardian's code, so
// the bound is only a guard against a caller that puts client data in one.
const maxMessages = 1024

// New returns a handler over next that lets through, for each distinct message, burst
// records at once and then one per every. burst ≤ 0 means 10; every ≤ 0 means a second.
func New(next slog.Handler, burst int, every time.Duration) *Handler {
	if burst <= 0 {
		burst = 10
	}
	if every <= 0 {
		every = time.Second
	}
	return &Handler{next: next, state: &state{burst: burst, every: every, now: time.Now, msgs: map[string]*bucket{}}}
}

// Shared is New with one rate for all messages together: for a log.Logger bridge, whose
// every line is a message of its own.
func Shared(next slog.Handler, burst int, every time.Duration) *Handler {
	h := New(next, burst, every)
	h.state.shared = true
	return h
}

// Logger is New over l's handler, as a *slog.Logger; nil l means a discarding logger.
func Logger(l *slog.Logger, burst int, every time.Duration) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(New(l.Handler(), burst, every))
}

// Enabled reports whether the wrapped handler logs at level.
func (h *Handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

// Handle passes r on unless its message has used up its rate.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	n, ok := h.state.allow(r.Message)
	if !ok {
		return nil
	}
	if n > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("suppressed", n))
	}
	return h.next.Handle(ctx, r)
}

// WithAttrs and WithGroup share the rate state: the limit is per message, whatever the
// attributes.
func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	return &Handler{next: h.next.WithAttrs(as), state: h.state}
}

func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{next: h.next.WithGroup(name), state: h.state}
}

// allow takes a token for msg; it returns how many records were dropped since the last
// one let through.
func (s *state) allow(msg string) (int, bool) {
	if s.shared {
		msg = ""
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.msgs[msg]
	if b == nil {
		if len(s.msgs) >= maxMessages {
			clear(s.msgs)
		}
		b = &bucket{tokens: float64(s.burst), last: now}
		s.msgs[msg] = b
	}
	b.tokens = min(float64(s.burst), b.tokens+float64(now.Sub(b.last))/float64(s.every))
	b.last = now
	if b.tokens < 1 {
		b.suppressed++
		return 0, false
	}
	b.tokens--
	n := b.suppressed
	b.suppressed = 0
	return n, true
}
