// A front process lives for one command: GOMAXPROCS is taken from the
// CPUs without reading cgroup files at start, and never updated.

//go:debug containermaxprocs=0
//go:debug updatemaxprocs=0

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
// the same arguments (see full.go). It is built without cgo (Makefile):
// it holds the built-ins' descriptions but never serves them, which is
// the work of nsplug-handler beside it (core.HandlerExecutable), the
// binary with the nsexec preamble.
package main

import (
	"github.com/nsplug/nsplug/internal/cli"
)

func main() {
	cli.Main(cli.Hooks{Full: execFull})
}
