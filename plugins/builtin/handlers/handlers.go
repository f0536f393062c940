// Package handlers is the handler side of nsplug's built-in plugins: the
// one place that knows them by name (Plugins) and the in-namespace entry
// point of a process started to serve them (Main, Serve). It links the
// built-ins, the lean part of the sdk (sdk/handler), wire's messages and
// the nsexec preamble, and nothing of the core, gRPC or go-plugin, so that
// a binary made of it alone (cmd/nsplug-handler) starts in a fraction of
// the time and memory of one that also holds the core (deps_test.go keeps
// it so). Package plugins/builtin registers the same plugins with the core.
package handlers

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/nsplug/nsplug/internal/inproc"
	"github.com/nsplug/nsplug/nsexec"
	"github.com/nsplug/nsplug/plugins/fs"
	"github.com/nsplug/nsplug/plugins/ids"
	"github.com/nsplug/nsplug/plugins/mount"
	"github.com/nsplug/nsplug/plugins/procfs"
	"github.com/nsplug/nsplug/plugins/sysctl"
	"github.com/nsplug/nsplug/sdk/handler"
	"github.com/nsplug/nsplug/wire"
)

// Plugins returns nsplug's built-in plugins, as written with the sdk.
func Plugins() []*handler.Plugin {
	return []*handler.Plugin{
		procfs.Plugin(),
		fs.Plugin(),
		ids.Plugin(),
		sysctl.Plugin(),
		mount.Plugin(),
	}
}

// Main serves the built-in plugins when this process was started as one
// (and then never returns); otherwise it returns at once.
func Main() { Serve(Plugins()...) }

// Serve serves the plugins wire.EnvBuiltin names, if this process was
// started by a core to be built-ins, and then never returns; otherwise
// it returns at once. Call it first thing in main (and in TestMain of
// tests whose dispatcher serves built-ins).
func Serve(plugins ...*handler.Plugin) {
	names, ok := os.LookupEnv(wire.EnvBuiltin)
	if !ok {
		return
	}
	var serve []any
	for _, name := range strings.Split(names, ",") {
		i := slices.IndexFunc(plugins, func(p *handler.Plugin) bool { return p.Name == name })
		if i < 0 {
			fail(fmt.Sprintf("nsplug: no built-in plugin %q in this binary", name))
		}
		serve = append(serve, plugins[i])
	}
	inproc.ServeShared(serve)
}

func fail(msg string) {
	nsexec.ReportFailure(msg)
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(1)
}
