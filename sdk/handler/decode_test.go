package handler

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

type strictEntry struct {
	Source Name            `json:"source"`
	Target Name            `json:"target"`
	Flags  []string        `json:"flags"`
	Extra  map[string]int  `json:"extra"`
	Raw    json.RawMessage `json:"raw"`
}

type strictReq struct {
	Path   string        `json:"path"`
	Mounts []strictEntry `json:"mounts"`
	Any    any           `json:"any"`
	Next   *strictReq    `json:"next"`
}

func TestDecodeStrictRejects(t *testing.T) {
	for _, c := range []struct{ payload, want string }{
		// Duplicate keys, at every level.
		{`{"path":"a","path":"b"}`, `duplicate field "path"`},
		{`{"path":"a","p\u0061th":"b"}`, `duplicate field "path"`},
		{`{"mounts":[{"target":"/a"},{"target":"/a","target":"/b"}]}`, `field "mounts[1]": duplicate field "target"`},
		{`{"mounts":[{"extra":{"k":1,"k":2}}]}`, `field "mounts[0].extra": duplicate field "k"`},
		{`{"mounts":[{"raw":{"k":1,"k":2}}]}`, `field "mounts[0].raw": duplicate field "k"`},
		{`{"any":[{"a":{"b":1,"b":1}}]}`, `field "any[0].a": duplicate field "b"`},
		{`{"next":{"next":{"path":"a","path":"a"}}}`, `field "next.next": duplicate field "path"`},
		{`{"mounts":[{"target":{"base64":"YQ==","base64":"Yg=="}}]}`, `field "mounts[0].target": duplicate field "base64"`},
		// Keys match exactly, never case-folded.
		{`{"PATH":"a"}`, `unknown field "PATH" (field names are case-sensitive: did you mean "path"?)`},
		{`{"mounts":[{"Target":"/a"}]}`, `field "mounts[0]": unknown field "Target"`},
		{`{"next":{"pAth":"a"}}`, `field "next": unknown field "pAth"`},
		{`{"nope":1}`, `unknown field "nope"`},
		// Strings are Unicode text; names that are not use the base64 form.
		{"{\"path\":\"a\xffb\"}", `field "path": invalid UTF-8 at offset 10`},
		{"{\"mounts\":[{},{\"target\":\"\xed\xa0\x80\"}]}", `field "mounts[1].target": invalid UTF-8`},
		{`{"path":"a\udcffb"}`, `field "path": lone surrogate escape \udcff at offset 10`},
		{`{"mounts":[{"source":"\ud800"}]}`, `field "mounts[0].source": lone surrogate`},
		{`{"any":{"k":"\udfff"}}`, `field "any.k": lone surrogate`},
		{`{"mounts":[{"source":{"base64":"AA=="}}]}`, `field "mounts[0].source": a name cannot contain a NUL byte`},
		{`{"mounts":[{"source":{"base64":"YQ==","x":1}}]}`, `field "mounts[0].source": a name object must be`},
		{`{"mounts":[{"source":7}]}`, `field "mounts[0].source": want a string`},
		// What follows the object is named for what it is.
		{`{"path":"a"} xyz`, `trailing data after the JSON object: "xyz"`},
		{`{"path":"a"}}`, `trailing data after the JSON object: "}"`},
		{`{"path":"a"}]`, `trailing data after the JSON object: "]"`},
		{`{"path":"a"}12abc`, `trailing data after the JSON object: "12abc"`},
		{`{"path":"a"} {"path":"b"}`, `a second JSON value after the object: "{\"path\":\"b\"}"`},
		{`{"path":"a"}{"pa`, `a second JSON value after the object`},
		{`{"path":"a"} [1]`, `a second JSON value after the object`},
		// Plain syntax and shape errors.
		{`[]`, `payload must be a JSON object`},
		{`{"path":"a",}`, `invalid character '}' at offset 12`},
		{`{"path":"a"`, `unexpected end of JSON input`},
		{`{"path":01}`, `invalid character '1'`},
		{"{\"path\":\"a\nb\"}", `control character`},
		{`{"path":"\x"}`, `invalid escape`},
		{`{"path":tru}`, `invalid character '}'`},
		{`{"path":1}`, `cannot unmarshal number`},
	} {
		var v strictReq
		err := DecodeStrict([]byte(c.payload), &v)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s:\n  got  %v\n  want %s", c.payload, err, c.want)
		}
	}
}

func TestDecodeStrictAccepts(t *testing.T) {
	var v strictReq
	payload := " \n{\"p\\u0061th\": \"caf\u00e9 \\ud83d\\ude00\", \"mounts\": [{\"source\": {\"base64\": \"Yf9i\"}, " +
		"\"target\": \"/a\\nb\", \"extra\": {\"K\": 1, \"k\": 2}, \"raw\": {\"x\": [1, 2.5e3, true, null]}}], " +
		"\"any\": {\"n\": -0.5}, \"next\": {\"path\": \"\"}}\t\r\n"
	if err := DecodeStrict([]byte(payload), &v); err != nil {
		t.Fatal(err)
	}
	if v.Path != "café 😀" || v.Mounts[0].Source != "a\xffb" || v.Mounts[0].Target != "/a\nb" ||
		v.Mounts[0].Extra["K"] != 1 || string(v.Mounts[0].Raw) != `{"x": [1, 2.5e3, true, null]}` || v.Next == nil {
		t.Errorf("decoded %+v", v)
	}
	for _, empty := range []string{"", "  ", "{}"} {
		if err := DecodeStrict([]byte(empty), &v); err != nil {
			t.Errorf("%q: %v", empty, err)
		}
	}
}

// 100,000-deep input is refused quickly, with a bounded stack, wherever it
// nests: in a field of any type, in a struct-typed field, at the top.
func TestDecodeStrictDeepInput(t *testing.T) {
	const depth = 100000
	for name, payload := range map[string]string{
		"arrays in any":     `{"any":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}`,
		"objects in any":    `{"any":` + strings.Repeat(`{"a":`, depth) + "1" + strings.Repeat("}", depth) + `}`,
		"structs":           strings.Repeat(`{"next":`, depth) + "{}" + strings.Repeat("}", depth),
		"unterminated list": `{"any":` + strings.Repeat("[", depth),
	} {
		start := time.Now()
		var v strictReq
		err := DecodeStrict([]byte(payload), &v)
		if err == nil || !strings.Contains(err.Error(), "nesting deeper than 10000 levels") {
			t.Errorf("%s: %.200v", name, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: took %v", name, d)
		}
	}
	// 10000 levels are still fine, as for encoding/json.
	ok := `{"any":` + strings.Repeat("[", MaxNesting-1) + strings.Repeat("]", MaxNesting-1) + `}`
	var v strictReq
	if err := DecodeStrict([]byte(ok), &v); err != nil {
		t.Errorf("%d levels: %.200v", MaxNesting, err)
	}
}

type embeddedInner struct {
	Shared string `json:"shared"`
	Inner  int
	Tagged string `json:"tagged"`
}

type EmbeddedExported struct {
	Exported int `json:"exported"`
	Tagged   int `json:"tagged"` // same depth as embeddedInner.Tagged: neither
}

type fieldRules struct {
	embeddedInner
	*EmbeddedExported
	Shared   int    `json:"shared"` // shallower: wins over embeddedInner.Shared
	Skipped  int    `json:"-"`
	Dash     int    `json:"-,"`
	Plain    int    // no tag: its Go name
	Bad      int    `json:"a\"b"` // an invalid tag name: the Go name
	Opts     int    `json:",omitempty"`
	Named    Name   `json:"named,omitempty"`
	private  int    //nolint:unused // never a field
	Embedded string `json:"embedded,string"`
}

// The scanner's field names are encoding/json's: every name it accepts
// is one json decodes with DisallowUnknownFields, and the others are not.
func TestJSONFieldsMatchEncodingJSON(t *testing.T) {
	var names []string
	for n := range jsonFields(reflect.TypeFor[fieldRules]()) {
		names = append(names, n)
	}
	slices.Sort(names)
	want := []string{"-", "Bad", "Inner", "Opts", "Plain", "embedded", "exported", "named", "shared"}
	if !slices.Equal(names, want) {
		t.Errorf("fields %q, want %q", names, want)
	}
	for _, n := range append(want, "tagged", "Skipped", "private", "a\"b") {
		payload, _ := json.Marshal(map[string]any{n: nil})
		dec := json.NewDecoder(bytes.NewReader(payload))
		dec.DisallowUnknownFields()
		var v fieldRules
		jsonErr := dec.Decode(&v)
		strictErr := DecodeStrict(payload, &v)
		if (jsonErr == nil) != (strictErr == nil) {
			t.Errorf("field %q: encoding/json says %v, DecodeStrict %v", n, jsonErr, strictErr)
		}
	}
}

// plainWord agrees with plainByte on every byte in every position, and on
// random words.
func TestPlainWord(t *testing.T) {
	check := func(b []byte) {
		want := true
		for _, c := range b {
			want = want && plainByte[c]
		}
		if got := plainWord(binary.LittleEndian.Uint64(b)); got != want {
			t.Fatalf("plainWord(%q) = %v", b, got)
		}
	}
	for c := range 256 {
		for pos := range 8 {
			b := []byte("abcdefgh")
			b[pos] = byte(c)
			check(b)
			b[(pos+1)%8] = 0x1f
			check(b)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 8)
	for range 200000 {
		binary.LittleEndian.PutUint64(b, r.Uint64()&0x7f7f7f7f7f7f7f7f|0x2020202020202020*uint64(r.IntN(2)))
		check(b)
	}
}
