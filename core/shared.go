package core

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/nsplug/nsplug/wire"
)

// shareBuiltins gives the built-ins that loaded one process per target
// and credentials where nothing tells their processes apart: the same
// namespaces to join and unshare, mode, idle and start timeouts (and, by
// construction, executable). A target with every built-in warm then holds
// one process (and its pid-namespace waiter) instead of one per built-in.
// What differs per plugin stays per plugin: options, allowed_roots,
// allow_host_changes and with it the refusal of Changes/MayChange, and
// which fresh mounts its handlers see, all decided by the plugin's own
// server inside the process (sdk, serveShared); request_timeout is the
// core's, per request. The process makes the fresh mounts any of them
// asks for. Third-party plugins are never shared: each has processes of
// its own.
func (d *Dispatcher) shareBuiltins() error {
	groups := make(map[string]*pluginEntry)
	configs := make(map[*pluginEntry]map[string]wire.PluginConfig)
	for _, e := range d.plugins {
		e.proc = e
		if !e.builtin || e.err != nil {
			continue
		}
		s := e.settings
		sig := fmt.Sprintf("%x/%x/%s/%v/%v", e.join, e.unshare, s.Mode, s.IdleTimeout.Duration, s.StartTimeout.Duration)
		g := groups[sig]
		if g == nil {
			g = &pluginEntry{builtin: true, path: e.path, exe: e.exe, sha256: e.sha256, settings: s, join: e.join, unshare: e.unshare}
			groups[sig] = g
			configs[g] = make(map[string]wire.PluginConfig)
		}
		var pc wire.PluginConfig
		if err := json.Unmarshal(e.pluginConfig, &pc); err != nil {
			return fmt.Errorf("plugin %s: %w", e.name, err)
		}
		for _, m := range []struct {
			want bool
			name string
		}{{e.freshProc, "proc"}, {e.freshSys, "sys"}, {e.freshCgroup, "cgroup"}} {
			if m.want {
				pc.FreshMounts = append(pc.FreshMounts, m.name)
			}
		}
		g.freshProc = g.freshProc || e.freshProc
		g.freshSys = g.freshSys || e.freshSys
		g.freshCgroup = g.freshCgroup || e.freshCgroup
		g.serves = append(g.serves, e.name)
		configs[g][e.name] = pc
		e.proc = g
	}
	for g, cfg := range configs {
		g.name = strings.Join(g.serves, "+")
		var err error
		if g.pluginConfig, err = json.Marshal(cfg); err != nil {
			return err
		}
	}
	return nil
}

// served are the plugins e's processes serve.
func (e *pluginEntry) served() []string {
	if e.serves != nil {
		return append([]string{}, e.serves...)
	}
	return []string{e.name}
}
