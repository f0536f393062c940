package handler

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/internal/inproc"
	"github.com/nsplug/nsplug/nsexec"
	"github.com/nsplug/nsplug/wire"
)

// mux serves the built-ins of a binary that share one process (see
// inproc.ServeShared): each plugin keeps its own server, with its own
// options, allowed roots, allow_host_changes and fresh mounts, so what a
// type may do is decided exactly as it would be in a process of its own;
// only the process is shared.
type mux map[string]*server // by message type

func (m mux) handle(ctx context.Context, req *wire.HandleRequest) (*wire.HandleResponse, []*os.File) {
	s := m[req.Type]
	if s == nil {
		return wire.ErrorResponse(Errorf(syscall.EOPNOTSUPP, "this process serves no message type %q", req.Type)), nil
	}
	return s.handle(ctx, req)
}

func init() { inproc.ServeShared = serveShared }

// serveShared is inproc.ServeShared. Its configuration (wire.EnvConfig)
// is a JSON object: plugin name → wire.PluginConfig, one for each plugin
// it serves; a plugin's FreshMounts say which of the process's fresh
// mounts its handlers see.
func serveShared(plugins []any) {
	configs := map[string]*wire.PluginConfig{}
	if err := json.Unmarshal([]byte(os.Getenv(wire.EnvConfig)), &configs); err != nil {
		fail(fmt.Sprintf("built-ins: bad %s: %v", wire.EnvConfig, err))
	}
	os.Unsetenv(wire.EnvConfig)
	var level hclog.Level = hclog.NoLevel
	for _, c := range configs {
		level = hclog.LevelFromString(c.LogLevel)
		break
	}
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	var names []string
	m := mux{}
	self := nsexec.Self()
	for _, p := range plugins {
		p := p.(*Plugin)
		config := configs[p.Name]
		if config == nil {
			fail(fmt.Sprintf("built-ins: no configuration for plugin %s in %s", p.Name, wire.EnvConfig))
		}
		log := hclog.New(&hclog.LoggerOptions{Name: p.Name, Level: level, Output: os.Stderr, JSONFormat: true})
		s, err := newServer(p, config, log)
		if err != nil {
			fail(err.Error())
		}
		// Only the fresh mounts the plugin asked for: procfs, say,
		// reads the target's own /proc unless configured otherwise.
		if !slices.Contains(config.FreshMounts, "proc") {
			s.fresh.Proc = nil
		}
		if !slices.Contains(config.FreshMounts, "sys") {
			s.fresh.Sys = nil
		}
		if !slices.Contains(config.FreshMounts, "cgroup") {
			s.fresh.Cgroup = nil
		}
		for typ := range s.handlers {
			if other := m[typ]; other != nil {
				fail(fmt.Sprintf("built-ins: message type %q served by both %s and %s", typ, other.name, p.Name))
			}
			m[typ] = s
		}
		names = append(names, p.Name)
		log.Debug("serving in a process shared by built-ins", "types", len(s.handlers))
	}
	sort.Strings(names)
	log := hclog.New(&hclog.LoggerOptions{Name: strings.Join(names, "+"), Level: level, Output: os.Stderr, JSONFormat: true})
	serveFramesOnly(self, log, m.handle)
}
