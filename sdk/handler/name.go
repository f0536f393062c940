package handler

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Name is a name the kernel treats as bytes: a path, a file name, a link
// target, an extended attribute name, a mount source. Linux allows any
// byte but NUL in them, so a Name is a Go string holding those bytes as
// they are, valid UTF-8 or not. Use it for every such field of a request
// or response: a plain string field would lose them (encoding/json
// replaces invalid UTF-8 with U+FFFD, and the name it gives back then
// names nothing).
//
// JSON form, one rule in both directions:
//
//   - valid UTF-8: a plain JSON string, readable as it is:
//     "/data/caf\u00e9" or "/data/café", "/data/a\nb";
//   - anything else: an object with the bytes in standard base64 (with
//     padding): {"base64": "L2RhdGEvYf9i"} for "/data/a\xffb".
//
// Encoding picks the plain form whenever it can. Decoding accepts both
// forms for any name, "null" (leaving the Name unchanged, as for a
// string), and nothing else: an object with another key or more than one,
// invalid base64, a NUL byte, and a plain string that is not valid UTF-8
// (raw invalid bytes, or a \u escape of a lone surrogate such as
// "\udcff") are errors. A plain string can only carry Unicode text, so
// such a string can only be a name already damaged; the caller must send
// it in the base64 form. (DecodeStrict checks every string of a payload
// that way, Name or not, and names the field.)
//
// Name converts to and from string freely: string(n) is the bytes for a
// system call, Name(s) a name read from one.
type Name string

// MarshalJSON implements json.Marshaler: a plain string for valid
// UTF-8, {"base64": "..."} otherwise.
func (n Name) MarshalJSON() ([]byte, error) {
	if utf8.ValidString(string(n)) {
		return appendQuoted(make([]byte, 0, len(n)+2), string(n)), nil
	}
	out := make([]byte, 0, 14+base64.StdEncoding.EncodedLen(len(n)))
	out = append(out, `{"base64":"`...)
	out = base64.StdEncoding.AppendEncode(out, []byte(n))
	return append(out, `"}`...), nil
}

// UnmarshalJSON implements json.Unmarshaler (see Name for what it
// accepts).
func (n *Name) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		return nil
	}
	s, err := parseName(data)
	if err != nil {
		return err
	}
	*n = Name(s)
	return nil
}

// parseName decodes one JSON value (valid JSON, trimmed) in either of
// Name's forms.
func parseName(data []byte) (string, error) {
	var s string
	switch {
	case len(data) > 0 && data[0] == '"':
		end, err := scanString(data, 0)
		if err != nil {
			return "", err
		}
		if end != len(data) {
			return "", errors.New("want one JSON string")
		}
		s = unquote(data[:end])
	case len(data) > 0 && data[0] == '{':
		b, err := parseBase64Object(data)
		if err != nil {
			return "", err
		}
		s = string(b)
	default:
		return "", errors.New(`want a string, or {"base64": "..."} for a name that is not UTF-8`)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return "", errors.New("a name cannot contain a NUL byte")
	}
	return s, nil
}

// nameObjectForm is the error for anything but {"base64": "..."}.
const nameObjectForm = `a name object must be {"base64": "..."} and nothing else`

// parseBase64Object decodes {"base64": "..."}: that key exactly, once.
func parseBase64Object(data []byte) ([]byte, error) {
	i := skipSpace(data, 1)
	if i >= len(data) || data[i] != '"' {
		return nil, errors.New(nameObjectForm)
	}
	end, err := scanString(data, i)
	if err != nil {
		return nil, err
	}
	if unquote(data[i:end]) != "base64" {
		return nil, errors.New(nameObjectForm)
	}
	i = skipSpace(data, end)
	if i >= len(data) || data[i] != ':' {
		return nil, errors.New(nameObjectForm)
	}
	i = skipSpace(data, i+1)
	if i >= len(data) || data[i] != '"' {
		return nil, errors.New(`"base64" must be a string`)
	}
	end, err = scanString(data, i)
	if err != nil {
		return nil, err
	}
	val := unquote(data[i:end])
	if i = skipSpace(data, end); i != len(data)-1 || data[i] != '}' {
		return nil, errors.New(nameObjectForm)
	}
	b, err := base64.StdEncoding.Strict().DecodeString(val)
	if err != nil {
		return nil, fmt.Errorf(`"base64": %v`, err)
	}
	return b, nil
}

// appendQuoted appends s (valid UTF-8) as a JSON string, escaping only
// what JSON requires (and U+2028/U+2029, as encoding/json does), so that
// names stay readable.
func appendQuoted(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
			start = i + size
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
