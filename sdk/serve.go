package sdk

import (
	"fmt"
	"os"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/nsplug/nsplug/internal/inproc"
	"github.com/nsplug/nsplug/nsexec"
	"github.com/nsplug/nsplug/wire"
	"github.com/nsplug/nsplug/wire/control"
)

// Serve runs the plugin until the core closes it. It does not return.
//
// Started by a core, the process already runs inside the target's
// namespaces (the nsexec preamble did that) with its cwd in a host
// directory private to it: go-plugin binds the socket there by a relative
// name, then Serve leaves the directory before answering anything.
//
// A serving process (wire.EnvFramesOnly) never reaches go-plugin: the lean
// part of the sdk (package sdk/handler) serves it.
func Serve(p *Plugin) {
	server, log := inproc.Start(p)
	fail := inproc.Fail
	if os.Getenv(wire.EnvCookie) != wire.Cookie {
		fail(p.Name + ": this is an nsplug plugin: a core starts it (see nsplug's README)")
	}
	// go-plugin's serving mode calls signal.Notify(SIGINT) to ignore a
	// terminal's ^C, which costs every handler process two threads for
	// good (the runtime's signal-mask thread and os/signal's receiver).
	// A plugin needs neither: the core starts it in a process group of
	// its own, and ends it itself. go-plugin's test mode serves the same
	// but leaves signals alone, and hands the address over on a channel
	// instead of printing the handshake line: print it here, as go-plugin
	// would, on the real stdout (go-plugin replaces os.Stdout for its
	// stdio stream).
	stdout := os.Stdout
	addr := make(chan *plugin.ReattachConfig, 1)
	printed := make(chan struct{})
	served := false
	go func() {
		defer close(printed)
		if rc, ok := <-addr; ok {
			fmt.Fprintln(stdout, handshakeLine(rc))
			served = true
		}
	}()
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  control.Handshake,
		VersionedPlugins: control.PluginSets(control.Server(server)),
		Logger:           log,
		Test:             &plugin.ServeTestConfig{ReattachConfigCh: addr, SyncStdio: true},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			// go-plugin has bound its socket (in the cwd) by now and
			// not yet told the core where: enter the target's root
			// before anything can be asked.
			if err := nsexec.EnterRoot(); err != nil {
				fail(err.Error())
			}
			nsexec.CloseStatus()
			opts = append(opts, grpc.MaxRecvMsgSize(wire.MaxMessageBytes), grpc.MaxSendMsgSize(wire.MaxMessageBytes))
			return grpc.NewServer(opts...)
		},
	})
	// Serve returns once the core has shut the plugin down, or at once
	// when it could not serve (it said why on stderr).
	close(addr)
	<-printed
	if !served {
		os.Exit(1)
	}
	os.Exit(0)
}

// handshakeLine is go-plugin's handshake line for the address it serves
// on: core protocol version, app protocol version, network, address,
// protocol, server certificate (none: the core uses no AutoMTLS), and
// whether the gRPC broker may be multiplexed, when the client asks.
func handshakeLine(rc *plugin.ReattachConfig) string {
	line := fmt.Sprintf("%d|%d|%s|%s|%s|", plugin.CoreProtocolVersion, rc.ProtocolVersion, rc.Addr.Network(), rc.Addr.String(), rc.Protocol)
	if os.Getenv("PLUGIN_MULTIPLEX_GRPC") != "" {
		line += "|true"
	}
	return line
}
