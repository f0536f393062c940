package config

import (
	"fmt"
	"maps"
	"runtime"
	"slices"
	"time"
)

// Config is the nsplug configuration, read from a TOML file by Load or
// Parse.
//
// Decoding is strict: a key that is not listed here, a value of the wrong TOML
// type or a malformed duration is an error that names the key and the line
// it is on. Keys are matched case-sensitively. Keys a file does not set keep
// the value of the embedded default configuration (see Default).
//
// A Config built or modified in Go should be checked with Validate.
type Config struct {
	// LogLevel is one of trace, debug, info, warn or error.
	// Plugins log at it; so does the core, unless Options.Logger is given
	// (its own level then filters the core's lines and the plugins').
	LogLevel string `toml:"log_level"`
	// RuntimeDir is the absolute path of the root-only directory under which
	// each plugin instance gets its socket directory (others may at most
	// search it, to reach the socket of `nsplug serve` in it).
	RuntimeDir string `toml:"runtime_dir"`
	// MaxInstances is the global cap on live plugin processes; at least 1.
	MaxInstances int `toml:"max_instances"`
	// MaxStartsPerTarget bounds the cold starts in progress for one target
	// (one set of namespaces) at once, so that a target whose starts hang
	// holds at most that many of max_instances; others wait for a slot
	// within their deadline. At least 1.
	MaxStartsPerTarget int `toml:"max_starts_per_target"`
	// MaxStarts bounds the cold starts in progress at once over all
	// targets: a start is mostly CPU, and more at once than the machine
	// runs only makes each slower. 0 means twice the CPUs this process
	// may run on (see StartLimit). Starts beyond it, or beyond
	// max_starts_per_target, wait in a queue served round-robin across
	// targets, each within its request's deadline. At least 0.
	MaxStarts int `toml:"max_starts"`
	// MaxQueuedStarts bounds the cold starts waiting in that queue; one
	// more fails at once with EAGAIN. At least 1.
	MaxQueuedStarts int `toml:"max_queued_starts"`
	// MaxPluginBytes bounds a plugin executable's size: each is copied
	// into memory at start (see core/executable.go), and a larger file is
	// refused without copying. At least 1.
	MaxPluginBytes int64 `toml:"max_plugin_bytes"`
	// FailOnPluginError makes core.New fail when any configured plugin
	// fails to load (a missing or oversized executable, a wrong sha256, a
	// bad option, a type it does not serve, ...). By default such a plugin
	// is recorded as failed, with its error, and the others serve.
	FailOnPluginError bool `toml:"fail_on_plugin_error"`
	// Defaults apply to every plugin unless its [[plugin]] entry overrides
	// them. Every field of Defaults must be set (Default sets them all).
	Defaults Settings `toml:"defaults"`
	// Plugins are the [[plugin]] entries. Every built-in plugin is loaded
	// with Defaults unless an entry of its name overrides its settings or
	// disables it; entries with a path add third-party plugins.
	Plugins []Plugin `toml:"plugin"`
	// Server holds the node daemon's settings (`nsplug serve`).
	Server Server `toml:"server"`

	// src remembers where the configuration was parsed from, so that
	// Validate and OptionError can point at file lines. Nil for a Config
	// built in Go.
	src *source
}

// StartLimit is the bound on concurrent cold starts that MaxStarts
// sets: itself, or for 0 twice the CPUs this process may run on.
func (c *Config) StartLimit() int {
	if c.MaxStarts > 0 {
		return c.MaxStarts
	}
	return 2 * runtime.NumCPU()
}

// The default of every key is in default.toml (embedded; see Default),
// the only place that states it.

// Settings are the per-plugin knobs that [defaults] sets for all plugins
// and a [[plugin]] entry may override.
//
// In [defaults] every field is in effect. In a [[plugin]] entry a field at its
// zero value means "not set, inherit from [defaults]": a nil slice, an empty
// Mode, a zero Duration. A key written in the file is always "set": an
// explicitly empty array (e.g. namespaces = []) decodes to a non-nil empty
// slice and therefore replaces the default, while an explicit mode = "" or a
// zero duration such as "0s" is rejected by Validate rather than being taken
// as "unset". Config.Settings computes the merged, effective settings.
type Settings struct {
	// Namespaces the handler joins: a subset of user, mnt, pid, net, ipc, uts,
	// cgroup and time. Empty means every namespace of the target process that
	// differs from the core's own.
	Namespaces []string `toml:"namespaces"`
	// Mode is "pooled" (warm instances are reused) or "oneshot" (one plugin
	// process per request).
	Mode string `toml:"mode"`
	// IdleTimeout is how long an idle pooled instance lives.
	IdleTimeout Duration `toml:"idle_timeout"`
	// RequestTimeout bounds a single request.
	RequestTimeout Duration `toml:"request_timeout"`
	// StartTimeout bounds starting a plugin process, including the
	// go-plugin handshake.
	StartTimeout Duration `toml:"start_timeout"`
	// AllowedRoots are the absolute, clean paths (filepath.Clean(p) == p)
	// under which requests may touch files. An empty list allows no path at
	// all.
	AllowedRoots []string `toml:"allowed_roots"`
	// FreshMounts lists pseudo file systems, "proc", "sys" and/or "cgroup", of which
	// the handler is given a private, freshly mounted instance.
	FreshMounts []string `toml:"fresh_mounts"`
	// Unshare lists namespaces the handler unshares after joining the
	// target's: mnt, net, ipc, uts or cgroup (user, pid and time cannot
	// be unshared once joined).
	Unshare []string `toml:"unshare"`
	// AllowHostChanges lists namespaces (same names as Namespaces) whose
	// state the plugin's message types may change even where the handler
	// shares them with the core, that is, on the host: a type that
	// declares it changes a namespace (mount.mount changes "mnt") is
	// otherwise refused with EPERM when that namespace is not joined (the
	// target has none of its own, or namespaces or a request left it out).
	AllowHostChanges []string `toml:"allow_host_changes"`
}

// Plugin is one [[plugin]] entry. The Settings keys are written flat in
// the same table and override [defaults] (see Settings for how "unset" is
// represented).
type Plugin struct {
	// Name is required and unique; it matches [a-z0-9][a-z0-9_-]*.
	Name string `toml:"name"`
	// Path is the absolute path of a plugin executable. Empty selects the
	// built-in plugin called Name.
	Path string `toml:"path"`
	// SHA256 optionally pins the executable at Path to this hex SHA-256
	// digest (64 hex digits). It requires Path, since built-in plugins are
	// part of the nsplug binary. Validate lowercases it.
	SHA256 string `toml:"sha256"`
	// Types restricts the message types the plugin may serve, each named
	// as the sdk requires (wire.CheckTypeName), e.g. "procfs.read", and
	// each at most once. Empty means all types the plugin declares.
	Types []string `toml:"types"`
	// Options are free-form plugin options, handed to the plugin as JSON
	// and checked by its Configure hook when it loads (see OptionError).
	Options map[string]any `toml:"options"`
	// Disabled leaves the plugin out (for a built-in: it is not loaded).
	Disabled bool `toml:"disabled"`
	Settings
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

// Settings returns the effective settings of plugin p: c.Defaults with p's
// overrides applied. A non-nil slice, a non-empty Mode and a non-zero
// duration of p replace the default. The returned slices are copies. A nil p
// yields the defaults.
func (c *Config) Settings(p *Plugin) Settings {
	s := c.Defaults
	if p != nil {
		o := &p.Settings
		overrideSlice(&s.Namespaces, o.Namespaces)
		if o.Mode != "" {
			s.Mode = o.Mode
		}
		for _, d := range [][2]*Duration{{&s.IdleTimeout, &o.IdleTimeout}, {&s.RequestTimeout, &o.RequestTimeout}, {&s.StartTimeout, &o.StartTimeout}} {
			if d[1].Duration != 0 {
				*d[0] = *d[1]
			}
		}
		overrideSlice(&s.AllowedRoots, o.AllowedRoots)
		overrideSlice(&s.FreshMounts, o.FreshMounts)
		overrideSlice(&s.Unshare, o.Unshare)
		overrideSlice(&s.AllowHostChanges, o.AllowHostChanges)
	}
	s.cloneSlices()
	return s
}

func overrideSlice(dst *[]string, o []string) {
	if o != nil {
		*dst = o
	}
}

func (s *Settings) cloneSlices() {
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
	n.Server.Allow = slices.Clone(c.Server.Allow)
	for i := range n.Server.Allow {
		r := &n.Server.Allow[i]
		r.UIDs, r.GIDs, r.Types = slices.Clone(r.UIDs), slices.Clone(r.GIDs), slices.Clone(r.Types)
	}
	return &n
}
