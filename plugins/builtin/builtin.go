// Package builtin registers nsplug's built-in plugins with the core. A
// binary that serves them (the nsplug command, an embedder's daemon, a
// test binary) passes All to core.Options.Builtins and calls Main first
// thing in main, as moby's reexec does: the core starts a built-in by
// re-executing the binary, or by executing the lean handler binary
// (cmd/nsplug-handler) installed next to it.
//
// It is where built-ins cross from the sdk to the core: Of describes an
// sdk plugin as a core.Builtin (in-process, through the sdk's own server).
// Which plugins are built in, and the in-namespace entry point, are
// package plugins/builtin/handlers', which links no core: Plugins, Main
// and Serve here are its. The core itself knows no sdk.
package builtin

import (
	"context"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/internal/inproc"
	"github.com/nsplug/nsplug/plugins/builtin/handlers"
	"github.com/nsplug/nsplug/sdk/handler"
	"github.com/nsplug/nsplug/wire"
)

// Plugins returns nsplug's built-in plugins, as written with the sdk
// (handlers.Plugins).
func Plugins() []*handler.Plugin { return handlers.Plugins() }

// All returns the built-in plugins as the core takes them.
func All() []core.Builtin { return Of(Plugins()...) }

// Main serves a built-in plugin when this process was started as one (and
// then never returns); otherwise it returns at once
// (handlers.Main).
func Main() { handlers.Main() }

// Of describes sdk plugins compiled into this binary as core.Builtins;
// the binary's main must Serve the same plugins. Their Build is the
// identity of the whole set (handlers.Identity): a handler executable
// serves them only if it was built with the same set.
func Of(plugins ...*handler.Plugin) []core.Builtin {
	out := make([]core.Builtin, 0, len(plugins))
	build := handlers.Identity(plugins...)
	for _, p := range plugins {
		var types []string
		for _, h := range p.Handlers {
			types = append(types, h.Describe().Name)
		}
		out = append(out, core.Builtin{
			Name:  p.Name,
			Types: types,
			Build: build,
			Describe: func(cfg *wire.PluginConfig) (*wire.DescribeResponse, error) {
				srv, err := inproc.New(p, cfg, nil)
				if err != nil {
					return nil, err
				}
				return srv.Describe(context.Background(), &wire.DescribeRequest{})
			},
		})
	}
	return out
}

// Serve serves the plugins wire.EnvBuiltin names, if this process was
// started by a core to be built-ins, and then never returns; otherwise
// it returns at once (handlers.Serve).
func Serve(plugins ...*handler.Plugin) { handlers.Serve(plugins...) }
