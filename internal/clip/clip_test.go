package clip_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/guardian-mtls/guardian/internal/clip"
)

func TestString(t *testing.T) {
	for _, c := range []struct {
		s    string
		n    int
		want string
	}{
		{"", 0, ""},
		{"", 5, ""},
		{"abc", 3, "abc"},
		{"abc", 10, "abc"},
		{"abcd", 3, "abc…"},
		{"abc", 0, "…"},
		{"abc", -1, "…"},
		// "é" is 2 bytes, "€" 3, "😀" 4: a cut inside one drops the whole sequence.
		{"aé", 2, "a…"},
		{"aéb", 3, "aé…"},
		{"a€b", 2, "a…"},
		{"a€b", 3, "a…"},
		{"a€b", 4, "a€…"},
		{"😀😀", 1, "…"},
		{"😀😀", 3, "…"},
		{"😀😀", 4, "😀…"},
		{"😀😀", 7, "😀…"},
		{"😀😀", 8, "😀😀"},
		// Invalid UTF-8 is cut as bytes, at most UTFMax-1 bytes before n.
		{"\x80\x80\x80\x80\x80\x80", 5, "\x80\x80…"},
		{"ab\xff\xffcd", 3, "ab\xff…"},
	} {
		if got := clip.String(c.s, c.n); got != c.want {
			t.Errorf("String(%q, %d) = %q; want %q", c.s, c.n, got, c.want)
		}
	}
}

// Every cut of a valid string is valid, and as long as it can be without splitting a
// character.
func TestStringKeepsUTF8(t *testing.T) {
	s := "a€😀é" + strings.Repeat("ü", 3) + "z"
	for n := -1; n <= len(s)+1; n++ {
		got := clip.String(s, n)
		if !utf8.ValidString(got) {
			t.Errorf("String(%q, %d) = %q: not UTF-8", s, n, got)
		}
		if n >= len(s) {
			if got != s {
				t.Errorf("String(%q, %d) = %q; want it unchanged", s, n, got)
			}
			continue
		}
		kept := strings.TrimSuffix(got, clip.Ellipsis)
		want := 0 // the longest prefix of whole characters within n bytes
		for i := range s {
			if i <= n {
				want = i
			}
		}
		if len(kept) != want || !strings.HasPrefix(s, kept) {
			t.Errorf("String(%q, %d) = %q; want the first %d bytes and %q", s, n, got, want, clip.Ellipsis)
		}
	}
}

// FuzzString: never a panic; a result no longer than max(n, 0)+len(Ellipsis), that is s
// itself when s fits, else a prefix of s (losing at most UTFMax-1 bytes more than the cut)
// and Ellipsis; and valid UTF-8 when s is.
func FuzzString(f *testing.F) {
	f.Add("", 0)
	f.Add("abc", 2)
	f.Add("a€😀é", 5)
	f.Add("\x80\x80\x80\x80", 2)
	f.Add("abc", -3)
	f.Fuzz(func(t *testing.T, s string, n int) {
		got := clip.String(s, n)
		if len(got) > max(n, 0)+len(clip.Ellipsis) {
			t.Fatalf("String(%q, %d) = %q: %d bytes", s, n, got, len(got))
		}
		if len(s) <= n {
			if got != s {
				t.Fatalf("String(%q, %d) = %q; want it unchanged", s, n, got)
			}
			return
		}
		kept, ok := strings.CutSuffix(got, clip.Ellipsis)
		if !ok || !strings.HasPrefix(s, kept) || len(kept) < max(n, 0)-(utf8.UTFMax-1) {
			t.Fatalf("String(%q, %d) = %q; want a prefix of at least %d bytes and %q", s, n, got, max(n, 0)-(utf8.UTFMax-1), clip.Ellipsis)
		}
		if utf8.ValidString(s) && !utf8.ValidString(got) {
			t.Fatalf("String(%q, %d) = %q: not UTF-8", s, n, got)
		}
	})
}
