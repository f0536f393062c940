// Command oldproto is a test plugin that speaks another version of the
// nsplug plugin protocol (wire.ProtocolVersion) than this tree: a plugin built against an
// older or newer sdk, as the core would meet it. The version is set at
// build time:
//
//	go build -ldflags "-X main.protocolVersion=2" ./tests/testdata/oldproto
//
// It serves the current Handler service under that version number, so
// that the only thing wrong with it is the version it announces.
package main

import (
	"os"
	"strconv"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/nsplug/nsplug/internal/inproc"
	"github.com/nsplug/nsplug/nsexec"
	"github.com/nsplug/nsplug/sdk"
	"github.com/nsplug/nsplug/wire/control"
)

var protocolVersion = "2"

func main() {
	v, err := strconv.Atoi(protocolVersion)
	if err != nil {
		panic(err)
	}
	server, err := inproc.New(&sdk.Plugin{Name: "oldproto"}, nil, nil)
	if err != nil {
		panic(err)
	}
	handshake := control.Handshake
	handshake.ProtocolVersion = uint(v)
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  handshake,
		VersionedPlugins: map[int]plugin.PluginSet{v: {control.PluginKey: &control.GRPCPlugin{Impl: control.Server(server)}}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			if err := nsexec.EnterRoot(); err != nil {
				os.Exit(1)
			}
			nsexec.CloseStatus()
			return grpc.NewServer(opts...)
		},
	})
}
