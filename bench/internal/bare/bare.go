// Package bare is the wire glue of the bench's bare go-plugin plugin
// (bench/bareplugin): go-plugin and gRPC with nothing of nsplug around
// them — no namespaces, no sdk, no JSON, no frame channel. It measures
// go-plugin's own floor.
//
// Its one-call gRPC service carries nsplug's wire messages (HandleRequest,
// HandleResponse) only so that the messages are the same shape as
// nsplug's; nsplug itself sends them on its frame channel, not over gRPC.
// The handler reads the file named by the payload and answers with its
// bytes.
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
	Impl Server
}

// GRPCServer registers the bare service.
func (p *Plugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	s.RegisterService(&serviceDesc, p.Impl)
	return nil
}

// GRPCClient returns a *Client.
func (p *Plugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return &Client{conn: c}, nil
}

// Plugins is the plugin set of both sides.
func Plugins(impl Server) plugin.PluginSet {
	return plugin.PluginSet{Key: &Plugin{Impl: impl}}
}

const method = "/nsplug.bench.Bare/Handle"

// serviceDesc describes the one-method service by hand: there is no
// .proto to generate it from, and it needs none.
var serviceDesc = grpc.ServiceDesc{
	ServiceName: "nsplug.bench.Bare",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Handle",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			req := new(wire.HandleRequest)
			if err := dec(req); err != nil {
				return nil, err
			}
			return srv.(Server).Handle(ctx, req)
		},
	}},
	Metadata: "bare",
}

// Client calls the bare service.
type Client struct{ conn *grpc.ClientConn }

// Handle calls the plugin's Handle.
func (c *Client) Handle(ctx context.Context, req *wire.HandleRequest) (*wire.HandleResponse, error) {
	resp := new(wire.HandleResponse)
	if err := c.conn.Invoke(ctx, method, req, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// Server reads the file whose path is the request's payload.
type Server struct{}

// Handle serves one request.
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
