package core

import (
	"fmt"
	"os"

	"github.com/nsplug/nsplug/nsexec"
	"github.com/nsplug/nsplug/sdk"
)

// EnvBuiltin names the built-in plugin a re-executed binary is to serve.
const EnvBuiltin = "NSPLUG_BUILTIN"

// ServeBuiltin serves a built-in plugin if this process was started by a
// core to be one, and then never returns; otherwise it returns at once.
// A binary whose Dispatcher serves built-ins (Options.Builtins) must call
// it first thing in main (and in TestMain of its tests): the core starts
// built-in plugins by re-executing its own binary, as runc's init does.
func ServeBuiltin(builtins []*sdk.Plugin) {
	name, ok := os.LookupEnv(EnvBuiltin)
	if !ok {
		return
	}
	for _, p := range builtins {
		if p.Name == name {
			sdk.Serve(p)
			os.Exit(0)
		}
	}
	msg := fmt.Sprintf("nsplug: no built-in plugin %q in this binary", name)
	nsexec.ReportFailure(msg)
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(1)
}
