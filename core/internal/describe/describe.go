// Package describe is the seam between the core and the adapter that
// describes third-party plugins at load (core/goplugin): the one place
// the core needs go-plugin's handshake and gRPC. The core prepares the
// plugin's process (its namespaces, credentials, sealed executable) and
// wraps the errors; the adapter starts it, negotiates the protocol and
// asks what it serves. A core whose binary does not link the adapter
// finds no Starter and serves built-ins only.
package describe

import (
	"context"
	"io"
	"net"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/wire"
)

// Process is a plugin process the core has prepared and not started: the
// methods of go-plugin's runner.Runner (the adapter hands it over as
// one), and what the adapter needs to connect and to explain a failed
// start.
type Process interface {
	Start(ctx context.Context) error
	Wait(ctx context.Context) error
	Kill(ctx context.Context) error
	ID() string
	Name() string
	Stdout() io.ReadCloser
	Stderr() io.ReadCloser
	// Diagnose is the bootstrap's own account of a failed start, or "".
	Diagnose(ctx context.Context) string
	PluginToHost(network, addr string) (string, string, error)
	HostToPlugin(network, addr string) (string, string, error)
	// Dial connects to the socket the plugin announced, once.
	Dial(ctx context.Context) (net.Conn, error)
	// Exited is closed once the process is reaped.
	Exited() <-chan struct{}
	// ExitedWithin reports how the process ended if it exited of itself
	// (the core did not kill it) and was reaped within wait.
	ExitedWithin(wait time.Duration) (status error, exited bool)
}

// Start is one plugin to start and describe.
type Start struct {
	Plugin       string
	StartTimeout time.Duration
	Log          hclog.Logger // the core's
	// Dir is the directory to make the plugin's socket directory in.
	Dir string
	// NewProcess prepares the plugin's process, to bind its socket in
	// sockDir; env is added to its environment.
	NewProcess func(sockDir string, env []string) Process
}

// Client is a started plugin, to describe and end.
type Client interface {
	Describe(ctx context.Context) (*wire.DescribeResponse, error)
	// Kill ends the process and waits until it is reaped.
	Kill()
}

// A Starter starts a plugin for Start. Its error is one line, the
// account of the failure; the core says which plugin and where.
type Starter func(Start) (Client, error)

var starter Starter

// Register installs the adapter; core/goplugin calls it from init, once.
func Register(s Starter) {
	if starter != nil {
		panic("describe: a second Starter registered")
	}
	starter = s
}

// Registered is the adapter, or nil in a binary that does not link one.
func Registered() Starter { return starter }
