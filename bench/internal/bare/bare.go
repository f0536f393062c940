// Package bare is the wire glue of the bench's bare go-plugin plugin
// (bench/bareplugin): go-plugin and gRPC with nothing of nsplug around
// them — no namespaces, no sdk, no JSON. It measures go-plugin's own floor.
//
// It reuses nsplug's generated gRPC service (wire) only so that the
// messages on the wire are the same shape as nsplug's; the handler reads
// the file named by the payload and answers with its bytes.
package bare

import (
	"context"
	"errors"
	"os"
	"syscall"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/nsplug/nsplug/wire"
)

// Handshake is shared by the bench (client) and the bare plugin binary.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "NSPLUG_BENCH_BARE_PLUGIN",
	MagicCookieValue: "bare",
}

// Key is the name the handler service is dispensed under.
const Key = "handler"

// Plugin is the go-plugin glue: the plugin side sets Impl, the client
// side leaves it nil.
type Plugin struct {
	plugin.NetRPCUnsupportedPlugin
	Impl wire.HandlerServer
}

// GRPCServer registers the handler service.
func (p *Plugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	wire.RegisterHandlerServer(s, p.Impl)
	return nil
}

// GRPCClient returns a wire.HandlerClient.
func (p *Plugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return wire.NewHandlerClient(c), nil
}

// Plugins is the plugin set of both sides.
func Plugins(impl wire.HandlerServer) plugin.PluginSet {
	return plugin.PluginSet{Key: &Plugin{Impl: impl}}
}

// Server reads the file whose path is the request's payload.
type Server struct {
	wire.UnimplementedHandlerServer
}

// Handle implements wire.HandlerServer.
func (Server) Handle(_ context.Context, req *wire.HandleRequest) (*wire.HandleResponse, error) {
	data, err := os.ReadFile(string(req.Payload))
	if err != nil {
		var errno syscall.Errno
		if !errors.As(err, &errno) {
			errno = syscall.EIO
		}
		return &wire.HandleResponse{Error: &wire.HandlerError{Errno: int32(errno), Message: err.Error()}}, nil
	}
	return &wire.HandleResponse{Payload: data}, nil
}
