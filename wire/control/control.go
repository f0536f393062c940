// Package control is the control plane of the wire contract: go-plugin
// launches a plugin, negotiates the protocol version and carries Describe,
// health and shutdown over gRPC (see ../README.md, "Control plane").
// Requests go on the frame channel (package wire), so what only serves
// requests (every serving process, and the lean built-in handler binary)
// never imports this package and links neither gRPC nor go-plugin.
package control

import (
	"context"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/nsplug/nsplug/wire"
)

// PluginKey is the name under which the Handler service (Describe) is
// dispensed.
const PluginKey = "handler"

// Handshake is the go-plugin handshake shared by the core and every plugin,
// at wire.ProtocolVersion. The cookie only tells a plugin binary it was
// started by a core, so that it refuses to run when started by hand; it is
// not a security measure.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  wire.ProtocolVersion,
	MagicCookieKey:   wire.EnvCookie,
	MagicCookieValue: wire.Cookie,
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

// Describer answers Describe: a plugin's server, which need not know
// gRPC (the sdk's lives in sdk/handler, which links none).
type Describer interface {
	Describe(context.Context, *wire.DescribeRequest) (*wire.DescribeResponse, error)
}

// Server serves the Handler service with d.
func Server(d Describer) HandlerServer { return describer{d: d} }

type describer struct {
	UnimplementedHandlerServer
	d Describer
}

func (s describer) Describe(ctx context.Context, req *wire.DescribeRequest) (*wire.DescribeResponse, error) {
	return s.d.Describe(ctx, req)
}

// PluginSets are the protocol versions served, for go-plugin's versioned
// negotiation: server in a plugin, nil in the core.
func PluginSets(server HandlerServer) map[int]plugin.PluginSet {
	return map[int]plugin.PluginSet{
		wire.ProtocolVersion: {PluginKey: &GRPCPlugin{Impl: server}},
	}
}
