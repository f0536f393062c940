package server

import (
	"context"
	"os"
	"strconv"
	"sync"
	"syscall"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/internal/apiconv"
	"github.com/nsplug/nsplug/wire"
)

// Direct channels over the fast path (api/fast/README.md, "Channels"):
// the daemon authorizes a channel as it would a Call of its type to its
// target, has the core open it (core.Dispatcher.OpenChannel), and hands
// the client the socket; the client's requests then reach the handler
// with no daemon in between. What that gives up is kept elsewhere: types
// that change state are never served on a channel (each of their calls is
// audited), the handler holds the channel to its grant, and the daemon
// revokes every channel when its configuration is reloaded (a rule
// removed applies at once), when the connection that opened it closes,
// and at shutdown.

// MaxUserChannels bounds the channels open of all uids but root
// together; each uid has max_calls_per_user of its own. A channel holds
// a descriptor here and in its handler, and keeps its instance warm.
const MaxUserChannels = 1024

// channelSet is the daemon's open channels.
type channelSet struct {
	mu     sync.Mutex
	open   map[*openChannel]struct{}
	byUID  map[uint32]int // channels of each uid but root
	users  int            // of all uids but root
	closed bool           // shutting down: no new ones
	epoch  uint64         // revocations so far: one opened across one is revoked too
}

// openChannel is one channel the daemon opened for a connection.
type openChannel struct {
	ch   *core.Channel
	g    *generation
	conn *fastConn // that opened it; its channels field is under channelSet.mu
	uid  uint32
	root bool
}

// reserve counts one more channel of c's, refused (EAGAIN) past the
// bounds.
func (cs *channelSet) reserve(c Caller, max int) error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		return wire.Errorf(syscall.ESHUTDOWN, "the daemon is shutting down")
	}
	if c.Root() {
		return nil
	}
	if n := cs.byUID[c.UID]; n >= max {
		return wire.Errorf(syscall.EAGAIN, "uid %d has %d channels open, the most a user may (server.max_calls_per_user); close one first", c.UID, n)
	}
	if cs.users >= MaxUserChannels {
		return wire.Errorf(syscall.EAGAIN, "users other than root have %d channels open, the most they may together (server.MaxUserChannels); try again", cs.users)
	}
	if cs.byUID == nil {
		cs.byUID = make(map[uint32]int)
	}
	cs.byUID[c.UID]++
	cs.users++
	return nil
}

// unreserve uncounts a channel of uid's (root's: nothing).
func (cs *channelSet) unreserve(uid uint32, root bool) {
	if root {
		return
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.users--
	if cs.byUID[uid]--; cs.byUID[uid] <= 0 {
		delete(cs.byUID, uid)
	}
}

// openFastChannel serves a FrameOpenChannel request of fc's: the reply,
// and the socket to send with it (the daemon's copy, closed once sent).
func (s *Server) openFastChannel(ctx context.Context, c Caller, fc *fastConn, msg []byte) (*spb.Status, []*os.File) {
	var in apiv1.CallRequest
	if err := proto.Unmarshal(msg, &in); err != nil {
		return statusOf(wire.Errorf(syscall.EINVAL, "the channel request is no nsplug.api.v1.CallRequest: %v", err)), nil
	}
	oc, err := s.openChannel(ctx, c, fc, &in)
	if err != nil {
		return statusOf(err), nil
	}
	detail, err := anypb.New(&apiv1.ChannelGrant{Id: oc.ch.ID, Type: oc.ch.Type, TimeoutMs: oc.ch.Timeout.Milliseconds()})
	if err != nil {
		oc.revoke()
		return statusOf(wire.Errorf(syscall.EIO, "encoding the grant: %v", err)), nil
	}
	return &spb.Status{Details: []*anypb.Any{detail}}, []*os.File{oc.ch.File}
}

func (s *Server) openChannel(ctx context.Context, c Caller, fc *fastConn, in *apiv1.CallRequest) (*openChannel, error) {
	req, err := apiconv.CoreRequest(in)
	if err != nil {
		return nil, err
	}
	g := s.acquire()
	if changesState(g.d, req.Type) {
		s.release(g)
		return nil, wire.Errorf(syscall.EOPNOTSUPP, "%s changes state: each of its calls is audited, so it is served by Call, not on a channel", req.Type)
	}
	if err := s.channels.reserve(c, s.Config().Server.MaxCallsPerUser); err != nil {
		s.release(g)
		return nil, err
	}
	var opts core.ChannelOptions
	if !c.Root() {
		opts.MaxRequestBytes = s.userLimit // as its calls are bounded
	}
	if in.Timeout != nil {
		opts.Timeout = in.Timeout.AsDuration()
	}
	s.channels.mu.Lock()
	epoch := s.channels.epoch
	s.channels.mu.Unlock()
	var ch *core.Channel
	denied, err := s.gate(g).Channel(c, req, func(r core.Request) (*core.Response, error) {
		var err error
		ch, err = g.d.OpenChannel(ctx, r, opts)
		return nil, err
	})
	if denied != "" {
		s.metrics.Denied(denied)
	}
	if err != nil {
		s.channels.unreserve(c.UID, c.Root())
		s.release(g)
		return nil, err
	}
	oc := &openChannel{ch: ch, g: g, conn: fc, uid: c.UID, root: c.Root()}
	s.channels.mu.Lock()
	if s.channels.open == nil {
		s.channels.open = make(map[*openChannel]struct{})
	}
	s.channels.open[oc] = struct{}{}
	if fc.channels == nil {
		fc.channels = make(map[uint64]*openChannel)
	}
	fc.channels[ch.ID] = oc
	closed, revoked := s.channels.closed, s.channels.epoch != epoch
	s.channels.mu.Unlock()
	s.metrics.channels.Inc()
	// However it ends (closed, revoked, its instance gone), the daemon
	// lets go of it then.
	go func() {
		<-ch.Done()
		s.dropChannel(oc)
	}()
	if closed {
		oc.revoke()
		return nil, wire.Errorf(syscall.ESHUTDOWN, "the daemon is shutting down")
	}
	if revoked { // authorized by the rules a reload replaced meanwhile
		oc.revoke()
		return nil, wire.Errorf(syscall.EAGAIN, "the daemon reloaded its configuration while the channel opened; try again")
	}
	return oc, nil
}

// revoke revokes a channel never handed to its client, and closes the
// client's end, which the daemon still holds.
func (oc *openChannel) revoke() {
	oc.ch.Close()
	oc.ch.File.Close()
}

// dropChannel forgets a revoked channel: its count, its generation.
func (s *Server) dropChannel(oc *openChannel) {
	s.channels.mu.Lock()
	_, ok := s.channels.open[oc]
	delete(s.channels.open, oc)
	if oc.conn.channels[oc.ch.ID] == oc {
		delete(oc.conn.channels, oc.ch.ID)
	}
	s.channels.mu.Unlock()
	if !ok {
		return
	}
	s.metrics.channels.Dec()
	s.channels.unreserve(oc.uid, oc.root)
	s.release(oc.g)
}

// closeFastChannel serves a FrameCloseChannel request of fc's.
func (s *Server) closeFastChannel(fc *fastConn, msg []byte) *spb.Status {
	id, err := strconv.ParseUint(string(msg), 10, 64)
	if err != nil {
		return statusOf(wire.Errorf(syscall.EINVAL, "closing a channel: %q is no channel id", msg))
	}
	s.channels.mu.Lock()
	oc := fc.channels[id]
	s.channels.mu.Unlock()
	if oc != nil {
		oc.ch.Close()
		s.dropChannel(oc) // before the reply: its room is free when the client hears
	}
	// One revoked meanwhile is closed too: no error for that.
	return &spb.Status{}
}

// closeConnChannels revokes every channel fc opened (it is closing).
func (s *Server) closeConnChannels(fc *fastConn) {
	s.channels.mu.Lock()
	var all []*openChannel
	for _, oc := range fc.channels {
		all = append(all, oc)
	}
	s.channels.mu.Unlock()
	for _, oc := range all {
		oc.ch.Close()
	}
}

// revokeChannels revokes every open channel: a reload, so that what the
// new configuration no longer allows is not served on; or, with stop, a
// shutdown, after which none opens.
func (s *Server) revokeChannels(stop bool) int {
	s.channels.mu.Lock()
	s.channels.epoch++
	if stop {
		s.channels.closed = true
	}
	var all []*openChannel
	for oc := range s.channels.open {
		all = append(all, oc)
	}
	s.channels.mu.Unlock()
	for _, oc := range all {
		oc.ch.Close()
	}
	return len(all)
}
