package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progress draws a one-line bar for a long phase on w (the harness's stderr), redrawn at
// most ten times a second. Where w is not a terminal (a CI log), it prints a plain line
// every plainEvery instead: a bar redrawn with carriage returns there is one line of
// kilobytes. A nil *progress draws nothing.
type progress struct {
	w     io.Writer
	plain bool
	label string
	total int
	start time.Time
	last  time.Time
	n     int
}

const plainEvery = 5 * time.Second

func newProgress(w io.Writer, label string, total int) *progress {
	if w == nil || w == io.Discard || total <= 0 {
		return nil
	}
	p := &progress{w: w, plain: !isTerminal(w), label: label, total: total, start: time.Now()}
	p.draw()
	return p
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func (p *progress) set(n int) {
	if p == nil {
		return
	}
	p.n = min(n, p.total)
	every := 100 * time.Millisecond
	if p.plain {
		every = plainEvery
	}
	if time.Since(p.last) >= every || (p.n == p.total && !p.plain) {
		p.draw()
	}
}

func (p *progress) draw() {
	if p.plain {
		fmt.Fprintf(p.w, "  %s: %d/%d  %.1fs\n", p.label, p.n, p.total, time.Since(p.start).Seconds())
		p.last = time.Now()
		return
	}
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
	if !p.plain {
		fmt.Fprintln(p.w)
	}
}
