package fast

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/wire"
)

// A Channel is a direct channel to the handler serving one message type
// for one target, opened by the daemon for this caller (Client.OpenChannel,
// README.md "Channels"): its requests go to the handler process and its
// answers come back with no daemon in between, at the cost of an
// in-process request. It serves one request at a time (concurrent Calls
// wait their turn); open one per concurrent caller.
//
// The daemon revokes a channel when it reloads its configuration, when
// the instance behind it ends, when the connection that opened it
// closes, or when it shuts down: a Call then fails with EPIPE, and the
// caller opens a new one (which is authorized afresh) or calls through
// the daemon.
type Channel struct {
	mu      sync.Mutex
	file    *os.File
	fd      int
	typ     string
	next    uint64
	buf     []byte
	oob     []byte
	out     []byte
	broken  error
	closing atomic.Bool
	id      uint64  // the daemon's, when it opened the channel
	client  *Client // that opened it, told of Close
}

// NewChannel is a Channel on f, a channel's socket (core.Channel.File,
// or one received from the daemon), for requests of type typ. The
// Channel owns f.
func NewChannel(f *os.File, typ string) *Channel {
	return &Channel{file: f, fd: int(f.Fd()), typ: typ, buf: make([]byte, wire.MaxFrame), oob: make([]byte, unix.CmsgSpace(wire.MaxFiles*4))}
}

// Type is the message type the channel serves.
func (ch *Channel) Type() string { return ch.typ }

// Call sends one request (payload, a JSON object; nil for {}) and returns
// the handler's response and the files it handed back (the caller's to
// close). A handler's failure is a *wire.Error with its errno; a revoked
// channel is EPIPE. Cancelling ctx revokes the channel for this caller
// (it shuts the socket down): the Channel is then done.
func (ch *Channel) Call(ctx context.Context, payload []byte) (json.RawMessage, []*os.File, error) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.broken != nil {
		return nil, nil, ch.broken
	}
	if len(payload) == 0 {
		payload = []byte("{}")
	}
	ch.next++
	id := strconv.FormatUint(ch.next, 10)
	msg, err := proto.MarshalOptions{}.MarshalAppend(ch.out[:0], &wire.HandleRequest{Type: ch.typ, Payload: payload, RequestId: id})
	if err != nil {
		return nil, nil, wire.Errorf(syscall.EINVAL, "request: %v", err)
	}
	if cap(msg) <= 1<<16 {
		ch.out = msg
	}
	if len(msg) > wire.MaxMessageBytes {
		return nil, nil, wire.TooLarge("request", len(msg))
	}
	stop := context.AfterFunc(ctx, func() { unix.Shutdown(ch.fd, unix.SHUT_RDWR) })
	resp, files, err := ch.exchange(id, msg)
	if !stop() {
		closeFiles(files)
		ch.broken = wire.Errorf(syscall.ECANCELED, "nsplug channel: shut down when a call was cancelled")
		if ctx.Err() == context.DeadlineExceeded {
			return nil, nil, wire.Errorf(syscall.ETIMEDOUT, "nsplug channel: %v", ctx.Err())
		}
		return nil, nil, wire.Errorf(syscall.ECANCELED, "nsplug channel: %v", ctx.Err())
	}
	if err != nil {
		closeFiles(files)
		if e, ok := err.(*wire.Error); ok && e.Errno == syscall.EPIPE {
			ch.broken = e
		}
		return nil, nil, err
	}
	if e := resp.Error; e != nil {
		closeFiles(files)
		return nil, nil, &wire.Error{Errno: syscall.Errno(e.Errno), Message: e.Message}
	}
	if int(resp.Files) != len(files) {
		closeFiles(files)
		return nil, nil, wire.Errorf(syscall.EIO, "nsplug channel: the response announced %d files and %d came", resp.Files, len(files))
	}
	return json.RawMessage(resp.Payload), files, nil
}

var errRevoked = wire.Errorf(syscall.EPIPE, "nsplug channel: revoked (the daemon reloaded, or the instance behind it ended): open another, or call through the daemon")

// exchange sends one request and reads its response (blocking system
// calls: the channel is one request at a time, and a thread that sleeps
// in recvmsg(2) wakes straight into the answer).
func (ch *Channel) exchange(id string, msg []byte) (*wire.HandleResponse, []*os.File, error) {
	err := wire.Send(func(frame, _ []byte) error {
		for {
			_, err := unix.Write(ch.fd, frame)
			if err != unix.EINTR {
				return err
			}
		}
	}, wire.FrameRequest, id, msg, nil)
	if err != nil {
		return nil, nil, errRevoked
	}
	var m wire.Message
	for {
		n, oobn, flags, _, err := unix.Recvmsg(ch.fd, ch.buf, ch.oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return nil, nil, errRevoked
		}
		var files []*os.File
		if oobn > 0 {
			files = wire.ParseRights(ch.oob[:oobn], "nsplug-file")
		}
		kind, fid, body, perr := wire.ParseFrame(ch.buf[:n])
		if perr != nil || fid != id || (kind != wire.FrameResponse && kind != wire.FrameResponsePart) {
			closeFiles(files)
			return nil, nil, wire.Errorf(syscall.EPROTO, "nsplug channel: a frame that answers no request of ours")
		}
		m.Add(body)
		if kind == wire.FrameResponsePart {
			closeFiles(files)
			continue
		}
		if flags&unix.MSG_CTRUNC != 0 {
			closeFiles(files)
			return nil, nil, wire.Errorf(syscall.EIO, "nsplug channel: the response's files did not fit (more than %d)", wire.MaxFiles)
		}
		if m.TooLarge() {
			closeFiles(files)
			return nil, nil, wire.TooLarge("response", m.Size)
		}
		resp := &wire.HandleResponse{}
		if err := proto.Unmarshal(m.Body, resp); err != nil || resp.RequestId != id {
			closeFiles(files)
			return nil, nil, wire.Errorf(syscall.EPROTO, "nsplug channel: a malformed response")
		}
		return resp, files, nil
	}
}

// Close closes the channel (and tells the daemon, for one it opened).
// A Call in flight ends (EPIPE) rather than holding Close up.
func (ch *Channel) Close() error {
	if ch.closing.Swap(true) {
		return nil
	}
	unix.Shutdown(ch.fd, unix.SHUT_RDWR) // wakes a Call in flight
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.broken == nil {
		ch.broken = wire.Errorf(syscall.EBADF, "nsplug channel: closed")
	}
	err := ch.file.Close()
	if ch.client != nil {
		ch.client.closeChannel(ch.id)
		ch.client = nil
	}
	return err
}

// Channels makes calls on direct channels it opens as they are needed,
// one for each target, type, namespaces, credentials and timeout, on
// Client c: what a Go program making repeated calls uses instead of
// Client.Call. A type the daemon serves only through Call (one that
// changes state: EOPNOTSUPP) goes through Call; a revoked channel (EPIPE:
// a reload, its instance or target ended) is reopened once, which is
// safe because channels serve only types that change nothing. At most
// max channels stay open (the least recently used is closed to make
// room; 0: 8). Safe for concurrent use; calls on one channel wait their
// turn.
type Channels struct {
	c       *Client
	max     int
	mu      sync.Mutex
	open    map[string]*cachedChannel
	clock   uint64
	viaCall map[string]bool // types the daemon refused a channel for
}

type cachedChannel struct {
	ch   *Channel
	used uint64
}

// NewChannels is a Channels on c, which it closes on Close.
func NewChannels(c *Client, max int) *Channels {
	if max <= 0 {
		max = 8
	}
	return &Channels{c: c, max: max, open: make(map[string]*cachedChannel), viaCall: make(map[string]bool)}
}

// Call is Client.Call, on a channel where it can be.
func (cs *Channels) Call(ctx context.Context, req *apiv1.CallRequest) (*apiv1.CallResponse, []*os.File, error) {
	key := string(appendCallRequest(nil, &apiv1.CallRequest{Target: req.Target, Type: req.Type, Namespaces: req.Namespaces, Credentials: req.Credentials, Timeout: req.Timeout}))
	for attempt := 0; ; attempt++ {
		ch, err := cs.channel(ctx, key, req)
		if err != nil {
			if e, ok := err.(*wire.Error); ok && e.Errno == syscall.EOPNOTSUPP {
				cs.mu.Lock()
				cs.viaCall[req.Type] = true
				cs.mu.Unlock()
				return cs.c.Call(ctx, req)
			}
			return nil, nil, err
		}
		if ch == nil {
			return cs.c.Call(ctx, req)
		}
		out, files, err := ch.Call(ctx, req.Payload)
		if e, ok := err.(*wire.Error); ok && e.Errno == syscall.EPIPE && ctx.Err() == nil {
			cs.drop(key, ch)
			if attempt == 0 {
				continue
			}
		}
		if err != nil {
			return nil, nil, err
		}
		return &apiv1.CallResponse{Payload: out}, files, nil
	}
}

// channel is key's open channel, opened if need be; nil (and no error)
// for a type that goes through Call.
func (cs *Channels) channel(ctx context.Context, key string, req *apiv1.CallRequest) (*Channel, error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.viaCall[req.Type] {
		return nil, nil
	}
	cs.clock++
	if cc := cs.open[key]; cc != nil {
		cc.used = cs.clock
		return cc.ch, nil
	}
	if len(cs.open) >= cs.max {
		var oldest string
		for k, cc := range cs.open {
			if oldest == "" || cc.used < cs.open[oldest].used {
				oldest = k
			}
		}
		cs.open[oldest].ch.Close()
		delete(cs.open, oldest)
	}
	ch, err := cs.c.OpenChannel(ctx, req)
	if err != nil {
		return nil, err
	}
	cs.open[key] = &cachedChannel{ch: ch, used: cs.clock}
	return ch, nil
}

// drop forgets key's channel ch, revoked.
func (cs *Channels) drop(key string, ch *Channel) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cc := cs.open[key]; cc != nil && cc.ch == ch {
		delete(cs.open, key)
	}
	ch.Close()
}

// Close closes every channel, then the Client.
func (cs *Channels) Close() error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for k, cc := range cs.open {
		cc.ch.Close()
		delete(cs.open, k)
	}
	return cs.c.Close()
}
