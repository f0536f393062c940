package sdk

import (
	"context"
	"syscall"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/nsplug/nsplug/sdk/pluginpb"
)

// ProtocolVersion is the version of the plugin protocol (pluginpb) this sdk
// speaks. go-plugin negotiates it at start: a core and a plugin that share no
// version refuse each other with an error naming both.
const ProtocolVersion = 1

// PluginKey is the name under which the handler service is dispensed.
const PluginKey = "handler"

// Handshake is the go-plugin handshake shared by the core and every plugin.
// The cookie only tells a plugin binary it was started by a core, so that it
// refuses to run when started by hand; it is not a security measure.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "NSPLUG_PLUGIN",
	MagicCookieValue: "d7c0b5a4-handler",
}

// MaxMessageBytes bounds one message (a request or a response, on gRPC or
// the frame channel) in either direction.
const MaxMessageBytes = 64 << 20

// TooLarge is the EIO error for a message of n bytes, over MaxMessageBytes:
// "response of 70000000 bytes exceeds the 64 MiB limit of one message".
func TooLarge(what string, n int) *Error {
	return Errorf(syscall.EIO, "%s of %d bytes exceeds the %d MiB limit of one message (sdk.MaxMessageBytes); page large data", what, n, MaxMessageBytes>>20)
}

// GRPCPlugin is the go-plugin glue for the Handler service. The core uses
// it with Impl unset, a plugin with Impl set.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl serves the Handler service in a plugin (a *Server); nil in
	// the core.
	Impl pluginpb.HandlerServer
}

// GRPCServer registers the handler service.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	pluginpb.RegisterHandlerServer(s, p.Impl)
	return nil
}

// GRPCClient returns a pluginpb.HandlerClient.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return pluginpb.NewHandlerClient(c), nil
}

// PluginSets are the protocol versions this sdk serves, for go-plugin's
// versioned negotiation.
func PluginSets(server pluginpb.HandlerServer) map[int]plugin.PluginSet {
	return map[int]plugin.PluginSet{
		ProtocolVersion: {PluginKey: &GRPCPlugin{Impl: server}},
	}
}
