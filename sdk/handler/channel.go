package handler

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/internal/fdwait"
	"github.com/nsplug/nsplug/wire"
)

// Direct channels (wire/README.md, "Direct channels"): the core hands the
// process a socket whose other end a caller holds, granting one type on
// one target; the caller's requests then come straight here. Each is
// served by a frameServer of its own, one request at a time, held to its
// grant (serveGranted). What the caller sends is checked as the core's
// requests are, and more: the type, the target fields and the timeout
// are the grant's, and fds it sends are discarded (the channel is read
// with read(2)).

// channels are the process's open direct channels, for the core's stats.
var channels struct {
	mu     sync.Mutex
	m      map[uint64]*frameServer
	closed []*frameServer // ended since the last report: their final counts
}

// maxClosedChannels bounds the ended channels kept for their final
// counts until the core next asks (it asks every second).
const maxClosedChannels = 1024

// channelStats are a direct channel's counts (wire.ChannelCounts).
type channelStats struct {
	mu        sync.Mutex
	requests  uint64
	errors    map[int32]uint64
	busySince time.Time          // zero when no request is being served
	cancel    context.CancelFunc // of the request being served
	hungUp    bool               // the caller closed its end
}

// serveChannelRequest answers the core's own requests on its channel:
// opening a direct channel (whose socket came as *file, then kept) and
// the channels' counts.
func (fs *frameServer) serveChannelRequest(req *wire.HandleRequest, file **os.File) *wire.HandleResponse {
	switch req.Type {
	case wire.ChannelOpenType:
		var g wire.ChannelGrant
		if err := json.Unmarshal(req.Payload, &g); err != nil || g.Type == "" {
			return wire.ErrorResponse(Errorf(syscall.EINVAL, "%s: a malformed grant: %v", req.Type, err))
		}
		if *file == nil {
			return wire.ErrorResponse(Errorf(syscall.EINVAL, "%s: no socket came with the grant", req.Type))
		}
		if err := fs.openChannel(g, *file); err != nil {
			return wire.ErrorResponse(AsError(err))
		}
		*file = nil // the channel's now
		return &wire.HandleResponse{Payload: []byte("{}"), RequestId: req.RequestId}
	case wire.ChannelStatsType:
		out, err := json.Marshal(channelCounts(time.Now()))
		if err != nil {
			return wire.ErrorResponse(Errorf(syscall.EIO, "%s: %v", req.Type, err))
		}
		return &wire.HandleResponse{Payload: out, RequestId: req.RequestId}
	}
	return wire.ErrorResponse(Errorf(syscall.EOPNOTSUPP, "the frame channel has no request %q", req.Type))
}

// openChannel serves g on sock in the background.
func (fs *frameServer) openChannel(g wire.ChannelGrant, sock *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(sock.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return Errorf(syscall.EINVAL, "%s: what came with the grant is no socket", wire.ChannelOpenType)
	}
	fd, readable, err := rawSocket(sock)
	if err != nil {
		return err
	}
	hangUp, err := fdwait.HangUp(fd)
	if err != nil {
		readable.Close()
		unix.Close(fd)
		return err
	}
	ch := &frameServer{handle: fs.handle, log: fs.log.With("channel", g.ID, "type", g.Type), fd: fd, readable: readable,
		hangUp: hangUp, idle: fs.idle, grant: &g, stats: &channelStats{}, partial: make(map[string]*wire.Message),
		closed: make(chan struct{}), served: fs.served}
	channels.mu.Lock()
	if channels.m == nil {
		channels.m = make(map[uint64]*frameServer)
	}
	if channels.m[g.ID] != nil {
		channels.mu.Unlock()
		readable.Close()
		unix.Close(fd)
		return Errorf(syscall.EEXIST, "%s: channel %d is open already", wire.ChannelOpenType, g.ID)
	}
	channels.m[g.ID] = ch
	channels.mu.Unlock()
	go ch.run(make([]byte, wire.MaxFrame))
	go ch.watchHangUp()
	return nil
}

// watchHangUp cancels the request being served once the caller closes
// its end (or the core revokes the channel): as a caller of the core's
// that gives up, it ends its request. It sleeps until then, costing the
// requests nothing.
func (fs *frameServer) watchHangUp() {
	fs.hangUp.Wait(func() bool {
		pfd := []unix.PollFd{{Fd: int32(fs.fd), Events: unix.POLLRDHUP}}
		n, err := unix.Poll(pfd, 0)
		return err != nil && err != unix.EINTR || n > 0
	})
	fs.stats.mu.Lock()
	defer fs.stats.mu.Unlock()
	fs.stats.hungUp = true
	if fs.stats.cancel != nil {
		fs.stats.cancel()
	}
}

// breached reports a direct channel's frame that ends it: one that does
// not parse, or a part of another request while one is arriving (each
// request in assembly would be held). Only debug-logged: the caller, not
// the core, sent it, and must not fill the core's log.
func (fs *frameServer) breached(kind byte, id string, err error) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err == nil && (kind == wire.FrameRequestPart || kind == wire.FrameRequest) {
		for other := range fs.partial {
			if other != id {
				err = errors.New("a frame of another request while one is arriving")
			}
		}
	}
	if err != nil {
		fs.log.Debug("closing a channel whose caller broke the protocol", "error", err)
		return true
	}
	return false
}

// newMessage is a request being received, under the channel's limit.
func (fs *frameServer) newMessage() *wire.Message {
	if fs.grant != nil {
		return &wire.Message{Max: fs.grant.MaxRequestBytes}
	}
	return &wire.Message{}
}

// serveGranted serves one request of a direct channel, held to its grant.
func (fs *frameServer) serveGranted(req *wire.HandleRequest) (*wire.HandleResponse, []*os.File) {
	g := fs.grant
	if req.Type != g.Type {
		resp := wire.ErrorResponse(Errorf(syscall.EACCES, "this channel serves %s only, not %q: open a channel for it, or call it through the daemon", g.Type, req.Type))
		fs.stats.count(resp, time.Time{})
		return resp, nil
	}
	req.TargetPid, req.TargetNsPid = g.TargetPID, g.TargetNsPID
	var ctx context.Context
	var cancel context.CancelFunc
	if t := g.Timeout(); t > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), t)
	} else {
		ctx, cancel = context.WithCancel(context.Background())
	}
	defer cancel()
	began := fs.stats.begin(cancel)
	resp, files := fs.handle(ctx, req)
	fs.stats.count(resp, began)
	return resp, files
}

func (s *channelStats) begin(cancel context.CancelFunc) time.Time {
	now := time.Now()
	s.mu.Lock()
	s.busySince, s.cancel = now, cancel
	if s.hungUp {
		cancel()
	}
	s.mu.Unlock()
	return now
}

// count records one response; began is zero for one refused unserved.
func (s *channelStats) count(resp *wire.HandleResponse, began time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	if !began.IsZero() {
		s.busySince, s.cancel = time.Time{}, nil
	}
	if resp.Error != nil {
		if s.errors == nil {
			s.errors = make(map[int32]uint64)
		}
		s.errors[resp.Error.Errno]++
	}
}

// channelCounts are every open channel's counts at now.
func channelCounts(now time.Time) wire.ChannelStats {
	channels.mu.Lock()
	defer channels.mu.Unlock()
	out := wire.ChannelStats{Channels: []wire.ChannelCounts{}}
	all := make([]*frameServer, 0, len(channels.m)+len(channels.closed))
	for _, ch := range channels.m {
		all = append(all, ch)
	}
	all = append(all, channels.closed...)
	channels.closed = nil
	for _, ch := range all {
		s := ch.stats
		s.mu.Lock()
		c := wire.ChannelCounts{ID: ch.grant.ID, Requests: s.requests, Closed: channels.m[ch.grant.ID] != ch}
		if len(s.errors) > 0 {
			c.Errors = make(map[int32]uint64, len(s.errors))
			for errno, n := range s.errors {
				c.Errors[errno] = n
			}
		}
		if t := ch.grant.Timeout(); t > 0 && !s.busySince.IsZero() && now.Sub(s.busySince) > t+wire.ChannelGrace {
			c.Overdue = true
		}
		s.mu.Unlock()
		out.Channels = append(out.Channels, c)
	}
	sort.Slice(out.Channels, func(i, j int) bool { return out.Channels[i].ID < out.Channels[j].ID })
	return out
}

// end ends a frame server whose peer is gone: on the core's channel the
// process then exits (serveFramesOnly); a direct channel is closed and
// forgotten, its last counts with it.
func (fs *frameServer) end() {
	if fs.grant != nil {
		channels.mu.Lock()
		delete(channels.m, fs.grant.ID)
		if len(channels.closed) < maxClosedChannels {
			channels.closed = append(channels.closed, fs)
		}
		channels.mu.Unlock()
		fs.readable.Close()
		fs.hangUp.Close()
		fs.mu.Lock()
		fs.ended = true
		if fs.writable != nil {
			fs.writable.Close()
		}
		fs.mu.Unlock()
		unix.Close(fs.fd)
	}
	close(fs.closed)
}
