package wire

import "encoding/json"

// What the core hands a plugin process besides its descriptors (those are
// the bootstrap contract of nsexec/nsexec.h; see README.md, "Bootstrap").
// Only the host can read a plugin's environment: the process is not
// dumpable.
const (
	// EnvConfig carries the plugin's PluginConfig, as JSON. The sdk
	// unsets it before any handler runs.
	EnvConfig = "NSPLUG_PLUGIN_CONFIG"
	// EnvOneshot, when set, tells a plugin it was started for a single
	// request on the frame channel, without go-plugin: it serves until
	// the core closes the channel, then exits.
	EnvOneshot = "NSPLUG_ONESHOT"
	// EnvBuiltin names the built-in plugin a re-executed binary is to
	// serve: the core starts built-ins by re-executing its own binary.
	EnvBuiltin = "NSPLUG_BUILTIN"
)

// PluginConfig is what the core tells a plugin about its configuration
// (EnvConfig). Unknown fields are ignored: fields are only ever added.
type PluginConfig struct {
	// Options is the plugin's [plugin.options] table from the TOML
	// configuration, as JSON.
	Options json.RawMessage `json:"options,omitempty"`
	// AllowedRoots restrict the paths requests may name. Nil (JSON null
	// or absent) allows every path; an empty list allows none.
	AllowedRoots []string `json:"allowed_roots"`
	// LogLevel is the level the core logs at.
	LogLevel string `json:"log_level,omitempty"`
	// AllowHostChanges are the namespaces whose state the plugin may
	// change even where its handler shares them with the core, i.e.
	// change the host's (the allow_host_changes setting).
	AllowHostChanges []string `json:"allow_host_changes,omitempty"`
}
