// Command bareplugin is the bench's bare go-plugin plugin: a minimal gRPC
// plugin with no namespaces and no nsplug sdk, started on the host by
// plugin.NewClient with a plain Cmd (no AutoMTLS). The bench builds it and
// times start + handshake + one call + kill: go-plugin's own floor, to
// which nsplug's cold start is compared.
package main

import (
	"os"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/nsplug/nsplug/bench/internal/bare"
)

func main() {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: bare.Handshake,
		Plugins:         bare.Plugins(bare.Server{}),
		GRPCServer:      plugin.DefaultGRPCServer,
		// The same level and format nsplug's sdk uses with log_level warn.
		Logger: hclog.New(&hclog.LoggerOptions{Name: "bare", Level: hclog.Warn, Output: os.Stderr, JSONFormat: true}),
	})
}
