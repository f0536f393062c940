package core

import (
	"github.com/nsplug/nsplug/wire"
)

// Builtin is a plugin compiled into this binary. The core starts one by
// executing the lean handler binary installed next to this one
// (HandlerExecutable), or else by re-executing this binary, with
// wire.EnvBuiltin naming it, so the binary's main must serve it then
// (plugins/builtin.Main does, for nsplug's built-ins). The core knows a
// built-in only by this description, in wire's terms: it never links the
// sdk. plugins/builtin makes them of sdk plugins (builtin.All,
// builtin.Of).
type Builtin struct {
	// Name is what [[plugin]] entries without a path call it, and what
	// the re-executed binary is told to serve.
	Name string
	// Types are the message types it serves whatever its options: the
	// requests refused with its load error when it fails to load.
	Types []string
	// Describe checks the plugin's configuration (its options, with the
	// plugin's own hook, as each instance will) and says what it serves,
	// without starting a process. A bad option is a *wire.OptionError,
	// or an error whose text carries one.
	Describe func(cfg *wire.PluginConfig) (*wire.DescribeResponse, error)
	// Build identifies the set of built-ins it was described with
	// (plugins/builtin/handlers.Identity): the process started to serve
	// it is told this (wire.EnvBuiltinBuild) and refuses to serve if its
	// own set differs. The core runs the built-ins from HandlerExecutable
	// only when all of them have the same, non-empty, Build.
	Build string
}
