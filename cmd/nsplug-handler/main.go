// Command nsplug-handler serves nsplug's built-in plugins in the processes
// the core starts inside targets; it is not run by hand. It is the lean
// half of the nsplug binary: the built-ins, the sdk's frame server and the
// nsexec preamble, without the core, gRPC, go-plugin or the daemon's
// metrics, so that every built-in process (oneshot or pooled, one per
// target) starts faster and holds less memory than a re-executed bin/nsplug.
// The core finds it next to its own executable (core.HandlerExecutable;
// `make` builds both into bin/) and checks that it is of the same build
// (wire.EnvBuiltinBuild); without it, the core re-executes itself.
package main

import (
	"fmt"
	"os"

	"github.com/nsplug/nsplug/plugins/builtin/handlers"
)

func main() {
	handlers.Main()
	fmt.Fprintln(os.Stderr, "nsplug-handler serves nsplug's built-in plugins in processes the nsplug core starts; run nsplug instead")
	os.Exit(2)
}
