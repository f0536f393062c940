// Command netinfo is an example nsplug plugin, written as a third party
// would write one: its own module, the public sdk only. It reports the
// network interfaces, addresses and routes of a target's network
// namespace.
//
// Build it with `make examples` (bin/examples/netinfo) or `go build` in
// this directory, and name it in the nsplug configuration:
//
//	[[plugin]]
//	name = "netinfo"
//	path = "/usr/lib/nsplug/netinfo"
//	sha256 = "…"
//	[plugin.options]
//	exclude = ["veth*"]
//
// Started by hand it refuses to run: only a core starts plugins.
package main

import "github.com/nsplug/nsplug/sdk"

func main() {
	sdk.Serve(Plugin())
}
