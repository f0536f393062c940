// Package config is nsplug's configuration: the TOML schema, its defaults,
// strict decoding and validation, each in a file of its own:
//
//   - schema.go: the types (Config, Plugin, Settings, Duration) and the
//     merge of [defaults] with a [[plugin]] entry (Config.Settings);
//   - default.toml, default.go: the defaults, stated once, in the embedded
//     file, and Default, Load and Parse;
//   - decode.go: strict decoding onto the schema (unknown keys, wrong
//     types, bad durations), every error with file and line;
//   - validate.go: every check of the values that the configuration alone
//     decides, with file and line;
//   - source.go, lines.go: where a key is in the file, for those messages
//     and for plugin option errors found at load (Config.OptionError).
//
// core.New takes a *Config; cmd/nsplug reads one with Load.
package config
