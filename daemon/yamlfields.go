package daemon

import (
	"fmt"
	"reflect"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// unknownField finds the first key in n that t, the Go type n decodes into, has no field
// for, and says where it is (line, field path) and which field was likely meant: yaml.v3's
// own error names a Go type, not the field path, and suggests nothing. Aliases are not
// followed (their anchors are checked where they are defined), so a document of nested
// aliases costs no more than its size.
func unknownField(n *yaml.Node, t reflect.Type, path string) error {
	for n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		fields := map[string]reflect.Type{}
		for i := range t.NumField() {
			f := t.Field(i)
			if name, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); name != "" && name != "-" && f.IsExported() {
				fields[name] = f.Type
			}
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Value == "<<" { // a merge key: its mapping's keys are this struct's
				if err := unknownField(v, t, path); err != nil {
					return err
				}
				continue
			}
			ft, ok := fields[k.Value]
			if !ok {
				return &unknownFieldError{line: k.Line, path: path, name: k.Value, hint: closest(k.Value, fields)}
			}
			if err := unknownField(v, ft, join(path, k.Value)); err != nil {
				return err
			}
		}
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		for i, c := range n.Content {
			if err := unknownField(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

type unknownFieldError struct {
	line       int
	path, name string
	hint       string
}

func (e *unknownFieldError) Error() string {
	where := ""
	if e.path != "" {
		where = " " + e.path + ":"
	}
	msg := fmt.Sprintf("%d:%s unknown field %q", e.line, where, e.name)
	if e.hint != "" {
		msg += fmt.Sprintf(" (did you mean %q?)", e.hint)
	}
	return msg
}

// closest is the field name nearest to name by edit distance, if it is near enough to be a
// typo (at most a third of the name's length, and at least one edit allowed).
func closest(name string, fields map[string]reflect.Type) string {
	names := make([]string, 0, len(fields))
	for f := range fields {
		names = append(names, f)
	}
	slices.Sort(names) // the same hint every time, whatever the map's order
	best, bestD := "", max(1, len(name)/3)+1
	for _, f := range names {
		if d := editDistance(strings.ToLower(name), f); d < bestD {
			best, bestD = f, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return max(len(a), len(b)) // a field name is short; bound the work
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
