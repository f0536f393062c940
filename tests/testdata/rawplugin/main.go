// Command rawplugin is a test plugin written the way a plugin in another
// language has to be: it implements the wire contract
// (wire/plugin.proto, specified in wire/README.md) with a plain gRPC
// server and does by hand
// what sdk.Serve and go-plugin's server do for a Go plugin: check the
// magic cookie and the protocol versions, bind a unix socket by a
// relative name in its cwd (the core's socket directory), leave that
// directory, close the status pipe, print go-plugin's handshake line and
// serve. It logs hclog-style JSON lines on stderr.
//
// Namespace entry comes from the nsexec preamble, linked in as a C
// constructor exactly as a C or Rust plugin would link nsexec.c. Built
// with -tags nopreamble it has none and runs on the host. Built with
// -ldflags "-X main.controller=no" it does not serve go-plugin's
// controller service.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/nsplug/nsplug/wire"
)

var controller = "yes"

func main() {
	// Only a core starts plugins: it sets the magic cookie.
	if os.Getenv("NSPLUG_PLUGIN") != "d7c0b5a4-handler" {
		fmt.Fprintln(os.Stderr, "rawplugin: an nsplug plugin; only the nsplug core starts it")
		os.Exit(1)
	}
	// The core lists the protocol versions it speaks.
	if !slices.Contains(strings.Split(os.Getenv("PLUGIN_PROTOCOL_VERSIONS"), ","), "1") {
		fmt.Fprintln(os.Stderr, "rawplugin: the core does not speak protocol version 1")
		os.Exit(1)
	}
	enter()
	// The cwd is the socket directory on the host: bind by a relative
	// name (a sun_path holds 107 bytes; the directory's path may be longer).
	name := fmt.Sprintf("raw-%d.sock", os.Getpid())
	ln, err := net.Listen("unix", name)
	if err != nil {
		failf("listen: %v", err)
	}
	leave()

	srv := grpc.NewServer()
	wire.RegisterHandlerServer(srv, handler{})
	if controller == "yes" {
		srv.RegisterService(&controllerService, struct{}{})
	}
	// CORE-PROTOCOL|APP-PROTOCOL|NETWORK|ADDRESS|PROTOCOL|SERVER-CERT
	fmt.Printf("1|1|unix|%s|grpc|\n", name)
	if err := srv.Serve(ln); err != nil {
		failf("serve: %v", err)
	}
}

func failf(format string, args ...any) {
	msg := fmt.Sprintf("rawplugin: "+format, args...)
	syscall.Write(5, []byte(msg+"\n")) // the status pipe, while it is open
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(1)
}

// logf writes one hclog JSON line, which the core relays into its log
// at that level, under the plugin's name.
func logf(level, msg string, kv ...any) {
	line := map[string]any{"@level": level, "@message": msg, "@module": "raw",
		"@timestamp": time.Now().Format("2006-01-02T15:04:05.000000Z07:00")} // this format or none
	for i := 0; i+1 < len(kv); i += 2 {
		line[fmt.Sprint(kv[i])] = kv[i+1]
	}
	b, _ := json.Marshal(line)
	os.Stderr.Write(append(b, '\n'))
}

type handler struct {
	wire.UnimplementedHandlerServer
}

func (handler) Describe(context.Context, *wire.DescribeRequest) (*wire.DescribeResponse, error) {
	return &wire.DescribeResponse{Plugin: "raw", Types: []*wire.MessageType{
		{Name: "raw.fail", Version: 1, Description: "fail with ENOENT"},
		{Name: "raw.whoami", Version: 1, Description: "report the hostname and pid the handler sees"},
	}}, nil
}

func (handler) Handle(_ context.Context, req *wire.HandleRequest) (*wire.HandleResponse, error) {
	logf("info", "handling", "request_id", req.RequestId, "target_pid", req.TargetPid, "type", req.Type)
	switch req.Type {
	case "raw.whoami":
		host, _ := os.Hostname()
		out, _ := json.Marshal(map[string]any{"hostname": host, "pid": os.Getpid()})
		return &wire.HandleResponse{Payload: out}, nil
	case "raw.fail":
		return &wire.HandleResponse{Error: &wire.HandlerError{Errno: int32(syscall.ENOENT), Message: "raw: asked to fail"}}, nil
	}
	return &wire.HandleResponse{Error: &wire.HandlerError{Errno: int32(syscall.EOPNOTSUPP), Message: "raw: unknown type " + req.Type}}, nil
}

// controllerService is go-plugin's plugin.GRPCController service
// (go-plugin's internal/plugin/grpc_controller.proto): the core calls
// Shutdown when it retires an instance. plugin.Empty and
// google.protobuf.Empty are both empty messages, the same on the wire.
var controllerService = grpc.ServiceDesc{
	ServiceName: "plugin.GRPCController",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Shutdown",
		Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			if err := dec(new(emptypb.Empty)); err != nil {
				return nil, err
			}
			go func() {
				time.Sleep(10 * time.Millisecond) // let the reply go out
				os.Exit(0)
			}()
			return new(emptypb.Empty), nil
		},
	}},
	Metadata: "grpc_controller.proto",
}
