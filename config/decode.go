package config

import (
	"bytes"
	"cmp"
	"encoding"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// decode strictly decodes the TOML text data onto c: only keys present in
// the text change c. The toml package parses the text into generic values
// (its syntax errors carry their position), which are then decoded onto
// the schema's structs here, by their toml tags, rather than by toml's own
// struct decoding. That decoding (v1.6.0) matches keys case-insensitively,
// so md.Undecoded() does not report "Log_Level"; it stops at a first type
// error picked in map order, with a plain error whose line is only in its
// text; and the position it gives a key (also to errors from UnmarshalText)
// is one per dotted key, shared by all [[plugin]] entries: a bad duration
// in the second of three entries is reported at the third's line. Lines
// come from scanLines instead.
func decode(c *Config, data []byte, name string) error {
	data = stripBOM(data) // so that offsets in errors match
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			// The line is computed from the byte offset where possible: for
			// an error at a newline ("got '\n' instead") toml reports the
			// line after it.
			line := pe.Position.Line
			if start := pe.Position.Start; start > 0 && start <= len(data) {
				line = 1 + bytes.Count(data[:start], []byte("\n"))
			}
			return &decodeError{msg: fmt.Sprintf("%s:%d: %s", name, line, pe.Message), err: err}
		}
		return &decodeError{msg: name + ": " + err.Error(), err: err}
	}
	d := &decoder{src: &source{name: name, lines: scanLines(string(data))}}
	d.table(key{}, raw, reflect.ValueOf(c).Elem())
	if len(d.errs) > 0 {
		return errors.Join(d.errs...)
	}
	// Plugins inherited from the base (if the text has no [[plugin]])
	// find no names in d.src.plugins, so Validate gives them no lines.
	c.src = d.src
	return nil
}

// decodeError is an error with its own message that wraps an underlying
// error, such as a toml.ParseError.
type decodeError struct {
	msg string
	err error
}

func (e *decodeError) Error() string { return e.msg }
func (e *decodeError) Unwrap() error { return e.err }

// stripBOM removes a byte order mark, as the toml package does (it also
// accepts, and drops, a UTF-16 one).
func stripBOM(b []byte) []byte {
	for _, bom := range []string{"\xef\xbb\xbf", "\xff\xfe", "\xfe\xff"} {
		if rest, ok := bytes.CutPrefix(b, []byte(bom)); ok {
			return rest
		}
	}
	return b
}

type decoder struct {
	src  *source
	errs []error
}

func (d *decoder) fail(k key, at string, format string, args ...any) {
	d.errs = append(d.errs, d.src.keyError(k, at, fmt.Sprintf(format, args...)))
}

func (d *decoder) typeError(k key, want string, v any) {
	d.fail(k, "", "expected %s, got %s", want, typeName(v))
}

var (
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
	durationType    = reflect.TypeFor[Duration]()
	pluginType      = reflect.TypeFor[Plugin]()
)

// table decodes the TOML table m, at key k, onto the struct dst: each key
// onto the field of that toml tag (fields of embedded structs included),
// in the order the keys appear in the text.
func (d *decoder) table(k key, m map[string]any, dst reflect.Value) {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int {
		return cmp.Or(cmp.Compare(d.src.line(k.child(a).canon, nil), d.src.line(k.child(b).canon, nil)), strings.Compare(a, b))
	})
	for _, name := range keys {
		if f, ok := field(dst, name); ok {
			d.value(k.child(name), m[name], f)
		} else {
			d.errs = append(d.errs, d.src.unknownKey(k.child(name)))
		}
	}
}

// field finds the field of struct v tagged name, case-sensitively.
func field(v reflect.Value, name string) (reflect.Value, bool) {
	for i := range v.NumField() {
		switch f := v.Type().Field(i); {
		case f.Anonymous:
			if fv, ok := field(v.Field(i), name); ok {
				return fv, true
			}
		case f.IsExported() && f.Tag.Get("toml") == name:
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

// value decodes the TOML value v, of key k, onto dst.
func (d *decoder) value(k key, v any, dst reflect.Value) {
	t := dst.Type()
	switch {
	case reflect.PointerTo(t).Implements(textUnmarshaler):
		want := "string"
		if t == durationType {
			want = `duration string (e.g. "30s")`
		}
		if s, ok := v.(string); !ok {
			d.typeError(k, want, v)
		} else if err := dst.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(s)); err != nil {
			d.fail(k, "", "%v", err)
		}
	case t.Kind() == reflect.String:
		if s, ok := v.(string); ok {
			dst.SetString(s)
		} else {
			d.typeError(k, "string", v)
		}
	case t.Kind() == reflect.Bool:
		if b, ok := v.(bool); ok {
			dst.SetBool(b)
		} else {
			d.typeError(k, "boolean", v)
		}
	case t.Kind() == reflect.Int || t.Kind() == reflect.Int64:
		if n, ok := v.(int64); !ok {
			d.typeError(k, "integer", v)
		} else if dst.OverflowInt(n) {
			d.fail(k, "", "%d is out of range", n)
		} else {
			dst.SetInt(n)
		}
	case t == reflect.TypeFor[[]string]():
		d.strings(k, v, dst)
	case t == reflect.TypeFor[[]uint32]():
		d.uint32s(k, v, dst)
	case t.Kind() == reflect.Slice && t.Elem() == pluginType:
		d.plugins(k, v, dst)
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		d.tables(k, v, dst)
	case t.Kind() == reflect.Struct:
		if m, ok := v.(map[string]any); ok {
			d.table(k, m, dst)
		} else {
			d.typeError(k, "table", v)
		}
	case t == reflect.TypeFor[map[string]any]():
		if m, ok := v.(map[string]any); ok {
			dst.Set(reflect.ValueOf(m))
		} else {
			d.typeError(k, "table", v)
		}
	default:
		panic("config: no decoding for field type " + t.String())
	}
}

// strings decodes an array of strings; an empty array gives a non-nil
// empty slice.
func (d *decoder) strings(k key, v any, dst reflect.Value) {
	a, ok := v.([]any)
	if !ok {
		d.typeError(k, "array of strings", v)
		return
	}
	out := make([]string, len(a))
	for i, e := range a {
		s, ok := e.(string)
		if !ok {
			d.fail(k, k.elem(i).canon, "expected array of strings, but item %d is %s", i+1, typeName(e))
			return
		}
		out[i] = s
	}
	dst.Set(reflect.ValueOf(out))
}

// uint32s decodes an array of integers that fit in 32 bits (uids, gids).
func (d *decoder) uint32s(k key, v any, dst reflect.Value) {
	a, ok := v.([]any)
	if !ok {
		d.typeError(k, "array of integers", v)
		return
	}
	out := make([]uint32, len(a))
	for i, e := range a {
		n, ok := e.(int64)
		if !ok {
			d.fail(k, k.elem(i).canon, "expected array of integers, but item %d is %s", i+1, typeName(e))
			return
		}
		if n < 0 || n > 1<<32-1 {
			d.fail(k, k.elem(i).canon, "item %d, %d, is out of range (0 to 4294967295)", i+1, n)
			return
		}
		out[i] = uint32(n)
	}
	dst.Set(reflect.ValueOf(out))
}

// entries returns the tables of an array of tables, written [[k]] or
// k = [{...}, ...]; ok is false (and the error recorded) otherwise.
func (d *decoder) entries(k key, v any) (entries []map[string]any, ok bool) {
	switch t := v.(type) {
	case []map[string]any: // [[k]]
		return t, true
	case []any: // k = [{...}, ...]
		for _, e := range t {
			m, ok := e.(map[string]any)
			if !ok {
				d.fail(k, "", "expected array of tables, got array containing %s", typeName(e))
				return nil, false
			}
			entries = append(entries, m)
		}
		return entries, true
	default:
		d.typeError(k, "array of tables ([["+k.String()+"]])", v)
		return nil, false
	}
}

// tables decodes an array of tables onto a slice of structs, replacing
// any of dst's entries.
func (d *decoder) tables(k key, v any, dst reflect.Value) {
	entries, ok := d.entries(k, v)
	if !ok {
		return
	}
	out := reflect.MakeSlice(dst.Type(), len(entries), len(entries))
	for i, m := range entries {
		d.table(k.elem(i), m, out.Index(i))
	}
	dst.Set(out)
}

// plugins decodes the [[plugin]] entries, which replace any of dst's.
func (d *decoder) plugins(k key, v any, dst reflect.Value) {
	entries, ok := d.entries(k, v)
	if !ok {
		return
	}
	plugins := make([]Plugin, len(entries))
	d.src.plugins = make([]string, len(entries))
	for i, m := range entries {
		pk := k.elem(i)
		pk.plugin = &pluginRef{index: i, canon: pk.canon}
		pk.plugin.name, _ = m["name"].(string)
		d.table(pk, m, reflect.ValueOf(&plugins[i]).Elem())
		d.src.plugins[i] = plugins[i].Name
	}
	dst.Set(reflect.ValueOf(plugins))
}

// typeName names the TOML type of a value decoded by the toml package.
func typeName(v any) string {
	switch v.(type) {
	case string:
		return "string"
	case int64:
		return "integer"
	case float64:
		return "float"
	case bool:
		return "boolean"
	case time.Time:
		return "datetime"
	case []map[string]any:
		return "array of tables"
	case []any:
		return "array"
	case map[string]any:
		return "table"
	default:
		return fmt.Sprintf("%T", v)
	}
}
