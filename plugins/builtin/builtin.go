// Package builtin is the registry of nsplug's built-in plugins: the one
// place that knows them by name. A binary that serves them (the nsplug
// command, an embedder's daemon, a test binary) passes All to
// core.Options.Builtins and calls Main first thing in main.
package builtin

import (
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/plugins/fs"
	"github.com/nsplug/nsplug/plugins/ids"
	"github.com/nsplug/nsplug/plugins/mount"
	"github.com/nsplug/nsplug/plugins/procfs"
	"github.com/nsplug/nsplug/plugins/sysctl"
	"github.com/nsplug/nsplug/sdk"
)

// All returns the built-in plugins.
func All() []*sdk.Plugin {
	return []*sdk.Plugin{
		procfs.Plugin(),
		fs.Plugin(),
		ids.Plugin(),
		sysctl.Plugin(),
		mount.Plugin(),
	}
}

// Main serves a built-in plugin when this process was started as one (and
// then never returns); otherwise it returns at once.
func Main() { core.ServeBuiltin(All()) }
