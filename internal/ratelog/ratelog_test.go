package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestBurstThenRate(t *testing.T) {
	var buf bytes.Buffer
	h := New(slog.NewTextHandler(&buf, nil), 3, time.Second)
	now := time.Unix(1000, 0)
	h.state.now = func() time.Time { return now }
	log := slog.New(h).With("audience", "a")
	for range 100 {
		log.Warn("refused", "remote", "1.2.3.4")
	}
	log.Warn("other")
	if got := strings.Count(buf.String(), "msg=refused"); got != 3 {
		t.Fatalf("100 records in an instant: %d let through; want the burst, 3", got)
	}
	if !strings.Contains(buf.String(), "msg=other") {
		t.Fatal("another message was limited by the first one's rate")
	}
	now = now.Add(1500 * time.Millisecond)
	log.Warn("refused")
	last := buf.String()[strings.LastIndex(buf.String(), "msg=refused"):]
	if !strings.Contains(last, "suppressed=97") {
		t.Fatalf("the record after the pause: %q; want suppressed=97", last)
	}
	log.Warn("refused")
	if got := strings.Count(buf.String(), "msg=refused"); got != 4 {
		t.Fatalf("after 1.5 s: %d let through in all; want 4 (one token regained, half of another)", got)
	}
}

func TestShared(t *testing.T) {
	var buf bytes.Buffer
	h := Shared(slog.NewTextHandler(&buf, nil), 2, time.Hour)
	log := slog.New(h)
	for i := range 10 {
		log.Warn("line " + string(rune('a'+i)))
	}
	if got := strings.Count(buf.String(), "msg="); got != 2 {
		t.Fatalf("10 distinct lines through a shared rate of 2: %d let through", got)
	}
}
