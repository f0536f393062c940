package core

import (
	"bytes"
	"cmp"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/BurntSushi/toml"
)

// Config is the nsplug configuration, read from a TOML file by LoadConfig or
// ParseConfig.
//
// Decoding is strict: a key that is not listed here, a value of the wrong TOML
// type or a malformed duration is an error that names the key and the line
// it is on. Keys are matched case-sensitively. Keys a file does not set keep
// the value of the embedded default configuration (see DefaultConfig).
//
// A Config built or modified in Go should be checked with Validate.
type Config struct {
	// LogLevel is one of trace, debug, info, warn or error. Default "info".
	LogLevel string `toml:"log_level"`
	// RuntimeDir is the absolute path of the root-only directory under which
	// each plugin instance gets its socket directory. Default "/run/nsplug".
	RuntimeDir string `toml:"runtime_dir"`
	// MaxInstances is the global cap on live plugin processes; at least 1.
	// Default 64.
	MaxInstances int `toml:"max_instances"`
	// MaxStartsPerTarget bounds the cold starts in progress for one target
	// (one set of namespaces) at once, so that a target whose starts hang
	// holds at most that many of max_instances; others wait for a slot
	// within their deadline. At least 1. Default 4.
	MaxStartsPerTarget int `toml:"max_starts_per_target"`
	// MaxPluginBytes bounds a plugin executable's size: each is copied
	// into memory at start (see core/executable.go), and a larger file is
	// refused without copying. At least 1. Default 256 MiB.
	MaxPluginBytes int64 `toml:"max_plugin_bytes"`
	// FailOnPluginError makes New fail when any configured plugin fails
	// to load (a missing or oversized executable, a wrong sha256, a bad
	// option, a type it does not serve, ...). By default such a plugin is
	// recorded as failed, with its error, and the others serve.
	FailOnPluginError bool `toml:"fail_on_plugin_error"`
	// Defaults apply to every plugin unless its [[plugin]] entry overrides
	// them. Every field of Defaults must be set (DefaultConfig sets them all).
	Defaults PluginSettings `toml:"defaults"`
	// Plugins are the [[plugin]] entries. Every built-in plugin is loaded
	// with Defaults unless an entry of its name overrides its settings or
	// disables it; entries with a path add third-party plugins.
	Plugins []PluginConfig `toml:"plugin"`

	// src remembers where the configuration was parsed from, so that
	// Validate can point at file lines. Nil for a Config built in Go.
	src *cfgSource
}

// PluginSettings are the per-plugin knobs that [defaults] sets for all plugins
// and a [[plugin]] entry may override.
//
// In [defaults] every field is in effect. In a [[plugin]] entry a field at its
// zero value means "not set, inherit from [defaults]": a nil slice, an empty
// Mode, a zero Duration. A key written in the file is always "set": an
// explicitly empty array (e.g. namespaces = []) decodes to a non-nil empty
// slice and therefore replaces the default, while an explicit mode = "" or a
// zero duration such as "0s" is rejected by Validate rather than being taken
// as "unset". Config.Settings computes the merged, effective settings.
type PluginSettings struct {
	// Namespaces the handler joins: a subset of user, mnt, pid, net, ipc, uts,
	// cgroup and time. Empty means every namespace of the target process that
	// differs from the core's own. Default empty.
	Namespaces []string `toml:"namespaces"`
	// Mode is "pooled" (warm instances are reused) or "oneshot" (one plugin
	// process per request). Default "pooled".
	Mode string `toml:"mode"`
	// IdleTimeout is how long an idle pooled instance lives. Default 30s.
	IdleTimeout Duration `toml:"idle_timeout"`
	// RequestTimeout bounds a single request. Default 10s.
	RequestTimeout Duration `toml:"request_timeout"`
	// StartTimeout bounds starting a plugin process, including the
	// go-plugin handshake. Default 10s.
	StartTimeout Duration `toml:"start_timeout"`
	// AllowedRoots are the absolute, clean paths (filepath.Clean(p) == p)
	// under which requests may touch files. An empty list allows no path at
	// all. Default ["/"].
	AllowedRoots []string `toml:"allowed_roots"`
	// FreshMounts lists pseudo file systems, "proc" and/or "sys", of which
	// the handler is given a private, freshly mounted instance. Default none.
	FreshMounts []string `toml:"fresh_mounts"`
	// Unshare lists namespaces (same names as Namespaces) the handler
	// unshares after joining the target's namespaces, e.g. "mnt".
	// Default none.
	Unshare []string `toml:"unshare"`
	// AllowHostChanges lists namespaces (same names as Namespaces) whose
	// state the plugin's message types may change even where the handler
	// shares them with the core, that is, on the host: a type that
	// declares it changes a namespace (mount.mount changes "mnt") is
	// otherwise refused with EPERM when that namespace is not joined (the
	// target has none of its own, or namespaces or a request left it out).
	// Default none.
	AllowHostChanges []string `toml:"allow_host_changes"`
}

// PluginConfig is one [[plugin]] entry. The PluginSettings keys are written
// flat in the same table and override [defaults] (see PluginSettings for
// how "unset" is represented).
type PluginConfig struct {
	// Name is required and unique; it matches [a-z0-9][a-z0-9_-]*.
	Name string `toml:"name"`
	// Path is the absolute path of a plugin executable. Empty selects the
	// built-in plugin called Name.
	Path string `toml:"path"`
	// SHA256 optionally pins the executable at Path to this hex SHA-256
	// digest (64 hex digits). It requires Path, since built-in plugins are
	// part of the nsplug binary. Validate lowercases it.
	SHA256 string `toml:"sha256"`
	// Types restricts the message types the plugin may serve, each of the
	// form <word>.<word> with [a-z0-9_] words, e.g. "procfs.read". Empty
	// means all types the plugin declares.
	Types []string `toml:"types"`
	// Options are free-form plugin options, handed to the plugin as JSON.
	Options map[string]any `toml:"options"`
	// Disabled leaves the plugin out (for a built-in: it is not loaded).
	Disabled bool `toml:"disabled"`
	PluginSettings
}

// Duration is a time.Duration written in TOML as a Go duration string, such
// as "30s", "1m30s" or "250ms".
type Duration struct{ time.Duration }

// UnmarshalText implements encoding.TextUnmarshaler using
// time.ParseDuration.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return fmt.Errorf("invalid duration %q", text)
	}
	d.Duration = v
	return nil
}

// MarshalText implements encoding.TextMarshaler; the text is
// time.Duration.String.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.String()), nil
}

//go:embed default.toml
var cfgDefaultTOML []byte

// cfgBuiltin returns the built-in defaults. core/default.toml writes exactly
// these values out (a test checks that the two agree); they also fill in any
// key that file might leave out.
func cfgBuiltin() *Config {
	return &Config{
		LogLevel:           "info",
		RuntimeDir:         "/run/nsplug",
		MaxInstances:       64,
		MaxStartsPerTarget: 4,
		Defaults: PluginSettings{
			Namespaces:     []string{},
			Mode:           "pooled",
			IdleTimeout:    Duration{30 * time.Second},
			RequestTimeout: Duration{10 * time.Second},
			StartTimeout:   Duration{10 * time.Second},
			AllowedRoots:   []string{"/"},
			FreshMounts:    []string{},
			Unshare:        []string{},

			AllowHostChanges: []string{},
		},
		MaxPluginBytes: DefaultMaxPluginBytes,
	}
}

var cfgDefault = sync.OnceValue(func() *Config {
	c := cfgBuiltin()
	if err := cfgDecode(c, cfgDefaultTOML, "default.toml"); err != nil {
		panic("nsplug: embedded default configuration: " + err.Error())
	}
	if err := c.Validate(); err != nil {
		panic("nsplug: embedded default configuration: " + err.Error())
	}
	return c
})

// DefaultConfig returns the default configuration: the embedded
// core/default.toml, decoded with the same strict decoder as LoadConfig, with
// every setting filled in and no [[plugin]] entries, which means that every
// built-in plugin runs with the defaults. Each call returns a new copy.
func DefaultConfig() *Config {
	c := cfgDefault().clone()
	c.src = nil // changes made in Go are not in default.toml
	return c
}

// LoadConfig reads, decodes and validates the TOML configuration file at
// path. Error messages refer to the file as path.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return ParseConfig(data, path)
}

// ParseConfig decodes and validates a TOML configuration. Keys it does not
// set keep their DefaultConfig values. name identifies the source in error
// messages, which look like
//
//	config.toml:12: unknown key "plugin.mdoe" in plugin #2 "netstat"
//	config.toml:7: key "defaults.idle_timeout": invalid duration "3x"
//
// All problems found are reported, joined with errors.Join; decoding
// problems (syntax, unknown keys, wrong types) are reported before, and
// instead of, validation problems.
func ParseConfig(data []byte, name string) (*Config, error) {
	c := DefaultConfig()
	if err := cfgDecode(c, data, name); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Settings returns the effective settings of plugin p: c.Defaults with p's
// overrides applied. A non-nil slice, a non-empty Mode and a non-zero
// duration of p replace the default. The returned slices are copies. A nil p
// yields the defaults.
func (c *Config) Settings(p *PluginConfig) PluginSettings {
	s := c.Defaults
	if p != nil {
		o := &p.PluginSettings
		if o.Namespaces != nil {
			s.Namespaces = o.Namespaces
		}
		if o.Mode != "" {
			s.Mode = o.Mode
		}
		if o.IdleTimeout.Duration != 0 {
			s.IdleTimeout = o.IdleTimeout
		}
		if o.RequestTimeout.Duration != 0 {
			s.RequestTimeout = o.RequestTimeout
		}
		if o.StartTimeout.Duration != 0 {
			s.StartTimeout = o.StartTimeout
		}
		if o.AllowedRoots != nil {
			s.AllowedRoots = o.AllowedRoots
		}
		if o.FreshMounts != nil {
			s.FreshMounts = o.FreshMounts
		}
		if o.Unshare != nil {
			s.Unshare = o.Unshare
		}
		if o.AllowHostChanges != nil {
			s.AllowHostChanges = o.AllowHostChanges
		}
	}
	s.cloneSlices()
	return s
}

func (s *PluginSettings) cloneSlices() {
	s.Namespaces = slices.Clone(s.Namespaces)
	s.AllowedRoots = slices.Clone(s.AllowedRoots)
	s.FreshMounts = slices.Clone(s.FreshMounts)
	s.Unshare = slices.Clone(s.Unshare)
	s.AllowHostChanges = slices.Clone(s.AllowHostChanges)
}

// clone copies c deeply enough that changing the copy's fields, slices or
// top-level Options keys does not affect c.
func (c *Config) clone() *Config {
	n := *c
	n.Defaults.cloneSlices()
	n.Plugins = slices.Clone(c.Plugins)
	for i := range n.Plugins {
		p := &n.Plugins[i]
		p.Types = slices.Clone(p.Types)
		p.Options = maps.Clone(p.Options)
		p.cloneSlices()
	}
	return &n
}

var (
	cfgLogLevels   = []string{"trace", "debug", "info", "warn", "error"}
	cfgModes       = []string{"pooled", "oneshot"}
	cfgNamespaces  = []string{"user", "mnt", "pid", "net", "ipc", "uts", "cgroup", "time"}
	cfgFreshMounts = []string{"proc", "sys", "cgroup"}

	cfgPluginNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
	cfgMsgTypeRE    = regexp.MustCompile(`^[a-z0-9_]+\.[a-z0-9_]+$`)
	cfgSHA256RE     = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Validate checks every value of c and reports all problems, joined with
// errors.Join. Each message names the key, the plugin (by index, counted from
// 1, and name) and, for a Config returned by LoadConfig or ParseConfig, the
// file and line. Line numbers are dropped for a plugin whose entry no longer
// matches the parsed file (e.g. after reordering c.Plugins).
//
// Validate normalizes PluginConfig.SHA256 to lowercase. LoadConfig and
// ParseConfig call it; embedders building a Config in Go (preferably
// starting from DefaultConfig) should call it too.
func (c *Config) Validate() error {
	v := &cfgValidator{src: c.src}
	root := cfgKey{}

	v.oneOf(root.child("log_level"), c.LogLevel, "log level", cfgLogLevels)
	if k := root.child("runtime_dir"); !filepath.IsAbs(c.RuntimeDir) {
		v.fail(k, "", "must be an absolute path, got %q", c.RuntimeDir)
	}
	if k := root.child("max_instances"); c.MaxInstances < 1 {
		v.fail(k, "", "must be at least 1, got %d", c.MaxInstances)
	}
	if k := root.child("max_starts_per_target"); c.MaxStartsPerTarget < 1 {
		v.fail(k, "", "must be at least 1, got %d", c.MaxStartsPerTarget)
	}
	if k := root.child("max_plugin_bytes"); c.MaxPluginBytes < 1 {
		v.fail(k, "", "must be at least 1, got %d", c.MaxPluginBytes)
	}
	v.settings(root.child("defaults"), &c.Defaults, false)

	seen := make(map[string]int, len(c.Plugins))
	for i := range c.Plugins {
		p := &c.Plugins[i]
		pk := root.child("plugin").elem(i)
		ref := &cfgPluginRef{index: i, name: p.Name, canon: pk.canon}
		if v.src != nil && (i >= len(v.src.plugins) || v.src.plugins[i] != p.Name) {
			ref.stale = true
		}
		pk.plugin = ref

		switch k := pk.child("name"); {
		case p.Name == "":
			v.fail(k, "", "required")
		case !cfgPluginNameRE.MatchString(p.Name):
			v.fail(k, "", "invalid plugin name %q (want [a-z0-9][a-z0-9_-]*)", p.Name)
		default:
			if j, dup := seen[p.Name]; dup {
				v.fail(k, "", "duplicate plugin name %q (also used by plugin #%d)", p.Name, j+1)
			} else {
				seen[p.Name] = i
			}
		}
		if k := pk.child("path"); p.Path != "" && !filepath.IsAbs(p.Path) {
			v.fail(k, "", "must be an absolute path, got %q", p.Path)
		}
		if k := pk.child("sha256"); p.SHA256 != "" {
			sum := strings.ToLower(p.SHA256)
			switch {
			case p.Path == "":
				v.fail(k, "", `set without "path" (built-in plugins are part of the nsplug binary and cannot be pinned)`)
			case !cfgSHA256RE.MatchString(sum):
				v.fail(k, "", "invalid sha256 %q (want 64 hex digits)", p.SHA256)
			default:
				p.SHA256 = sum
			}
		}
		k := pk.child("types")
		for j, t := range p.Types {
			if !cfgMsgTypeRE.MatchString(t) {
				v.fail(k, k.elem(j).canon, "invalid message type %q (want <word>.<word> with words of [a-z0-9_], e.g. \"procfs.read\")", t)
			}
		}
		if k := pk.child("options"); p.Options != nil {
			if _, err := json.Marshal(p.Options); err != nil {
				v.fail(k, "", "cannot be passed to the plugin as JSON: %v", err)
			}
		}
		v.settings(pk, &p.PluginSettings, true)
	}
	return errors.Join(v.errs...)
}

type cfgValidator struct {
	src  *cfgSource
	errs []error
}

func (v *cfgValidator) fail(k cfgKey, at string, format string, args ...any) {
	v.errs = append(v.errs, v.src.keyError(k, at, fmt.Sprintf(format, args...)))
}

// set reports whether a settings field at its zero value must nevertheless be
// validated: always in [defaults], and in a [[plugin]] when the file wrote
// the key explicitly.
func (v *cfgValidator) set(k cfgKey, isZero, override bool) bool {
	return !isZero || !override || v.src.line(k.canon, k.plugin) > 0
}

func (v *cfgValidator) oneOf(k cfgKey, val, what string, valid []string) {
	if !slices.Contains(valid, val) {
		v.fail(k, "", "invalid %s %q (want %s)", what, val, cfgAlternatives(valid))
	}
}

func (v *cfgValidator) list(k cfgKey, vals []string, what string, valid []string) {
	for i, s := range vals {
		at := k.elem(i).canon
		if !slices.Contains(valid, s) {
			v.fail(k, at, "unknown %s %q (want %s)", what, s, cfgAlternatives(valid))
		} else if slices.Contains(vals[:i], s) {
			v.fail(k, at, "duplicate %s %q", what, s)
		}
	}
}

func (v *cfgValidator) settings(k cfgKey, s *PluginSettings, override bool) {
	v.list(k.child("namespaces"), s.Namespaces, "namespace", cfgNamespaces)
	if mk := k.child("mode"); v.set(mk, s.Mode == "", override) {
		v.oneOf(mk, s.Mode, "mode", cfgModes)
	}
	for _, d := range []struct {
		key string
		val time.Duration
	}{
		{"idle_timeout", s.IdleTimeout.Duration},
		{"request_timeout", s.RequestTimeout.Duration},
		{"start_timeout", s.StartTimeout.Duration},
	} {
		if dk := k.child(d.key); v.set(dk, d.val == 0, override) && d.val <= 0 {
			v.fail(dk, "", "must be a positive duration, got %q", d.val.String())
		}
	}
	rk := k.child("allowed_roots")
	for i, r := range s.AllowedRoots {
		switch at := rk.elem(i).canon; {
		case !filepath.IsAbs(r):
			v.fail(rk, at, "%q is not an absolute path", r)
		case filepath.Clean(r) != r:
			v.fail(rk, at, "%q is not a clean path (want %q)", r, filepath.Clean(r))
		}
	}
	v.list(k.child("fresh_mounts"), s.FreshMounts, "fresh mount", cfgFreshMounts)
	v.list(k.child("unshare"), s.Unshare, "namespace", cfgNamespaces)
	v.list(k.child("allow_host_changes"), s.AllowHostChanges, "namespace", cfgNamespaces)
}

func cfgAlternatives(valid []string) string {
	q := make([]string, len(valid))
	for i, s := range valid {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// cfgSource describes the TOML text a Config was decoded from.
type cfgSource struct {
	name string
	// lines maps the canonical path (see cfgKey) of every key, table,
	// array-of-tables entry and array element in the text to the line
	// (from 1) where it is defined.
	lines map[string]int
	// plugins holds the names of the [[plugin]] entries as decoded, so that
	// Validate can tell whether Config.Plugins still matches the file.
	plugins []string
}

// line returns the line of the canonical path canon, or 0 if unknown.
func (s *cfgSource) line(canon string, p *cfgPluginRef) int {
	if s == nil || canon == "" || (p != nil && p.stale) {
		return 0
	}
	return s.lines[canon]
}

// keyError formats a problem with the value of key k. The line is that of the
// canonical path at if given and known, else of k, else of k's [[plugin]]
// entry.
func (s *cfgSource) keyError(k cfgKey, at, msg string) error {
	line := s.line(at, k.plugin)
	if line == 0 {
		line = s.line(k.canon, k.plugin)
	}
	if line == 0 && k.plugin != nil {
		line = s.line(k.plugin.canon, k.plugin)
	}
	return errors.New(s.prefix(line) + "key " + strconv.Quote(k.String()) + k.plugin.String() + ": " + msg)
}

func (s *cfgSource) unknownKey(k cfgKey) error {
	return errors.New(s.prefix(s.line(k.canon, k.plugin)) + "unknown key " + strconv.Quote(k.String()) + k.plugin.String())
}

func (s *cfgSource) prefix(line int) string {
	switch {
	case s == nil || s.name == "":
		return ""
	case line > 0:
		return s.name + ":" + strconv.Itoa(line) + ": "
	default:
		return s.name + ": "
	}
}

// cfgKey names a configuration key in two ways: dotted, the TOML key as
// written in its table (e.g. plugin.mode), for messages; and canon, which
// also contains array indexes, for line lookups: each key segment as a Go
// quoted string, each index as [i], e.g. "plugin"[1]"mode".
type cfgKey struct {
	dotted []string
	canon  string
	plugin *cfgPluginRef
}

func (k cfgKey) child(name string) cfgKey {
	return cfgKey{
		dotted: append(slices.Clip(k.dotted), name),
		canon:  k.canon + strconv.Quote(name),
		plugin: k.plugin,
	}
}

func (k cfgKey) elem(i int) cfgKey {
	k.canon += "[" + strconv.Itoa(i) + "]"
	return k
}

func (k cfgKey) String() string { return toml.Key(k.dotted).String() }

// cfgPluginRef identifies the [[plugin]] entry a key belongs to.
type cfgPluginRef struct {
	index int    // from 0
	name  string // may be empty
	canon string // canonical path of the entry
	stale bool   // Config.Plugins no longer matches the file: no lines
}

func (p *cfgPluginRef) String() string {
	switch {
	case p == nil:
		return ""
	case p.name == "":
		return " in plugin #" + strconv.Itoa(p.index+1)
	default:
		return " in plugin #" + strconv.Itoa(p.index+1) + " " + strconv.Quote(p.name)
	}
}

// cfgError is an error with its own message that wraps an underlying error,
// such as a toml.ParseError.
type cfgError struct {
	msg string
	err error
}

func (e *cfgError) Error() string { return e.msg }
func (e *cfgError) Unwrap() error { return e.err }

// cfgDecode strictly decodes the TOML text data onto c: only keys present in
// the text change c. The text is parsed by the toml package into generic
// values, which are then checked against the schema here rather than by
// toml's struct decoding, because that matches keys case-insensitively,
// stops at a random first error, and cannot give the line of a key in an
// array of tables (toml.MetaData keeps one position per dotted key, shared
// by all [[plugin]] entries, and does not export it). Lines come from
// cfgScanLines.
func cfgDecode(c *Config, data []byte, name string) error {
	data = []byte(cfgStripBOM(string(data))) // so that offsets in errors match
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
			return &cfgError{msg: fmt.Sprintf("%s:%d: %s", name, line, pe.Message), err: err}
		}
		return &cfgError{msg: name + ": " + err.Error(), err: err}
	}
	d := &cfgDecoder{src: &cfgSource{name: name, lines: cfgScanLines(string(data))}}
	d.config(raw, c)
	if len(d.errs) > 0 {
		return errors.Join(d.errs...)
	}
	// Plugins inherited from the base (if the text has no [[plugin]])
	// find no names in d.src.plugins, so Validate gives them no lines.
	c.src = d.src
	return nil
}

type cfgDecoder struct {
	src  *cfgSource
	errs []error
}

func (d *cfgDecoder) fail(k cfgKey, at string, format string, args ...any) {
	d.errs = append(d.errs, d.src.keyError(k, at, fmt.Sprintf(format, args...)))
}

func (d *cfgDecoder) typeError(k cfgKey, want string, v any) {
	d.fail(k, "", "expected %s, got %s", want, cfgTypeName(v))
}

func (d *cfgDecoder) unknown(k cfgKey) {
	d.errs = append(d.errs, d.src.unknownKey(k))
}

// keys returns the keys of table m, whose canonical path is k's, in the order
// they appear in the text.
func (d *cfgDecoder) keys(k cfgKey, m map[string]any) []string {
	keys := slices.Collect(maps.Keys(m))
	slices.SortFunc(keys, func(a, b string) int {
		la := d.src.line(k.child(a).canon, nil)
		lb := d.src.line(k.child(b).canon, nil)
		return cmp.Or(cmp.Compare(la, lb), strings.Compare(a, b))
	})
	return keys
}

func (d *cfgDecoder) config(raw map[string]any, c *Config) {
	root := cfgKey{}
	for _, name := range d.keys(root, raw) {
		k, v := root.child(name), raw[name]
		switch name {
		case "log_level":
			d.decodeString(k, v, &c.LogLevel)
		case "runtime_dir":
			d.decodeString(k, v, &c.RuntimeDir)
		case "max_instances":
			d.decodeInt(k, v, &c.MaxInstances)
		case "max_starts_per_target":
			d.decodeInt(k, v, &c.MaxStartsPerTarget)
		case "max_plugin_bytes":
			if n, ok := v.(int64); ok {
				c.MaxPluginBytes = n
			} else {
				d.typeError(k, "integer", v)
			}
		case "fail_on_plugin_error":
			if b, ok := v.(bool); ok {
				c.FailOnPluginError = b
			} else {
				d.typeError(k, "boolean", v)
			}
		case "defaults":
			if m, ok := d.table(k, v); ok {
				for _, n := range d.keys(k, m) {
					if !d.setting(k.child(n), m[n], &c.Defaults) {
						d.unknown(k.child(n))
					}
				}
			}
		case "plugin":
			c.Plugins = d.plugins(k, v)
		default:
			d.unknown(k)
		}
	}
}

func (d *cfgDecoder) plugins(k cfgKey, v any) []PluginConfig {
	var entries []map[string]any
	switch t := v.(type) {
	case []map[string]any: // [[plugin]]
		entries = t
	case []any: // plugin = [{...}, ...]
		for _, e := range t {
			m, ok := e.(map[string]any)
			if !ok {
				d.fail(k, "", "expected array of tables, got array containing %s", cfgTypeName(e))
				return nil
			}
			entries = append(entries, m)
		}
	default:
		d.typeError(k, "array of tables ([[plugin]])", v)
		return nil
	}
	plugins := make([]PluginConfig, len(entries))
	d.src.plugins = make([]string, len(entries))
	for i, m := range entries {
		pk := k.elem(i)
		pk.plugin = &cfgPluginRef{index: i, canon: pk.canon}
		pk.plugin.name, _ = m["name"].(string)
		p := &plugins[i]
		for _, name := range d.keys(pk, m) {
			ck, v := pk.child(name), m[name]
			switch name {
			case "name":
				d.decodeString(ck, v, &p.Name)
			case "path":
				d.decodeString(ck, v, &p.Path)
			case "sha256":
				d.decodeString(ck, v, &p.SHA256)
			case "types":
				d.decodeStrings(ck, v, &p.Types)
			case "disabled":
				if b, ok := v.(bool); ok {
					p.Disabled = b
				} else {
					d.typeError(ck, "boolean", v)
				}
			case "options":
				if t, ok := d.table(ck, v); ok {
					p.Options = t
				}
			default:
				if !d.setting(ck, v, &p.PluginSettings) {
					d.unknown(ck)
				}
			}
		}
		d.src.plugins[i] = p.Name
	}
	return plugins
}

// setting decodes the PluginSettings key k; it reports false if k's last
// segment is not such a key.
func (d *cfgDecoder) setting(k cfgKey, v any, s *PluginSettings) bool {
	switch k.dotted[len(k.dotted)-1] {
	case "namespaces":
		d.decodeStrings(k, v, &s.Namespaces)
	case "mode":
		d.decodeString(k, v, &s.Mode)
	case "idle_timeout":
		d.decodeDuration(k, v, &s.IdleTimeout)
	case "request_timeout":
		d.decodeDuration(k, v, &s.RequestTimeout)
	case "start_timeout":
		d.decodeDuration(k, v, &s.StartTimeout)
	case "allowed_roots":
		d.decodeStrings(k, v, &s.AllowedRoots)
	case "fresh_mounts":
		d.decodeStrings(k, v, &s.FreshMounts)
	case "unshare":
		d.decodeStrings(k, v, &s.Unshare)
	case "allow_host_changes":
		d.decodeStrings(k, v, &s.AllowHostChanges)
	default:
		return false
	}
	return true
}

func (d *cfgDecoder) decodeInt(k cfgKey, v any, dst *int) {
	if n, ok := v.(int64); !ok {
		d.typeError(k, "integer", v)
	} else if int64(int(n)) != n {
		d.fail(k, "", "%d is out of range", n)
	} else {
		*dst = int(n)
	}
}

func (d *cfgDecoder) decodeString(k cfgKey, v any, dst *string) {
	if s, ok := v.(string); ok {
		*dst = s
	} else {
		d.typeError(k, "string", v)
	}
}

// decodeStrings decodes an array of strings; an empty array gives a non-nil empty
// slice.
func (d *cfgDecoder) decodeStrings(k cfgKey, v any, dst *[]string) {
	a, ok := v.([]any)
	if !ok {
		d.typeError(k, "array of strings", v)
		return
	}
	out := make([]string, len(a))
	for i, e := range a {
		s, ok := e.(string)
		if !ok {
			d.fail(k, k.elem(i).canon, "expected array of strings, but item %d is %s", i+1, cfgTypeName(e))
			return
		}
		out[i] = s
	}
	*dst = out
}

func (d *cfgDecoder) decodeDuration(k cfgKey, v any, dst *Duration) {
	s, ok := v.(string)
	if !ok {
		d.typeError(k, `duration string (e.g. "30s")`, v)
		return
	}
	var dur Duration
	if err := dur.UnmarshalText([]byte(s)); err != nil {
		d.fail(k, "", "%v", err)
		return
	}
	*dst = dur
}

func (d *cfgDecoder) table(k cfgKey, v any) (map[string]any, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		d.typeError(k, "table", v)
	}
	return m, ok
}

// cfgTypeName names the TOML type of a value decoded by the toml package.
func cfgTypeName(v any) string {
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

// cfgScanLines finds the line of every key in the TOML text src, which the
// toml package has already parsed successfully. The toml package does not
// export key positions, so this is a small scanner of its own: it follows
// table headers ([a.b]), arrays of tables ([[a]], counting entries per
// parent, so that the second [[plugin]] is "plugin"[1]), dotted and quoted
// keys, inline tables and arrays (whose elements are recorded by index), and
// skips strings of all four kinds and comments. The result maps canonical
// paths (see cfgKey) to lines; the first definition of a path wins. It never
// panics: on malformed input it returns what it found.
func cfgScanLines(src string) (lines map[string]int) {
	s := &cfgScanner{src: src, line: 1, lines: map[string]int{}, aot: map[string]int{}}
	defer func() {
		if recover() != nil {
			lines = s.lines
		}
	}()
	s.src = cfgStripBOM(s.src)
	s.document()
	return s.lines
}

// cfgStripBOM removes a byte order mark, as the toml package does (it also
// accepts, and drops, a UTF-16 one).
func cfgStripBOM(s string) string {
	for _, bom := range []string{"\xef\xbb\xbf", "\xff\xfe", "\xfe\xff"} {
		if strings.HasPrefix(s, bom) {
			return s[len(bom):]
		}
	}
	return s
}

type cfgScanner struct {
	src   string
	i     int // byte offset in src
	line  int // line of src[i]
	lines map[string]int
	aot   map[string]int // canonical path of an array of tables → entries so far
}

func (s *cfgScanner) peek() byte {
	if s.i < len(s.src) {
		return s.src[s.i]
	}
	return 0
}

func (s *cfgScanner) record(path string, line int) {
	if _, ok := s.lines[path]; !ok {
		s.lines[path] = line
	}
}

// skip skips blanks and comments, and newlines too if nl is set.
func (s *cfgScanner) skip(nl bool) {
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

func (s *cfgScanner) document() {
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
func (s *cfgScanner) header(keys []string, array bool, line int) string {
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
func (s *cfgScanner) keyValue(table string) {
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
func (s *cfgScanner) key() []string {
	var keys []string
	for {
		s.skip(false)
		keys = append(keys, s.simpleKey())
		s.skip(false)
		if s.peek() != '.' {
			return keys
		}
		s.i++
	}
}

func (s *cfgScanner) simpleKey() string {
	switch q := s.peek(); q {
	case '"', '\'':
		s.i++
		start := s.i
		for s.i < len(s.src) && s.src[s.i] != q && s.src[s.i] != '\n' {
			if q == '"' && s.src[s.i] == '\\' {
				s.i++
			}
			s.i++
		}
		raw := s.src[start:min(s.i, len(s.src))]
		if s.i < len(s.src) && s.src[s.i] == q {
			s.i++
		}
		if q == '"' {
			return cfgUnescape(raw)
		}
		return raw
	default:
		start := s.i
		for s.i < len(s.src) && cfgBareKeyChar(s.src[s.i]) {
			s.i++
		}
		return s.src[start:s.i]
	}
}

func cfgBareKeyChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}

// value scans one value; inline tables and arrays are scanned recursively
// so that their keys and elements get lines.
func (s *cfgScanner) value(path string) {
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

func (s *cfgScanner) inlineTable(path string) {
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

func (s *cfgScanner) array(path string) {
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
func (s *cfgScanner) skipString() {
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

// cfgUnescape decodes the escapes of a TOML basic string (the text between
// the quotes of a quoted key).
func cfgUnescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		i++
		hex := 0
		switch s[i] {
		case 'b':
			b.WriteByte('\b')
		case 't':
			b.WriteByte('\t')
		case 'n':
			b.WriteByte('\n')
		case 'f':
			b.WriteByte('\f')
		case 'r':
			b.WriteByte('\r')
		case 'e':
			b.WriteByte(0x1b)
		case 'x':
			hex = 2
		case 'u':
			hex = 4
		case 'U':
			hex = 8
		default: // \" and \\ (anything else is not valid TOML)
			b.WriteByte(s[i])
		}
		if hex > 0 && i+hex < len(s) {
			if r, err := strconv.ParseUint(s[i+1:i+1+hex], 16, 32); err == nil {
				b.WriteRune(rune(r))
				i += hex
			}
		}
	}
	return b.String()
}
