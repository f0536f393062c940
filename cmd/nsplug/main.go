// Command nsplug runs nsplug handlers inside a process's namespaces.
//
//	nsplug call [--config FILE | --addr unix:///PATH] --pid PID[:STARTTIME] [--ns LIST] [--as UID:GID[:GROUPS]] [--root DIR] [--cwd DIR] TYPE [PAYLOAD_JSON]
//	nsplug id --pid PID
//	nsplug plugins [--config FILE | --addr unix:///PATH] [--json]
//	nsplug serve [--config FILE]
//	nsplug health [--addr unix:///PATH]
//	nsplug demo
//
// This is the small front of the two nsplug binaries: it links neither
// gRPC nor go-plugin nor prometheus, so that a whole `nsplug call` costs
// little more than the process. It runs calls (in process, with the
// built-ins, or through the daemon), ids, plugins and the demo itself, and
// hands the rest (serve, health, plugins through the daemon, a
// configuration with third-party plugins) to bin/nsplugd beside it, with
// the same arguments (see full.go). The same binary serves the built-in
// plugins: a core starts them by executing it (plugins/builtin.Main).
package main

import (
	"github.com/nsplug/nsplug/internal/cli"
	"github.com/nsplug/nsplug/plugins/builtin"
)

func main() {
	builtin.Main() // serves a built-in plugin when started as one; else returns
	cli.Main(cli.Hooks{Full: execFull})
}
