// Package inproc reaches the sdk's server of a plugin from inside the
// calling process, in wire's terms: for the built-ins of a binary, which
// the core describes without starting a process (plugins/builtin), and for
// sdktest, which calls handlers without a plugin process. It keeps that
// server out of the sdk's exported API, which is the author's, and out of
// the core, which knows no sdk.
//
// Package sdk imports this package and sets New in its init; anything
// that holds an *sdk.Plugin has imported sdk, so New is set by then.
package inproc

import (
	"context"
	"os"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/wire"
)

// Server serves the handlers of one plugin, as sdk.Serve does in a
// plugin process.
type Server interface {
	// HandlerServer is what go-plugin serves, the control plane:
	// Describe.
	wire.HandlerServer
	// HandleFiles handles one request as the frame channel's server
	// does and returns the files the handler handed back, which the
	// caller closes: there is no frame channel to send them on.
	HandleFiles(ctx context.Context, req *wire.HandleRequest) (*wire.HandleResponse, []*os.File)
	// SetFreshMounts sets what handlers see as Env.Proc and Env.Sys (in
	// a plugin process the nsexec preamble provides them).
	SetFreshMounts(proc, sys *os.File)
	// SetFreshCgroup sets what handlers see as Env.Cgroup.
	SetFreshCgroup(cgroup *os.File)
	// SetJoined sets the namespaces handlers are told were joined
	// (Env.Joined); nil means unknown, and nothing is refused.
	SetJoined(names []string)
}

// New checks plugin (an *sdk.Plugin: its handlers, and its options with
// its Configure hook) and returns its server. An error from the Configure
// hook wraps a *wire.OptionError. cfg and log may be nil.
var New func(plugin any, cfg *wire.PluginConfig, log hclog.Logger) (Server, error)

// ServeShared serves several plugins (*sdk.Plugin) of this binary in one
// process started by a core, each with its own configuration and rules
// (wire.EnvConfig holds one wire.PluginConfig per plugin, by name). It
// does not return. It is for the built-ins, which are one binary's code;
// the sdk offers plugin authors no way to share a process: a third-party
// plugin is alone in its own.
var ServeShared func(plugins []any)
