package handler

import (
	"encoding/json"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/nsplug/nsplug/wire"
)

// Names that are not UTF-8: 0xff, the UTF-8-style encoding of the lone
// surrogate U+D800 (ED A0 80, which valid UTF-8 excludes), a truncated
// sequence; and names that are, with what JSON must escape.
var (
	badNames  = []string{"a\xffb", "\xed\xa0\x80", "x\xe2\x82", "\xff\n\xfe", "/data/caf\xe9"}
	goodNames = []string{"", "plain", "a\nb", "tab\there", "caf\u00e9", "q\"uote\\back", "\x01\x1f", "<&>", "\u2028", "😀", "/a b/c"}
)

type nameHolder struct {
	Path  Name   `json:"path"`
	Names []Name `json:"names,omitempty"`
}

func TestNameJSONRoundTrip(t *testing.T) {
	for _, n := range append(append([]string{}, badNames...), goodNames...) {
		out, err := json.Marshal(nameHolder{Path: Name(n), Names: []Name{Name(n), "x"}})
		if err != nil {
			t.Fatalf("%q: %v", n, err)
		}
		var back nameHolder
		if err := DecodeStrict(out, &back); err != nil || string(back.Path) != n || string(back.Names[0]) != n {
			t.Errorf("%q → %s → %q %v", n, out, back.Path, err)
		}
		back = nameHolder{}
		if err := json.Unmarshal(out, &back); err != nil || string(back.Path) != n {
			t.Errorf("json.Unmarshal: %q → %s → %q %v", n, out, back.Path, err)
		}
	}
	// Every single byte but NUL.
	for c := 1; c < 256; c++ {
		n := Name([]byte{'a', byte(c), 'b'})
		out, _ := json.Marshal(n)
		var back Name
		if err := json.Unmarshal(out, &back); err != nil || back != n {
			t.Errorf("byte %#x: %s → %q %v", c, out, back, err)
		}
	}
}

func TestNameJSONForms(t *testing.T) {
	for _, c := range []struct{ name, want string }{
		{"a\xffb", `{"base64":"Yf9i"}`},
		{"\xed\xa0\x80", `{"base64":"7aCA"}`},
		{"a\nb", `"a\nb"`},
		{"caf\u00e9", "\"caf\u00e9\""}, // readable as it is, not \u escaped
		{"q\"\\", `"q\"\\"`},
		{"\x01", `"\u0001"`},
	} {
		out, err := Name(c.name).MarshalJSON()
		if err != nil || string(out) != c.want {
			t.Errorf("%q: %s %v, want %s", c.name, out, err, c.want)
		}
	}
}

func TestNameRejects(t *testing.T) {
	for _, c := range []struct{ json, fragment string }{
		{`"a\udcffb"`, "lone surrogate"},
		{`"\ud800"`, "lone surrogate"},
		{`"\ud800\u0041"`, "lone surrogate"},
		{"\"a\xffb\"", "invalid UTF-8"},
		{"\"\xed\xa0\x80\"", "invalid UTF-8"},
		{`"a\u0000b"`, "NUL"},
		{`{"base64":"AA=="}`, "NUL"},
		{`{"base64":"YQ==","x":"y"}`, `{"base64": "..."}`},
		{`{"b64":"YQ=="}`, `{"base64": "..."}`},
		{`{}`, `{"base64": "..."}`},
		{`{"base64":1}`, "must be a string"},
		{`{"base64":"YQ"}`, "base64"},
		{`{"base64":"Y Q=="}`, "base64"},
		{`5`, "want a string"},
		{`["a"]`, "want a string"},
	} {
		var n Name = "unchanged"
		err := n.UnmarshalJSON([]byte(c.json))
		if err == nil || !strings.Contains(err.Error(), c.fragment) {
			t.Errorf("%s: %v, want an error mentioning %q", c.json, err, c.fragment)
		}
		if n != "unchanged" {
			t.Errorf("%s: the name changed to %q", c.json, n)
		}
	}
	for _, c := range []struct{ json, want string }{
		{`{"base64":"YQ=="}`, "a"},
		{`{ "base64" : "Yf9i" }`, "a\xffb"},
		{`"\ud83d\ude00"`, "😀"},
		{`"\u00e9\n"`, "\u00e9\n"},
	} {
		var n Name
		if err := n.UnmarshalJSON([]byte(c.json)); err != nil || string(n) != c.want {
			t.Errorf("%s: %q %v, want %q", c.json, n, err, c.want)
		}
	}
	n := Name("kept")
	if err := json.Unmarshal([]byte(`null`), &n); err != nil || n != "kept" {
		t.Errorf("null: %q %v", n, err)
	}
}

// The path helpers take names that are not UTF-8 as they are.
func TestPathHelpersTakeAnyBytes(t *testing.T) {
	env := &Env{config: &wire.PluginConfig{AllowedRoots: []string{"/data\xff"}}}
	for _, p := range []string{"/data\xff", "/data\xff/a\xed\xa0\x80b", "/data\xff/new\nline"} {
		if got, err := env.CheckPath(p); err != nil || got != p {
			t.Errorf("CheckPath(%q): %q %v", p, got, err)
		}
	}
	if _, err := env.CheckPath("/data\xfe/x"); err == nil {
		t.Errorf("a path outside the root \"/data\\xff\" passed")
	}
	if err := CheckPathSyntax("/a\xff/../b"); err == nil || !strings.Contains(err.Error(), `"/a\xff/../b"`) {
		t.Errorf("unclean path: %v", err)
	}
}

func TestOpenTakesAnyBytes(t *testing.T) {
	dir := t.TempDir()
	env := &Env{config: &wire.PluginConfig{AllowedRoots: []string{dir}}}
	for _, n := range badNames {
		if strings.Contains(n, "/") {
			continue
		}
		p := dir + "/" + n
		if err := os.WriteFile(p, []byte(n), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := env.Open(p, os.O_RDONLY)
		if err != nil {
			t.Errorf("Open(%q): %v", p, err)
			continue
		}
		got, _ := io.ReadAll(f)
		f.Close()
		if string(got) != n {
			t.Errorf("Open(%q) read %q", p, got)
		}
	}
}
