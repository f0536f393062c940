package handler

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/nsplug/nsplug/wire"
)

type testOptions struct {
	Limit int      `json:"limit"`
	Names []string `json:"names"`
}

func TestTypedOptions(t *testing.T) {
	configure := TypedOptions(testOptions{Limit: 7}, func(o *testOptions) error {
		if o.Limit < 0 {
			return OptionErrorf("limit", "must not be negative, got %d", o.Limit)
		}
		return nil
	})
	for _, tc := range []struct {
		raw       string
		key, want string // want: the message, or the Limit when key is "-"
	}{
		{``, "-", "7"},
		{`null`, "-", "7"},
		{`{"names":["a"]}`, "-", "7"},
		{`{"limit":3}`, "-", "3"},
		{`{"limit":-1}`, "limit", "must not be negative, got -1"},
		{`{"limt":3}`, "limt", "unknown option (this plugin takes limit, names)"},
		{`{"LIMIT":3}`, "LIMIT", "unknown option (this plugin takes limit, names)"},
		{`{"limit":"x"}`, "limit", "expected int, got string"},
		{`[1]`, "", "not a JSON object: json: cannot unmarshal array into Go value of type map[string]json.RawMessage"},
	} {
		v, err := configure(json.RawMessage(tc.raw))
		if tc.key == "-" {
			if err != nil || fmt.Sprint(v.(testOptions).Limit) != tc.want {
				t.Errorf("%s: %+v, %v", tc.raw, v, err)
			}
			continue
		}
		var oe *OptionError
		if !errors.As(err, &oe) || oe.Key != tc.key || oe.Msg != tc.want {
			t.Errorf("%s: %#v, want key %q message %q", tc.raw, err, tc.key, tc.want)
		}
	}
}

// An option error survives being sent as text (a plugin process reports
// it on its status pipe) and a plugin without the hook takes no options.
func TestOptionErrorsAsText(t *testing.T) {
	for _, oe := range []*OptionError{{Key: "a.b[2]", Msg: "bad: really"}, {Key: `q"uote`, Msg: "x"}, {Msg: "whole table"}} {
		text := errors.New("sdk: plugin p: " + oe.Error())
		got, ok := wire.ParseOptionError(text)
		if !ok || *got != *oe {
			t.Errorf("%q parsed as %+v %v, want %+v", text, got, ok, oe)
		}
	}
	if _, ok := wire.ParseOptionError(errors.New("exit status 1")); ok {
		t.Error("a plain error parsed as an option error")
	}
	if _, ok := wire.ParseOptionError(nil); ok {
		t.Error("nil parsed as an option error")
	}
	_, err := newServer(&Plugin{Name: "p"}, &wire.PluginConfig{Options: json.RawMessage(`{"x":1}`)}, nil)
	if oe, ok := wire.ParseOptionError(err); !ok || oe.Msg != "plugin p takes no options" {
		t.Errorf("options for a plugin without Configure: %v", err)
	}
	if _, err := newServer(&Plugin{Name: "p"}, &wire.PluginConfig{Options: json.RawMessage(`{}`)}, nil); err != nil {
		t.Errorf("empty options for a plugin without Configure: %v", err)
	}
}
