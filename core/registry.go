package core

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/nsexec/boot"
	"github.com/nsplug/nsplug/wire"
)

// pluginEntry is a configured plugin, ready to start.
type pluginEntry struct {
	name         string
	builtin      bool
	path         string
	exe          *sealedExecutable
	sha256       string // of a third-party plugin's exe, kept when a failed one's is closed (a built-in's: exe.sum())
	err          error  // why it failed to load; nil when it serves
	settings     config.Settings
	join         uintptr // namespaces it may join; all by default
	unshare      uintptr
	freshProc    bool
	freshSys     bool
	freshCgroup  bool
	pluginConfig []byte // wire.PluginConfig as JSON (of a shared entry: by plugin name)
	types        []TypeInfo
	// proc is the entry whose processes serve the plugin's requests:
	// itself, or for built-ins the entry of those that share processes
	// (shareBuiltins), which serves the built-ins named in serves.
	proc   *pluginEntry
	serves []string
}

// pluginConfigs is the list of plugins to load: every built-in (with
// defaults, or with the settings of the entry of its name) unless an entry
// disables it, then the configured third-party plugins, in file order.
func pluginConfigs(entries []config.Plugin, builtins []Builtin) []config.Plugin {
	byName := make(map[string]*config.Plugin)
	for i := range entries {
		byName[entries[i].Name] = &entries[i]
	}
	var out []config.Plugin
	for _, b := range builtins {
		pc := byName[b.Name]
		switch {
		case pc == nil:
			out = append(out, config.Plugin{Name: b.Name})
		case pc.Path == "" && !pc.Disabled:
			out = append(out, *pc)
		}
	}
	for _, pc := range entries {
		if pc.Disabled || (pc.Path == "" && builtinNamed(builtins, pc.Name)) {
			continue
		}
		out = append(out, pc)
	}
	return out
}

func builtinNamed(builtins []Builtin, name string) bool {
	for _, b := range builtins {
		if b.Name == name {
			return true
		}
	}
	return false
}

// setUp fills in e's settings from the configuration, which
// config.Validate has checked: the namespace names parse, and the preamble
// can unshare what unshare lists.
func (d *Dispatcher) setUp(cfg *config.Config, pc *config.Plugin, e *pluginEntry) error {
	s := cfg.Settings(pc)
	if d.oneshot {
		s.Mode = "oneshot"
	}
	e.settings, e.join = s, boot.AllNamespaces
	if len(s.Namespaces) > 0 {
		e.join, _ = boot.ParseNamespaces(s.Namespaces)
	}
	e.unshare, _ = boot.ParseNamespaces(s.Unshare)
	for _, m := range s.FreshMounts {
		switch m {
		case "proc":
			e.freshProc = true
		case "sys":
			e.freshSys = true
		case "cgroup":
			e.freshCgroup = true
		}
	}
	opts, err := json.Marshal(pc.Options)
	if err != nil {
		return fmt.Errorf("plugin %s: options: %w", pc.Name, err)
	}
	if len(pc.Options) == 0 {
		opts = nil
	}
	e.pluginConfig, _ = json.Marshal(wire.PluginConfig{Options: opts, AllowedRoots: s.AllowedRoots, LogLevel: cfg.LogLevel,
		AllowHostChanges: s.AllowHostChanges})
	return nil
}

// describeExternal starts an external plugin once, in no target, to learn
// what it serves (and have it check its options). It gets nothing
// serving does not: it starts the way every instance does, but in a
// throwaway set of fresh namespaces, unprivileged (see launch.describe).
func (d *Dispatcher) describeExternal(e *pluginEntry) (*wire.DescribeResponse, error) {
	c, err := d.startDescribing(launch{plugin: e, describe: true})
	if err != nil {
		return nil, err
	}
	defer c.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), e.settings.StartTimeout.Duration)
	defer cancel()
	desc, err := c.Describe(ctx)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: describe: %w", e.name, err)
	}
	return desc, nil
}

// register adds a plugin's message types to the registry. allowed, from
// the configuration, restricts them; naming a type the plugin does not
// serve is an error. On error nothing is registered.
func (d *Dispatcher) register(e *pluginEntry, allowed []string, served []*wire.MessageType) error {
	byName := make(map[string]*wire.MessageType)
	for _, t := range served {
		if err := wire.CheckMessageType(t); err != nil {
			return fmt.Errorf("plugin %s: %w", e.name, err)
		}
		byName[t.Name] = t
	}
	names := allowed
	if len(names) == 0 {
		names = sortedKeys(byName)
	}
	for _, n := range names {
		if byName[n] == nil {
			return unservedTypeError{fmt.Errorf("plugin %s: the configuration names message type %q, which plugin %s does not serve (it serves: %s)", e.name, n, e.name, strings.Join(sortedKeys(byName), ", "))}
		}
		if other := d.types[n]; other != nil {
			return fmt.Errorf("plugin %s: message type %q is served by both plugin %s and plugin %s", e.name, n, other.name, e.name)
		}
	}
	for _, n := range names {
		t := byName[n]
		d.types[n] = e
		e.types = append(e.types, TypeInfo{Name: t.Name, Version: t.Version, Description: t.Description, Plugin: e.name,
			Changes: t.Changes, MayChange: t.MayChange})
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// unservedTypeError is a type the configuration lists that the plugin
// does not serve: a problem of the entry's types key.
type unservedTypeError struct{ error }
