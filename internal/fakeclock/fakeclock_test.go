package fakeclock_test

import (
	"testing"
	"time"

	"github.com/guardian-mtls/guardian/internal/fakeclock"
)

// Pending lists the armed timers, earliest first, until they fire or are stopped.
func TestPending(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	c := fakeclock.New(start)
	if p := c.Pending(); len(p) != 0 {
		t.Fatalf("new clock: Pending = %v; want none", p)
	}
	fired := make(chan string, 3)
	c.AfterFunc(2*time.Hour, func() { fired <- "2h" })
	stop := c.AfterFunc(3*time.Hour, func() { fired <- "3h" })
	c.AfterFunc(time.Hour, func() { fired <- "1h" })
	c.AfterFunc(0, func() { fired <- "now" }) // runs at once, never pending
	if got := <-fired; got != "now" {
		t.Fatalf("fired %q; want the timer of 0", got)
	}
	if p := c.Pending(); len(p) != 3 || !p[0].Equal(start.Add(time.Hour)) || !p[1].Equal(start.Add(2*time.Hour)) || !p[2].Equal(start.Add(3*time.Hour)) {
		t.Fatalf("Pending = %v; want 1h, 2h, 3h after the start", p)
	}
	if !stop() {
		t.Fatal("stop of an armed timer reported false")
	}
	c.Advance(90 * time.Minute)
	if got := <-fired; got != "1h" {
		t.Fatalf("fired %q; want 1h", got)
	}
	if p := c.Pending(); len(p) != 1 || !p[0].Equal(start.Add(2*time.Hour)) {
		t.Fatalf("Pending = %v; want only the 2h timer (1h fired, 3h stopped)", p)
	}
	c.Advance(10 * time.Hour)
	if got := <-fired; got != "2h" {
		t.Fatalf("fired %q; want 2h", got)
	}
	if p := c.Pending(); len(p) != 0 {
		t.Fatalf("Pending = %v; want none", p)
	}
	select {
	case got := <-fired:
		t.Fatalf("the stopped timer fired: %q", got)
	case <-time.After(10 * time.Millisecond):
	}
}
