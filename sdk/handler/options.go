package handler

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/nsplug/nsplug/wire"
)

// A plugin's options are checked once, when it is loaded, not on every
// request: Plugin.Configure decodes and validates the [plugin.options]
// table and makes of it the value its handlers read (OptionsFrom). The
// core runs the hook at load (in-process for a built-in, in the process
// that describes an external plugin) and, on failure, reports the
// configuration file and the line of the option named by the error.

// OptionError is an invalid option: the key it names (dotted for a nested
// one, "max_read_bytes" or "limits.depth"; empty for the table as a whole)
// and what is wrong with it. Plugin.Configure returns one so that the core
// can point at the option's line.
type OptionError = wire.OptionError

// OptionErrorf returns the OptionError of key with a formatted message.
func OptionErrorf(key, format string, args ...any) *OptionError {
	return wire.OptionErrorf(key, format, args...)
}

// TypedOptions returns a Plugin.Configure hook for options of type T (a
// struct with json tags). The table is decoded strictly onto a copy of
// defaults: a key T has no field for is an error naming it and the keys
// T knows, as is a value of the wrong type. check, when not nil, then
// validates the result (return an OptionError naming the key). Handlers
// read the result with OptionsFrom[T].
func TypedOptions[T any](defaults T, check func(*T) error) func(json.RawMessage) (any, error) {
	return func(raw json.RawMessage) (any, error) {
		v := defaults
		if len(raw) > 0 && string(raw) != "null" {
			var keys map[string]json.RawMessage
			if err := json.Unmarshal(raw, &keys); err != nil {
				return nil, &OptionError{Msg: "not a JSON object: " + err.Error()}
			}
			known := map[string]reflect.Type{}
			if t := reflect.TypeOf(v); t != nil && t.Kind() == reflect.Struct {
				known = jsonFields(t)
			}
			for _, k := range slices.Sorted(maps.Keys(keys)) {
				if _, ok := known[k]; !ok {
					return nil, OptionErrorf(k, "unknown option (this plugin takes %s)", describeKeys(known))
				}
			}
			if err := DecodeStrict(raw, &v); err != nil {
				var te *json.UnmarshalTypeError
				if errors.As(err, &te) && te.Field != "" {
					return nil, OptionErrorf(te.Field, "expected %s, got %s", te.Type, te.Value)
				}
				return nil, &OptionError{Msg: err.Error()}
			}
		}
		if check != nil {
			if err := check(&v); err != nil {
				return nil, err
			}
		}
		return v, nil
	}
}

// OptionsFrom returns the options of the plugin serving ctx's request, as
// its TypedOptions[T] hook made them. Outside a request it returns the
// zero T.
func OptionsFrom[T any](ctx context.Context) T {
	v, _ := EnvFrom(ctx).options.(T)
	return v
}

// configure runs a plugin's Configure hook on its options. A plugin
// without one takes no options. Every error is an *OptionError.
func configure(p *Plugin, raw json.RawMessage) (any, error) {
	if p.Configure == nil {
		if len(raw) == 0 || string(raw) == "null" || string(raw) == "{}" {
			return nil, nil
		}
		return nil, &OptionError{Msg: "plugin " + p.Name + " takes no options"}
	}
	v, err := p.Configure(raw)
	if err != nil {
		var oe *OptionError
		if errors.As(err, &oe) {
			return nil, oe
		}
		return nil, &OptionError{Msg: err.Error()}
	}
	return v, nil
}

func describeKeys(known map[string]reflect.Type) string {
	if len(known) == 0 {
		return "none"
	}
	return strings.Join(slices.Sorted(maps.Keys(known)), ", ")
}
