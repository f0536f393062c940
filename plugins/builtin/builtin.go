// Package builtin is the registry of nsplug's built-in plugins: the one
// place that knows them by name. A binary that serves them (the nsplug
// command, an embedder's daemon, a test binary) passes All to
// core.Options.Builtins and calls Main first thing in main, as moby's
// reexec does: the core starts a built-in by re-executing the binary.
//
// It is also where built-ins cross from the sdk to the core: Of describes
// an sdk plugin as a core.Builtin (in-process, through the sdk's own
// server), and Serve is the in-namespace entry point of a re-executed
// binary. The core itself knows no sdk.
package builtin

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/internal/inproc"
	"github.com/nsplug/nsplug/nsexec"
	"github.com/nsplug/nsplug/plugins/fs"
	"github.com/nsplug/nsplug/plugins/ids"
	"github.com/nsplug/nsplug/plugins/mount"
	"github.com/nsplug/nsplug/plugins/procfs"
	"github.com/nsplug/nsplug/plugins/sysctl"
	"github.com/nsplug/nsplug/sdk"
	"github.com/nsplug/nsplug/wire"
)

// Plugins returns nsplug's built-in plugins, as written with the sdk.
func Plugins() []*sdk.Plugin {
	return []*sdk.Plugin{
		procfs.Plugin(),
		fs.Plugin(),
		ids.Plugin(),
		sysctl.Plugin(),
		mount.Plugin(),
	}
}

// All returns the built-in plugins as the core takes them.
func All() []core.Builtin { return Of(Plugins()...) }

// Main serves a built-in plugin when this process was started as one (and
// then never returns); otherwise it returns at once.
func Main() { Serve(Plugins()...) }

// Of describes sdk plugins compiled into this binary as core.Builtins;
// the binary's main must Serve the same plugins.
func Of(plugins ...*sdk.Plugin) []core.Builtin {
	out := make([]core.Builtin, 0, len(plugins))
	for _, p := range plugins {
		var types []string
		for _, h := range p.Handlers {
			types = append(types, h.Describe().Name)
		}
		out = append(out, core.Builtin{
			Name:  p.Name,
			Types: types,
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
// it returns at once. Call it first thing in main (and in TestMain of
// tests whose dispatcher serves built-ins).
func Serve(plugins ...*sdk.Plugin) {
	names, ok := os.LookupEnv(wire.EnvBuiltin)
	if !ok {
		return
	}
	var serve []any
	for _, name := range strings.Split(names, ",") {
		i := slices.IndexFunc(plugins, func(p *sdk.Plugin) bool { return p.Name == name })
		if i < 0 {
			msg := fmt.Sprintf("nsplug: no built-in plugin %q in this binary", name)
			nsexec.ReportFailure(msg)
			fmt.Fprintln(os.Stderr, msg)
			os.Exit(1)
		}
		serve = append(serve, plugins[i])
	}
	inproc.ServeShared(serve)
}
