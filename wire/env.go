package wire

import (
	"encoding/json"
	"time"
)

// ProtocolVersion is the version of this contract. go-plugin negotiates it
// at start (control.Handshake): a core and a plugin that share no version
// refuse each other with an error naming both. It changes when a change is
// not additive; 2 made the frame channel the only data plane (protocol 1
// also had a gRPC Handle call).
const ProtocolVersion = 2

// What the core hands a plugin process besides its descriptors (those are
// the bootstrap contract of nsexec/nsexec.h; see README.md, "Bootstrap").
// Only the host can read a plugin's environment: the process is not
// dumpable.
const (
	// EnvCookie is go-plugin's magic cookie variable, set to Cookie in
	// every plugin process (control.Handshake).
	EnvCookie = "NSPLUG_PLUGIN"
	// Cookie is EnvCookie's value.
	Cookie = "d7c0b5a4-handler"
	// EnvConfig carries the plugin's PluginConfig, as JSON. The sdk
	// unsets it before any handler runs.
	EnvConfig = "NSPLUG_PLUGIN_CONFIG"
	// EnvFramesOnly, when set, tells a plugin it was started to serve,
	// without go-plugin (no socket, no handshake line, no Describe): it
	// serves the frame channel alone until the core closes it, then
	// exits. Every serving process, pooled or oneshot, is started so;
	// go-plugin launches a plugin only to describe it.
	EnvFramesOnly = "NSPLUG_FRAMES_ONLY"
	// EnvBuiltin names the built-in plugins a re-executed binary is to
	// serve, separated by commas: the core starts built-ins by
	// re-executing its own binary, one process for the built-ins whose
	// settings for a process are the same. EnvConfig then holds a JSON
	// object, plugin name → PluginConfig.
	EnvBuiltin = "NSPLUG_BUILTIN"
	// EnvBuiltinBuild, when set with EnvBuiltin, is the identity of the
	// built-ins the core described (core.Builtin.Build): a binary whose
	// own built-ins have another identity (the lean handler binary of
	// another build) refuses to serve, saying so on the status pipe,
	// rather than serve requests the core checked against other code.
	EnvBuiltinBuild = "NSPLUG_BUILTIN_BUILD"
	// EnvGOGC is the GOGC the sdk sets (debug.SetGCPercent) once a
	// serving process has sent its first response, or has lived
	// GCDelay, whichever comes first. GOGC itself would apply from the
	// first allocation: a heap goal under the ~1 MB that package init
	// allocates makes the runtime collect during init, ~2 ms of CPU on
	// every plugin start, which a oneshot process never needs.
	EnvGOGC = "NSPLUG_GOGC"
)

// GCDelay is how long, at most, a serving process runs with the
// runtime's default GOGC before EnvGOGC applies: a process that serves
// sooner has it from its first response on, so that a burst of requests
// in its first second does not grow its heap to the default goal.
const GCDelay = time.Second

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
	// FreshMounts, for a built-in sharing a process, are the fresh
	// mounts ("proc", "sys", "cgroup") of the process its handlers see:
	// those its configuration or its plugin asks for.
	FreshMounts []string `json:"fresh_mounts,omitempty"`
}
