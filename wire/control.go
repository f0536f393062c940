package wire

import (
	"context"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

// The control plane: go-plugin launches a plugin, negotiates the protocol
// version and carries Describe, health and shutdown over gRPC (see
// README.md, "The control plane").

// ProtocolVersion is the version of this contract. go-plugin negotiates it
// at start: a core and a plugin that share no version refuse each other
// with an error naming both. It changes when a change is not additive; 2
// made the frame channel the only data plane (protocol 1 also had a gRPC
// Handle call).
const ProtocolVersion = 2

// PluginKey is the name under which the Handler service (Describe) is
// dispensed.
const PluginKey = "handler"

// Handshake is the go-plugin handshake shared by the core and every plugin.
// The cookie only tells a plugin binary it was started by a core, so that it
// refuses to run when started by hand; it is not a security measure.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "NSPLUG_PLUGIN",
	MagicCookieValue: "d7c0b5a4-handler",
}

// GRPCPlugin is the go-plugin glue for the Handler service, the control
// plane's one call (requests go on the frame channel). The core uses
// it with Impl unset, a plugin with Impl set.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl serves the Handler service in a plugin; nil in the core.
	Impl HandlerServer
}

// GRPCServer registers the handler service.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	RegisterHandlerServer(s, p.Impl)
	return nil
}

// GRPCClient returns a HandlerClient.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return NewHandlerClient(c), nil
}

// PluginSets are the protocol versions served, for go-plugin's versioned
// negotiation: server in a plugin, nil in the core.
func PluginSets(server HandlerServer) map[int]plugin.PluginSet {
	return map[int]plugin.PluginSet{
		ProtocolVersion: {PluginKey: &GRPCPlugin{Impl: server}},
	}
}
