package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// progress draws a one-line bar for a long phase on w (the harness's stderr), redrawn at
// most ten times a second. A nil *progress draws nothing.
type progress struct {
	w     io.Writer
	label string
	total int
	start time.Time
	last  time.Time
	n     int
}

func newProgress(w io.Writer, label string, total int) *progress {
	if w == nil || w == io.Discard || total <= 0 {
		return nil
	}
	p := &progress{w: w, label: label, total: total, start: time.Now()}
	p.draw()
	return p
}

func (p *progress) set(n int) {
	if p == nil {
		return
	}
	p.n = min(n, p.total)
	if time.Since(p.last) >= 100*time.Millisecond || p.n == p.total {
		p.draw()
	}
}

func (p *progress) draw() {
	const width = 30
	fill := width * p.n / p.total
	fmt.Fprintf(p.w, "\r  %-40s [%s%s] %d/%d  %.1fs", p.label, strings.Repeat("#", fill), strings.Repeat(" ", width-fill),
		p.n, p.total, time.Since(p.start).Seconds())
	p.last = time.Now()
}

// done draws the bar full and ends its line.
func (p *progress) done() {
	if p == nil {
		return
	}
	p.n = p.total
	p.draw()
	fmt.Fprintln(p.w)
}
