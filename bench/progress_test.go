package main

import (
	"bytes"
	"strings"
	"testing"
)

// Written to a file or pipe (a CI log), progress is plain lines — no carriage returns, no
// line of kilobytes — and says when the phase is done.
func TestProgressPlainWhenNotATerminal(t *testing.T) {
	var out bytes.Buffer
	p := newProgress(&out, "dialling", 1000)
	for i := 0; i <= 1000; i++ {
		p.set(i)
	}
	p.done()
	s := out.String()
	if strings.Contains(s, "\r") {
		t.Fatalf("carriage returns in a non-terminal's progress: %q", s)
	}
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "0/1000") || !strings.Contains(lines[1], "1000/1000") {
		t.Fatalf("got %q; want a line at the start and one at the end", lines)
	}
}
