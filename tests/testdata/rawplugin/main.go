// Command rawplugin is a test plugin written the way a plugin in another
// language has to be, from wire/README.md alone: it uses the messages
// generated from wire/plugin.proto and nothing else of nsplug's Go code
// (no sdk, no wire codec, no go-plugin server). It does by hand what
// sdk.Serve and go-plugin's server do for a Go plugin: check the magic
// cookie and the protocol versions, bind a unix socket by a relative name
// in its cwd (the core's socket directory), leave that directory, close
// the status pipe, print go-plugin's handshake line, serve Describe over
// gRPC (the control plane) and every request on the frame channel, fd 6
// (the data plane): frames parsed and split by hand, cancellation, files
// handed back as SCM_RIGHTS. Started with NSPLUG_FRAMES_ONLY (to serve,
// pooled or oneshot) it serves the frame channel alone until the core
// closes it: go-plugin is only for Describe. It logs hclog-style JSON
// lines on stderr.
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
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/nsplug/nsplug/wire"
	"github.com/nsplug/nsplug/wire/control"
)

var controller = "yes"

func main() {
	// Only a core starts plugins: it sets the magic cookie.
	if os.Getenv("NSPLUG_PLUGIN") != "d7c0b5a4-handler" {
		fmt.Fprintln(os.Stderr, "rawplugin: an nsplug plugin; only the nsplug core starts it")
		os.Exit(1)
	}
	if os.Getenv("NSPLUG_FRAMES_ONLY") != "" {
		// The frame channel alone, no go-plugin: nothing to bind, so
		// the root is entered at once (closing the status pipe says
		// it serves).
		enter()
		leave()
		serveFrames()
		os.Exit(0)
	}
	// The core lists the protocol versions it speaks.
	if !slices.Contains(strings.Split(os.Getenv("PLUGIN_PROTOCOL_VERSIONS"), ","), "2") {
		fmt.Fprintln(os.Stderr, "rawplugin: the core does not speak protocol version 2")
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
	control.RegisterHandlerServer(srv, handler{})
	if controller == "yes" {
		srv.RegisterService(&controllerService, struct{}{})
	}
	go func() {
		serveFrames()
		os.Exit(0) // the core is gone
	}()
	// CORE-PROTOCOL|APP-PROTOCOL|NETWORK|ADDRESS|PROTOCOL|SERVER-CERT
	fmt.Printf("1|2|unix|%s|grpc|\n", name)
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
	control.UnimplementedHandlerServer
}

func (handler) Describe(context.Context, *wire.DescribeRequest) (*wire.DescribeResponse, error) {
	return &wire.DescribeResponse{Plugin: "raw", Types: []*wire.MessageType{
		{Name: "raw.big", Version: 1, Description: "answer with n bytes of x, in part frames"},
		{Name: "raw.fail", Version: 1, Description: "fail with ENOENT"},
		{Name: "raw.open", Version: 1, Description: "hand back the root directory the handler sees"},
		{Name: "raw.sleep", Version: 1, Description: "wait until cancelled, then fail with ECANCELED"},
		{Name: "raw.whoami", Version: 1, Description: "report the hostname and pid the handler sees"},
	}}, nil
}

// handle serves one request; it returns the response and the fds it hands
// back, which the caller closes once sent.
func handle(ctx context.Context, req *wire.HandleRequest) (*wire.HandleResponse, []int) {
	logf("info", "handling", "request_id", req.RequestId, "target_pid", req.TargetPid, "type", req.Type)
	fail := func(errno syscall.Errno, msg string) (*wire.HandleResponse, []int) {
		return &wire.HandleResponse{Error: &wire.HandlerError{Errno: int32(errno), Message: msg}}, nil
	}
	switch req.Type {
	case "raw.whoami":
		host, _ := os.Hostname()
		out, _ := json.Marshal(map[string]any{"hostname": host, "pid": os.Getpid()})
		return &wire.HandleResponse{Payload: out}, nil
	case "raw.fail":
		return fail(syscall.ENOENT, "raw: asked to fail")
	case "raw.big":
		var in struct{ N int }
		if err := json.Unmarshal(req.Payload, &in); err != nil || in.N < 0 || in.N > 1<<24 {
			return fail(syscall.EINVAL, "raw: want {\"n\": bytes}")
		}
		out, _ := json.Marshal(map[string]string{"x": strings.Repeat("x", in.N)})
		return &wire.HandleResponse{Payload: out}, nil
	case "raw.open":
		fd, err := syscall.Open("/", syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != nil {
			return fail(err.(syscall.Errno), "raw: "+err.Error())
		}
		return &wire.HandleResponse{Payload: []byte("{}"), Files: 1}, []int{fd}
	case "raw.sleep":
		<-ctx.Done()
		return fail(syscall.ECANCELED, "raw: cancelled")
	}
	return fail(syscall.EOPNOTSUPP, "raw: unknown type "+req.Type)
}

// The frame channel, as wire/README.md specifies it ("The frame
// channel"): one SOCK_SEQPACKET record per frame, laid out as kind (1
// byte), n (1 byte), a request id of n bytes, then the body.
const (
	framesFD = 6

	kindRequestPart  = 1
	kindRequest      = 2
	kindResponsePart = 3
	kindResponse     = 4
	kindCancel       = 5

	maxBody    = 61440
	maxFrame   = 2 + 255 + maxBody
	maxMessage = 64 << 20
)

// serveFrames reads frames until the core closes the channel, serving each
// complete request in a goroutine of its own.
func serveFrames() {
	var mu sync.Mutex
	partial := make(map[string][]byte)
	cancels := make(map[string]context.CancelFunc)
	buf := make([]byte, maxFrame)
	for {
		n, _, _, _, err := syscall.Recvmsg(framesFD, buf, nil, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return // EOF: the core is done with this process
		}
		if n < 2 || n < 2+int(buf[1]) {
			continue // malformed: dropped
		}
		kind, id := buf[0], string(buf[2:2+int(buf[1])])
		body := buf[2+int(buf[1]) : n]
		switch kind {
		case kindRequestPart, kindRequest:
			mu.Lock()
			msg := append(partial[id], body...)
			if kind == kindRequestPart {
				partial[id] = msg
				mu.Unlock()
				continue
			}
			delete(partial, id)
			ctx, cancel := context.WithCancel(context.Background())
			cancels[id] = cancel
			mu.Unlock()
			go func() {
				defer func() {
					mu.Lock()
					delete(cancels, id)
					mu.Unlock()
					cancel()
				}()
				var resp *wire.HandleResponse
				var fds []int
				req := new(wire.HandleRequest)
				switch {
				case len(msg) > maxMessage:
					resp = &wire.HandleResponse{Error: &wire.HandlerError{Errno: int32(syscall.EIO), Message: "raw: request too large"}}
				case proto.Unmarshal(msg, req) != nil:
					resp = &wire.HandleResponse{Error: &wire.HandlerError{Errno: int32(syscall.EINVAL), Message: "raw: malformed request"}}
				default:
					resp, fds = handle(ctx, req)
				}
				resp.RequestId = id
				out, _ := proto.Marshal(resp)
				if err := sendResponse(id, out, fds); err != nil {
					logf("error", "sending a response", "request_id", id, "error", err.Error())
				}
				for _, fd := range fds {
					syscall.Close(fd)
				}
			}()
		case kindCancel:
			mu.Lock()
			if cancel := cancels[id]; cancel != nil {
				cancel()
			}
			mu.Unlock()
		}
	}
}

// sendResponse sends msg as part frames of at most maxBody bytes and one
// final frame, which alone carries the fds.
func sendResponse(id string, msg []byte, fds []int) error {
	for {
		kind, body, oob := byte(kindResponsePart), msg, []byte(nil)
		if len(msg) > maxBody {
			body, msg = msg[:maxBody], msg[maxBody:]
		} else {
			kind, msg = kindResponse, nil
			if len(fds) > 0 {
				oob = syscall.UnixRights(fds...)
			}
		}
		frame := append(append([]byte{kind, byte(len(id))}, id...), body...)
		if err := syscall.Sendmsg(framesFD, frame, oob, nil, 0); err != nil {
			return err
		}
		if kind == kindResponse {
			return nil
		}
	}
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
