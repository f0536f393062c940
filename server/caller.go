// Package server is the node daemon behind `nsplug serve`: the nsplug.api.v1
// gRPC service (api/v1) over a unix socket, in front of one core.Dispatcher,
// with per-caller authorization from the kernel's credentials of each
// connection, an audit log, Prometheus metrics, reload and graceful shutdown.
package server

import (
	"context"
	"slices"
)

// Caller is who is on the other end of an API connection, as the kernel
// reported it when the connection was accepted (SO_PEERCRED, SO_PEERGROUPS):
// nothing a client sends can change it.
type Caller struct {
	UID uint32
	GID uint32
	// Groups are the supplementary groups.
	Groups []uint32
	// PID is the caller's process, in the daemon's pid namespace (0 when
	// the caller is in a pid namespace the daemon cannot see into).
	PID int32
}

// Root reports whether the caller is uid 0, who may call everything.
func (c Caller) Root() bool { return c.UID == 0 }

// InGroup reports whether gid is the caller's primary or a supplementary
// group.
func (c Caller) InGroup(gid uint32) bool {
	return c.GID == gid || slices.Contains(c.Groups, gid)
}

type callerKey struct{}

// WithCaller returns ctx carrying c.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the caller ctx carries; ok is false when it carries
// none (a call that did not come through the daemon's listener), which is
// to be refused.
func CallerFrom(ctx context.Context) (c Caller, ok bool) {
	c, ok = ctx.Value(callerKey{}).(Caller)
	return c, ok
}
