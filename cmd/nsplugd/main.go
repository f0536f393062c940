// Command nsplugd is the full nsplug binary: the whole command line of
// bin/nsplug (package internal/cli), plus what needs gRPC, go-plugin and
// prometheus, which the front does not link so that it starts in a few
// milliseconds: the node daemon (serve, health, plugins through the
// daemon's gRPC API) and plugins loaded from a path (core/goplugin
// describes them). bin/nsplug hands such commands to it, with the same
// arguments; it may also be run directly.
package main

import (
	_ "github.com/nsplug/nsplug/core/goplugin" // third-party plugins are described through go-plugin

	"github.com/nsplug/nsplug/internal/cli"
	"github.com/nsplug/nsplug/plugins/builtin"
)

func main() {
	builtin.Main() // serves a built-in plugin when started as one; else returns
	cli.Main(cli.Hooks{
		Serve:         cmdServe,
		Health:        cmdHealth,
		CallDaemon:    callGRPC,
		PluginsDaemon: pluginsDaemon,
		ThirdParty:    true,
	})
}
