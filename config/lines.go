package config

import (
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// scanLines finds the line of every key in the TOML text src, which the
// toml package has already parsed successfully.
//
// It remains because the toml package (v1.6.0) keeps the position of a key
// unexported, and keeps one per dotted key, shared by all the entries of an
// array of tables (every [[plugin]]'s "mode" has the last one's line), and
// none for array elements; see decode. So this scanner only finds where
// things are: it follows table headers ([a.b]), arrays of tables ([[a]],
// counting entries per parent, so that the second [[plugin]] is
// "plugin"[1]), dotted and quoted keys (whose names the toml package reads,
// see keySegments), inline tables and arrays (whose elements are recorded
// by index), and skips strings of all four kinds and comments. The result
// maps canonical paths (see key) to lines; the first definition of a path
// wins. It never panics: on malformed input it returns what it found.
func scanLines(src string) (lines map[string]int) {
	s := &scanner{src: src, line: 1, lines: map[string]int{}, aot: map[string]int{}}
	defer func() {
		if recover() != nil {
			lines = s.lines
		}
	}()
	s.src = string(stripBOM([]byte(s.src)))
	s.document()
	return s.lines
}

type scanner struct {
	src   string
	i     int // byte offset in src
	line  int // line of src[i]
	lines map[string]int
	aot   map[string]int // canonical path of an array of tables → entries so far
}

func (s *scanner) peek() byte {
	if s.i < len(s.src) {
		return s.src[s.i]
	}
	return 0
}

func (s *scanner) record(path string, line int) {
	if _, ok := s.lines[path]; !ok {
		s.lines[path] = line
	}
}

// skip skips blanks and comments, and newlines too if nl is set.
func (s *scanner) skip(nl bool) {
	for s.i < len(s.src) {
		switch s.src[s.i] {
		case ' ', '\t', '\r':
			s.i++
		case '\n':
			if !nl {
				return
			}
			s.line++
			s.i++
		case '#':
			for s.i < len(s.src) && s.src[s.i] != '\n' {
				s.i++
			}
		default:
			return
		}
	}
}

func (s *scanner) document() {
	table := ""
	for {
		s.skip(true)
		if s.i >= len(s.src) {
			return
		}
		start, line := s.i, s.line
		switch {
		case strings.HasPrefix(s.src[s.i:], "[["):
			s.i += 2
			keys := s.key()
			s.skip(false)
			s.i += len("]]")
			table = s.header(keys, true, line)
		case s.src[s.i] == '[':
			s.i++
			keys := s.key()
			s.skip(false)
			s.i += len("]")
			table = s.header(keys, false, line)
		default:
			s.keyValue(table)
		}
		if s.i == start {
			s.i++ // cannot happen with valid TOML; guarantees progress
		}
	}
}

// header resolves a table header's keys to the canonical path of the table
// it opens: a key naming an array of tables refers to its last entry, and
// [[...]] appends an entry.
func (s *scanner) header(keys []string, array bool, line int) string {
	path := ""
	for i, k := range keys {
		path += strconv.Quote(k)
		s.record(path, line)
		last := i == len(keys)-1
		if n, ok := s.aot[path]; ok && !(last && array) {
			path += "[" + strconv.Itoa(n-1) + "]"
		}
	}
	if array {
		n := s.aot[path]
		s.aot[path] = n + 1
		path += "[" + strconv.Itoa(n) + "]"
		s.record(path, line)
	}
	return path
}

// keyValue scans "key = value" in the table with canonical path table.
func (s *scanner) keyValue(table string) {
	line := s.line
	path := table
	for _, k := range s.key() {
		path += strconv.Quote(k)
		s.record(path, line)
	}
	s.skip(false)
	if s.peek() == '=' {
		s.i++
	}
	s.skip(false)
	s.value(path)
}

// key scans a possibly dotted key and returns its segments.
func (s *scanner) key() []string {
	start := s.i
	for {
		s.skip(false)
		s.simpleKey()
		s.skip(false)
		if s.peek() != '.' {
			return keySegments(s.src[start:s.i])
		}
		s.i++
	}
}

// simpleKey skips a bare or quoted key.
func (s *scanner) simpleKey() {
	switch q := s.peek(); q {
	case '"', '\'':
		s.i++
		for s.i < len(s.src) && s.src[s.i] != q && s.src[s.i] != '\n' {
			if q == '"' && s.src[s.i] == '\\' {
				s.i++
			}
			s.i++
		}
		if s.i < len(s.src) && s.src[s.i] == q {
			s.i++
		}
	default:
		for s.i < len(s.src) && bareKeyChar(s.src[s.i]) {
			s.i++
		}
	}
}

// keySegments has the toml package read the segments of the dotted key
// text raw (it knows TOML's escapes); nil if it is not a key. A plain
// dotted key of bare segments ("a.b_c") is split here: a parse per key
// was a third of loading the embedded default in every CLI process.
func keySegments(raw string) []string {
	if segs := strings.Split(raw, "."); !slices.ContainsFunc(segs, func(seg string) bool {
		return seg == "" || strings.ContainsFunc(seg, func(r rune) bool { return r > 0x7f || !bareKeyChar(byte(r)) })
	}) {
		return segs
	}
	var m map[string]any
	md, err := toml.Decode(raw+" = 0", &m)
	if keys := md.Keys(); err == nil && len(keys) > 0 {
		return keys[len(keys)-1]
	}
	return nil
}

func bareKeyChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}

// value scans one value; inline tables and arrays are scanned recursively
// so that their keys and elements get lines.
func (s *scanner) value(path string) {
	switch s.peek() {
	case '{':
		s.i++
		s.inlineTable(path)
	case '[':
		s.i++
		s.array(path)
	case '"', '\'':
		s.skipString()
	default: // number, boolean or datetime (which may contain a space)
		for s.i < len(s.src) && !strings.ContainsRune(",]}\n#", rune(s.src[s.i])) {
			s.i++
		}
	}
}

func (s *scanner) inlineTable(path string) {
	for {
		s.skip(true) // TOML 1.1 allows newlines and comments here
		switch s.peek() {
		case 0:
			if s.i >= len(s.src) {
				return
			}
		case '}':
			s.i++
			return
		case ',':
			s.i++
			continue
		}
		start := s.i
		s.keyValue(path)
		if s.i == start {
			s.i++
		}
	}
}

func (s *scanner) array(path string) {
	for n := 0; ; {
		s.skip(true)
		switch s.peek() {
		case 0:
			if s.i >= len(s.src) {
				return
			}
		case ']':
			s.i++
			return
		case ',':
			s.i++
			n++
			continue
		}
		start := s.i
		elem := path + "[" + strconv.Itoa(n) + "]"
		s.record(elem, s.line)
		s.value(elem)
		if s.i == start {
			s.i++
		}
	}
}

// skipString skips a basic, literal, multi-line basic or multi-line literal
// string, counting the newlines inside.
func (s *scanner) skipString() {
	q := s.src[s.i]
	delim := strings.Repeat(string(q), 3)
	multi := strings.HasPrefix(s.src[s.i:], delim)
	if multi {
		s.i += 3
	} else {
		s.i++
	}
	for s.i < len(s.src) {
		c := s.src[s.i]
		switch {
		case c == '\\' && q == '"':
			s.i++
			if s.i < len(s.src) && s.src[s.i] == '\n' {
				s.line++
			}
		case c == '\n':
			if !multi {
				return // unterminated; cannot happen with valid TOML
			}
			s.line++
		case c == q && !multi:
			s.i++
			return
		case c == q && strings.HasPrefix(s.src[s.i:], delim):
			// A multi-line string may end with up to two extra quotes,
			// which belong to its content: """a""""" is `a""`.
			n := 0
			for s.i < len(s.src) && s.src[s.i] == q && n < 5 {
				s.i++
				n++
			}
			return
		}
		s.i++
	}
}
