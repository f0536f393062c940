// Package goplugin lets a core load third-party plugins. A plugin with a
// path is started once at load, through hashicorp/go-plugin, to describe
// itself: go-plugin's handshake negotiates the protocol version and
// Describe goes over gRPC. That is the core's only use of go-plugin and
// gRPC (serving processes speak frames alone), so it lives here, and a
// binary links it by importing this package for its effect:
//
//	import _ "github.com/nsplug/nsplug/core/goplugin"
//
// A core without it serves built-ins only; a [[plugin]] with a path then
// fails to load, naming this package. cmd/nsplug and package server
// import it.
package goplugin

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
	"google.golang.org/grpc"

	"github.com/nsplug/nsplug/core/internal/describe"
	"github.com/nsplug/nsplug/wire"
	"github.com/nsplug/nsplug/wire/control"
)

func init() { describe.Register(start) }

// The core's prepared process is what go-plugin runs.
var _ runner.Runner = describe.Process(nil)

// start starts s's plugin through go-plugin and dispenses its Handler
// service; on failure it says, on one line, what the plugin did wrong.
func start(s describe.Start) (describe.Client, error) {
	var proc describe.Process
	log := &clientLog{Logger: s.Log}
	log.quiet.Store(true) // a failed start is the caller's error
	cfg := &plugin.ClientConfig{
		HandshakeConfig:  control.Handshake,
		VersionedPlugins: control.PluginSets(nil),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           log, // go-plugin names plugin output after the runner (the plugin)
		StartTimeout:     s.StartTimeout,
		SkipHostEnv:      true,
		UnixSocketConfig: &plugin.UnixSocketConfig{TempDir: s.Dir},
		GRPCDialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(wire.MaxMessageBytes), grpc.MaxCallSendMsgSize(wire.MaxMessageBytes)),
			// Replaces go-plugin's dialer (the last one given wins).
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				if proc == nil {
					return nil, fmt.Errorf("no plugin socket announced")
				}
				return proc.Dial(ctx)
			})},
		RunnerFunc: func(_ hclog.Logger, cmd *exec.Cmd, sockDir string) (runner.Runner, error) {
			// The socket is bound relative to the cwd nsexec leaves in sockDir.
			proc = s.NewProcess(sockDir, append(cmd.Env, "PLUGIN_UNIX_SOCKET_DIR=."))
			return proc, nil
		},
	}
	c := plugin.NewClient(cfg)
	fail := func(err error) (describe.Client, error) {
		msg := err.Error()
		// go-plugin's words for a protocol mismatch name its own
		// versions; say which nsplug protocol each side speaks.
		if m := protocolMismatch().FindStringSubmatch(msg); m != nil {
			msg = fmt.Sprintf("it speaks nsplug plugin protocol %s, this core speaks %d (wire.ProtocolVersion): rebuild it against a matching sdk, or serve that version too (%s)", m[1], wire.ProtocolVersion, msg)
		}
		if proc != nil {
			if d := proc.Diagnose(context.Background()); d != "" {
				msg = d
			} else if status, exited := proc.ExitedWithin(100 * time.Millisecond); exited {
				msg = handshakeError(msg, s.StartTimeout, status, true)
			} else {
				msg = handshakeError(msg, s.StartTimeout, nil, false)
			}
		}
		c.Kill()
		return nil, fmt.Errorf("%s", msg)
	}
	proto, err := c.Client()
	if err != nil {
		return fail(err)
	}
	raw, err := proto.Dispense(control.PluginKey)
	if err != nil {
		return fail(err)
	}
	log.quiet.Store(false) // from now on an exit the core did not ask for is news
	return &client{c: c, handler: raw.(control.HandlerClient), proc: proc, log: log}, nil
}

// client is a plugin go-plugin started, being described.
type client struct {
	c       *plugin.Client
	handler control.HandlerClient
	proc    describe.Process
	log     *clientLog
}

func (c *client) Describe(ctx context.Context) (*wire.DescribeResponse, error) {
	return c.handler.Describe(ctx, &wire.DescribeRequest{})
}

// Kill asks the plugin to exit and waits until it is reaped and
// go-plugin's goroutines are gone; the socket directory goes with it.
func (c *client) Kill() {
	select {
	case <-c.proc.Exited(): // of itself: go-plugin said so as it saw fit
	default:
		c.log.quiet.Store(true) // meant, not an error
	}
	c.c.Kill()
}

// clientLog is the logger go-plugin gets for one plugin. go-plugin logs
// a process that died of a signal at ERROR, any other exit at INFO, and
// warns when it has to kill one; while quiet (the process is starting,
// or the core has decided to end it), those lines are debug lines: a
// kill the core means is no error, and a failed start is reported to the
// caller. The plugin's own log lines (Named) keep their level.
type clientLog struct {
	hclog.Logger
	quiet atomic.Bool
}

func (l *clientLog) Log(level hclog.Level, msg string, args ...any) {
	if l.quiet.Load() && level > hclog.Debug {
		level = hclog.Debug
	}
	l.Logger.Log(level, msg, args...)
}

func (l *clientLog) Info(msg string, args ...any)  { l.Log(hclog.Info, msg, args...) }
func (l *clientLog) Warn(msg string, args ...any)  { l.Log(hclog.Warn, msg, args...) }
func (l *clientLog) Error(msg string, args ...any) { l.Log(hclog.Error, msg, args...) }

// go-plugin's words for a plugin whose first line on stdout is not a
// handshake line (the line follows), for one whose stdout ended or that
// exited before it wrote one, and for one that wrote none in time.
const (
	unrecognizedLine = "Unrecognized remote plugin message: "
	exitedEarly      = "plugin exited before we could connect"
	startTimedOut    = "timeout while waiting for plugin to start"
)

// handshakeError says what a plugin did wrong when go-plugin found no
// handshake line: a plugin that never called sdk.Serve, or printed on
// stdout before it, gets go-plugin's "Unrecognized remote plugin
// message", which names neither. status is how the process exited, when
// it did.
func handshakeError(msg string, timeout time.Duration, status error, exited bool) string {
	how := "it exited (exit status 0)"
	if status != nil {
		how = fmt.Sprintf("it exited (%v)", status)
	}
	switch {
	case strings.HasPrefix(msg, unrecognizedLine):
		line, _, _ := strings.Cut(msg[len(unrecognizedLine):], "\n")
		if line != "" {
			if len(line) > 80 {
				line = line[:80] + "..."
			}
			return fmt.Sprintf("it printed %q on stdout before its handshake line: a plugin must call sdk.Serve and print nothing on stdout before it", line)
		}
		if !exited {
			return "it closed its stdout before its handshake line (did main call sdk.Serve?)"
		}
		return how + " before its handshake line (did main call sdk.Serve?)"
	case msg == exitedEarly:
		return how + " before its handshake line (did main call sdk.Serve?)"
	case msg == startTimedOut && !exited:
		return fmt.Sprintf("it wrote no handshake line on stdout within its start_timeout of %v (does main call sdk.Serve?)", timeout)
	case exited && status != nil:
		return fmt.Sprintf("%s: %s", how, msg)
	}
	return msg
}

// protocolMismatch matches go-plugin's error for a plugin that offers no
// protocol version the core speaks. Compiled on first use (an error
// path), not at init in every process of the binary.
var protocolMismatch = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`incompatible API version with plugin\. Plugin version: (\d+)`)
})
