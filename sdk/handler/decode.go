package handler

import (
	"bytes"
	"encoding"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
)

// Strict decoding. encoding/json alone is lenient in ways a payload must
// not be: a duplicate key silently replaces the first, a key matches a
// field whatever its case ("PATH" fills Path), invalid UTF-8 and lone
// surrogate escapes become U+FFFD without a word, and a decoder stops
// after the first value, so what follows it is easily missed. So a
// payload is first scanned once, token by token, against the shape of
// the type it decodes into (the json names of its fields, computed once
// per type): every key must name a field exactly and appear once per
// object, at every level; every string must be Unicode text; nothing may
// follow the object. Only then does encoding/json decode it, with
// nothing left to be lenient about.

// MaxNesting bounds how deeply arrays and objects of a payload nest (as
// encoding/json does, which refuses more than 10000 levels).
const MaxNesting = 10000

// DecodeStrict decodes one JSON object into v (a pointer), rejecting
// unknown fields, fields whose name differs from the json tag in case,
// duplicate keys at any level, strings that are not valid UTF-8 or hold
// a lone surrogate escape (names that are not UTF-8 travel as
// {"base64": "..."}, see Name), nesting deeper than MaxNesting and
// anything after the object. Errors name the field ("mounts[1].target")
// and say what is wrong. An empty payload decodes as {}.
func DecodeStrict(payload []byte, v any) error {
	payload = trimSpace(payload)
	if len(payload) == 0 {
		payload = []byte("{}")
	}
	if payload[0] != '{' {
		return errors.New("payload must be a JSON object")
	}
	t := reflect.TypeOf(v)
	if t == nil || t.Kind() != reflect.Pointer {
		return fmt.Errorf("sdk.DecodeStrict: want a pointer, got %T", v)
	}
	sc := scanner{data: payload}
	end, err := sc.value(0, shapeOf(t), 0)
	if err != nil {
		return err
	}
	if rest := payload[skipSpace(payload, end):]; len(rest) > 0 {
		return trailingError(rest)
	}
	return json.Unmarshal(payload, v)
}

// trailingError says what follows the object: another JSON value (two
// objects sent as one payload, say) or other bytes.
func trailingError(rest []byte) error {
	quoted := rest
	if len(quoted) > 32 {
		quoted = quoted[:32]
	}
	probe := scanner{data: rest}
	end, err := probe.value(0, anyShape, 0)
	var se *syntaxError
	whole := err == nil && (end == len(rest) || isSpace(rest[end]) || strings.IndexByte(`}]"`, rest[end-1]) >= 0)
	if whole || errors.As(err, &se) && se.eof {
		return fmt.Errorf("a second JSON value after the object: %q (a payload is one object)", quoted)
	}
	return fmt.Errorf("trailing data after the JSON object: %q", quoted)
}

// trimSpace trims JSON's whitespace (not Unicode's).
func trimSpace(b []byte) []byte {
	i, j := 0, len(b)
	for i < j && isSpace(b[i]) {
		i++
	}
	for j > i && isSpace(b[j-1]) {
		j--
	}
	return b[i:j]
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(data []byte, i int) int {
	for i < len(data) && isSpace(data[i]) {
		i++
	}
	return i
}

// A shape is what the scanner knows of the type a value decodes into.
type shape struct {
	kind   shapeKind
	fields map[string]*shape // shapeStruct: by exact json name
	elem   *shape            // shapeList, shapeMap
}

type shapeKind uint8

const (
	shapeAny    shapeKind = iota // any value; its objects' keys are free but unique
	shapeStruct                  // an object whose keys are the fields' json names
	shapeList                    // an array (or, for []byte, a base64 string)
	shapeMap                     // an object with keys of its own
	shapeName                    // a Name: a string, or {"base64": "..."}
)

var (
	anyShape      = &shape{kind: shapeAny}
	nameShape     = &shape{kind: shapeName}
	shapes        sync.Map // reflect.Type → *shape
	nameType      = reflect.TypeFor[Name]()
	jsonUnmarshal = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshal = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// shapeOf is t's shape, computed once per type.
func shapeOf(t reflect.Type) *shape {
	if s, ok := shapes.Load(t); ok {
		return s.(*shape)
	}
	s := buildShape(t, make(map[reflect.Type]*shape))
	shapes.Store(t, s)
	return s
}

func buildShape(t reflect.Type, building map[reflect.Type]*shape) *shape {
	if s := building[t]; s != nil {
		return s // a recursive type
	}
	switch {
	case t == nameType:
		return nameShape
	case t.Kind() == reflect.Pointer:
		return buildShape(t.Elem(), building)
	case t.Implements(jsonUnmarshal), reflect.PointerTo(t).Implements(jsonUnmarshal),
		t.Implements(textUnmarshal), reflect.PointerTo(t).Implements(textUnmarshal):
		return anyShape // decodes itself
	}
	switch t.Kind() {
	case reflect.Struct:
		s := &shape{kind: shapeStruct, fields: make(map[string]*shape)}
		building[t] = s
		for name, ft := range jsonFields(t) {
			s.fields[name] = buildShape(ft, building)
		}
		return s
	case reflect.Slice, reflect.Array, reflect.Map:
		s := &shape{kind: shapeList}
		if t.Kind() == reflect.Map {
			s.kind = shapeMap
		}
		building[t] = s
		s.elem = buildShape(t.Elem(), building)
		return s
	}
	return anyShape
}

// jsonFields are the fields encoding/json decodes into, by name, with
// its rules: json tags, "-", promoted fields of embedded structs, and of
// several fields of one name the shallowest, or the only tagged one among
// the shallowest.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	type field struct {
		typ    reflect.Type
		depth  int
		tagged bool
		count  int // fields of this name at this depth
	}
	best := make(map[string]*field)
	visited := make(map[reflect.Type]bool)
	var walk func(t reflect.Type, depth int)
	walk = func(t reflect.Type, depth int) {
		if visited[t] {
			return
		}
		visited[t] = true
		for i := range t.NumField() {
			sf := t.Field(i)
			ft := sf.Type
			if ft.Name() == "" && ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if sf.Anonymous {
				if !sf.IsExported() && ft.Kind() != reflect.Struct {
					continue
				}
			} else if !sf.IsExported() {
				continue
			}
			tag := sf.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, _, _ := strings.Cut(tag, ",")
			if !validTag(name) {
				name = ""
			}
			if name == "" && sf.Anonymous && ft.Kind() == reflect.Struct {
				walk(ft, depth+1)
				continue
			}
			tagged := name != ""
			if name == "" {
				name = sf.Name
			}
			f := best[name]
			switch {
			case f == nil || depth < f.depth:
				best[name] = &field{typ: sf.Type, depth: depth, tagged: tagged, count: 1}
			case depth == f.depth && tagged && !f.tagged:
				*f = field{typ: sf.Type, depth: depth, tagged: true, count: 1}
			case depth == f.depth && tagged == f.tagged:
				f.count++
			}
		}
	}
	walk(t, 0)
	out := make(map[string]reflect.Type, len(best))
	for name, f := range best {
		if f.count == 1 { // several at one depth annihilate each other
			out[name] = f.typ
		}
	}
	return out
}

// validTag is encoding/json's rule for a usable tag name.
func validTag(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case strings.ContainsRune("!#$%&()*+-./:;<=>?@[]^_{|}~ ", c):
		case !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c > 127):
			return false
		}
	}
	return true
}

// scanner checks a payload against a shape (see DecodeStrict).
type scanner struct {
	data []byte
}

// syntaxError is malformed JSON; eof marks input that ends too early.
type syntaxError struct {
	msg string
	eof bool
}

func (e *syntaxError) Error() string { return e.msg }

// fieldError is an error inside a field, which segs name from the
// innermost out ("target", "[1]", "mounts" for mounts[1].target): the
// path is only put together when the error is printed.
type fieldError struct {
	segs []string
	err  error
}

// maxPathSegs bounds the path an error prints (a 10000-deep one would be
// longer than the payload's start it describes).
const maxPathSegs = 12

func (e *fieldError) Error() string {
	var b strings.Builder
	for i := len(e.segs) - 1; i >= 0; i-- {
		if len(e.segs)-1-i == maxPathSegs {
			fmt.Fprintf(&b, "…(%d levels)", i+1)
			break
		}
		if b.Len() > 0 && !strings.HasPrefix(e.segs[i], "[") {
			b.WriteByte('.')
		}
		b.WriteString(e.segs[i])
	}
	return fmt.Sprintf("field %q: %v", b.String(), e.err)
}

func (e *fieldError) Unwrap() error { return e.err }

// inField adds seg (a key, or "[i]") to err's path.
func inField(seg string, err error) error {
	if fe, ok := err.(*fieldError); ok {
		fe.segs = append(fe.segs, seg)
		return fe
	}
	return &fieldError{segs: []string{seg}, err: err}
}

func (s *scanner) unexpected(i int) error {
	if i >= len(s.data) {
		return &syntaxError{msg: "unexpected end of JSON input", eof: true}
	}
	return &syntaxError{msg: fmt.Sprintf("invalid character %q at offset %d", s.data[i], i)}
}

// value checks the value at data[i:] (after whitespace) against sh and
// returns the offset after it.
func (s *scanner) value(i int, sh *shape, depth int) (int, error) {
	i = skipSpace(s.data, i)
	if i >= len(s.data) {
		return i, s.unexpected(i)
	}
	var end int
	var err error
	switch c := s.data[i]; {
	case c == '{':
		end, err = s.object(i, sh, depth+1)
	case c == '[':
		end, err = s.array(i, sh, depth+1)
	case c == '"':
		end, err = scanString(s.data, i)
	case c == '-' || '0' <= c && c <= '9':
		end, err = s.number(i)
	case c == 't':
		end, err = s.literal(i, "true")
	case c == 'f':
		end, err = s.literal(i, "false")
	case c == 'n':
		end, err = s.literal(i, "null")
	default:
		return i, s.unexpected(i)
	}
	if err == nil && sh.kind == shapeName && s.data[i] != 'n' {
		_, err = parseName(s.data[i:end])
	}
	return end, err
}

func (s *scanner) object(i int, sh *shape, depth int) (int, error) {
	if depth > MaxNesting {
		return i, fmt.Errorf("nesting deeper than %d levels", MaxNesting)
	}
	var seenBuf [16][]byte
	seen := seenBuf[:0]
	i = skipSpace(s.data, i+1)
	if i < len(s.data) && s.data[i] == '}' {
		return i + 1, nil
	}
	for {
		if i >= len(s.data) || s.data[i] != '"' {
			return i, s.unexpected(i)
		}
		end, err := scanString(s.data, i)
		if err != nil {
			return end, err
		}
		key := s.data[i+1 : end-1]
		if bytes.IndexByte(key, '\\') >= 0 {
			key = []byte(unquote(s.data[i:end]))
		}
		for _, k := range seen {
			if bytes.Equal(k, key) {
				return i, fmt.Errorf("duplicate field %q", key)
			}
		}
		seen = append(seen, key)
		elem := anyShape
		switch sh.kind {
		case shapeStruct:
			if elem = sh.fields[string(key)]; elem == nil {
				return i, unknownField(sh, string(key))
			}
		case shapeMap:
			elem = sh.elem
		}
		if i = skipSpace(s.data, end); i >= len(s.data) || s.data[i] != ':' {
			return i, s.unexpected(i)
		}
		if i, err = s.value(i+1, elem, depth); err != nil {
			return i, inField(string(key), err)
		}
		if i = skipSpace(s.data, i); i >= len(s.data) {
			return i, s.unexpected(i)
		}
		switch s.data[i] {
		case ',':
			i = skipSpace(s.data, i+1)
		case '}':
			return i + 1, nil
		default:
			return i, s.unexpected(i)
		}
	}
}

// unknownField names a key no field has, and the field it would match
// if keys were not case-sensitive.
func unknownField(sh *shape, key string) error {
	for name := range sh.fields {
		if strings.EqualFold(name, key) {
			return fmt.Errorf("unknown field %q (field names are case-sensitive: did you mean %q?)", key, name)
		}
	}
	return fmt.Errorf("unknown field %q", key)
}

func (s *scanner) array(i int, sh *shape, depth int) (int, error) {
	if depth > MaxNesting {
		return i, fmt.Errorf("nesting deeper than %d levels", MaxNesting)
	}
	elem := anyShape
	if sh.kind == shapeList {
		elem = sh.elem
	}
	i = skipSpace(s.data, i+1)
	if i < len(s.data) && s.data[i] == ']' {
		return i + 1, nil
	}
	for n := 0; ; n++ {
		var err error
		if i, err = s.value(i, elem, depth); err != nil {
			return i, inField("["+strconv.Itoa(n)+"]", err)
		}
		if i = skipSpace(s.data, i); i >= len(s.data) {
			return i, s.unexpected(i)
		}
		switch s.data[i] {
		case ',':
			i++
		case ']':
			return i + 1, nil
		default:
			return i, s.unexpected(i)
		}
	}
}

// number checks JSON's number grammar: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number(i int) (int, error) {
	d := s.data
	digits := func(i int) (int, bool) {
		j := i
		for j < len(d) && '0' <= d[j] && d[j] <= '9' {
			j++
		}
		return j, j > i
	}
	if d[i] == '-' {
		i++
	}
	if i < len(d) && d[i] == '0' {
		i++
	} else if j, ok := digits(i); ok {
		i = j
	} else {
		return i, s.unexpected(i)
	}
	if i < len(d) && d[i] == '.' {
		j, ok := digits(i + 1)
		if !ok {
			return j, s.unexpected(j)
		}
		i = j
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		j, ok := digits(i)
		if !ok {
			return j, s.unexpected(j)
		}
		i = j
	}
	return i, nil
}

func (s *scanner) literal(i int, lit string) (int, error) {
	for j := 0; j < len(lit); j++ {
		if i+j >= len(s.data) || s.data[i+j] != lit[j] {
			return i + j, s.unexpected(i + j)
		}
	}
	return i + len(lit), nil
}

// notUTF8Hint tells the caller how to send a name that is not text.
const notUTF8Hint = `a name that is not UTF-8 is sent as {"base64": "..."}`

// scanString checks the JSON string at data[i] (a '"'): its escapes, and
// that it is Unicode text (valid UTF-8, no lone surrogate escape, no raw
// control character). It returns the offset after the closing quote.
func scanString(data []byte, i int) (int, error) {
	i++
	for i < len(data) {
		// Eight plain bytes at a time (most of a long string), then one.
		for i+8 <= len(data) && plainWord(binary.LittleEndian.Uint64(data[i:])) {
			i += 8
		}
		if i >= len(data) {
			break
		}
		c := data[i]
		if plainByte[c] {
			i++
			continue
		}
		switch {
		case c == '"':
			return i + 1, nil
		case c == '\\':
			if i+1 >= len(data) {
				return i, &syntaxError{msg: "unexpected end of JSON input", eof: true}
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
				continue
			case 'u':
			default:
				return i, &syntaxError{msg: fmt.Sprintf("invalid escape %q at offset %d", data[i:i+2], i)}
			}
			r, ok := hex4(data, i+2)
			if !ok {
				return i, &syntaxError{msg: fmt.Sprintf("invalid \\u escape at offset %d", i)}
			}
			switch {
			case utf16.IsSurrogate(r) && r < 0xdc00:
				if r2, ok := hex4(data, i+8); ok && i+7 < len(data) && data[i+6] == '\\' && data[i+7] == 'u' &&
					utf16.DecodeRune(r, r2) != utf8.RuneError {
					i += 12
					continue
				}
				return i, fmt.Errorf("lone surrogate escape %s at offset %d (not Unicode text; %s)", data[i:i+6], i, notUTF8Hint)
			case utf16.IsSurrogate(r):
				return i, fmt.Errorf("lone surrogate escape %s at offset %d (not Unicode text; %s)", data[i:i+6], i, notUTF8Hint)
			}
			i += 6
		case c < 0x20:
			return i, &syntaxError{msg: fmt.Sprintf("control character %#02x in a string at offset %d (escape it)", c, i)}
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(data[i:])
			if r == utf8.RuneError && size == 1 {
				return i, fmt.Errorf("invalid UTF-8 at offset %d in a string (%s)", i, notUTF8Hint)
			}
			i += size
		}
	}
	return i, &syntaxError{msg: "unexpected end of JSON input", eof: true}
}

// plainByte marks the bytes a string holds as they are: printable ASCII
// but '"' and '\\'.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// plainWord reports whether all eight bytes of w are plain (see
// plainByte), with the usual SWAR tests: no byte below 0x20, none with
// the high bit, none equal to '"' or '\\'.
func plainWord(w uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	zero := func(x uint64) uint64 { return (x - ones) &^ x & highs } // a zero byte
	below := (w - ones*0x20) &^ w & highs                            // a byte < 0x20
	return (below | w&highs | zero(w^(ones*'"')) | zero(w^(ones*'\\'))) == 0
}

// hex4 reads the four hex digits of a \u escape at data[i:].
func hex4(data []byte, i int) (rune, bool) {
	if i+4 > len(data) {
		return 0, false
	}
	var r rune
	for _, c := range data[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// unquote decodes a JSON string literal that scanString accepted.
func unquote(lit []byte) string {
	body := lit[1 : len(lit)-1]
	if bytes.IndexByte(body, '\\') < 0 {
		return string(body)
	}
	out := make([]byte, 0, len(body))
	for i := 0; i < len(body); {
		c := body[i]
		if c != '\\' {
			out = append(out, c)
			i++
			continue
		}
		switch body[i+1] {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, _ := hex4(body, i+2)
			if utf16.IsSurrogate(r) {
				r2, _ := hex4(body, i+8)
				r = utf16.DecodeRune(r, r2)
				i += 6
			}
			out = utf8.AppendRune(out, r)
			i += 6
			continue
		default: // " \ /
			out = append(out, body[i+1])
		}
		i += 2
	}
	return string(out)
}
