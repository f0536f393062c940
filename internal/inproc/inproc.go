// Package inproc reaches the sdk's server of a plugin from inside the
// calling process, in wire's terms: for the built-ins of a binary, which
// the core describes without starting a process (plugins/builtin), and for
// sdktest, which calls handlers without a plugin process. It keeps that
// server out of the sdk's exported API, which is the author's, and out of
// the core, which knows no sdk.
//
// It is also how sdk.Serve, which holds go-plugin, reaches the lean part
// of the sdk (sdk/handler) without making that server part of anyone's
// API (Start, Fail).
//
// Package sdk/handler imports this package and sets the hooks in its init;
// anything that holds an *sdk.Plugin (an alias of *handler.Plugin) has
// imported it, so they are set by then.
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
	// Describe is what go-plugin serves, the control plane's one call
	// (sdk.Serve adapts it to control.HandlerServer).
	Describe(context.Context, *wire.DescribeRequest) (*wire.DescribeResponse, error)
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

// Start prepares plugin (an *sdk.Plugin) in a process started by a core:
// it reads wire.EnvConfig and checks the plugin. When the process was
// started to serve (wire.EnvFramesOnly) it serves the frame channel until
// the core closes it and exits; otherwise it serves the frame channel, if
// there is one, in the background and returns the server and its logger
// for go-plugin's control plane. It reports any failure to the core and
// exits.
var Start func(plugin any) (Server, hclog.Logger)

// Fail reports msg to the core (the status pipe, and stderr) and exits
// with status 1.
var Fail func(msg string)
