package core

import (
	"context"
	"errors"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/nsplug/nsplug/wire"
)

// frameConn is the host end of an instance's frame channel (see
// wire/README.md): the data plane, where every request goes, its
// cancellation too, and the only way file descriptors come back. There is no reader goroutine: a caller
// waiting for an answer reads the channel itself, handing other requests'
// frames to their slots, until its own answer is in; then another waiter
// takes over. That saves a goroutine hand-off per request, a quarter of a
// warm request's latency. Received fds are close-on-exec, so they never
// reach another plugin or target; files nobody takes are closed.
type frameConn struct {
	// The socket is used raw (not through Go's netpoller): a reader
	// sleeps in poll(2) and wakes straight into recvmsg(2), one thread
	// hand-off less. fdmu keeps the fd from being closed under an
	// operation; shutdown(2) wakes whoever waits on it.
	fd   int
	wake int // eventfd that interrupts a reader whose request was cancelled
	fdmu sync.RWMutex
	buf  []byte // used by the reader only
	oob  []byte

	mu      sync.Mutex
	mail    map[string]*frameSlot
	reading bool          // a caller is reading
	turn    chan struct{} // closed when the reader steps down
	dead    bool
	done    chan struct{} // closed once dead
}

// frameSlot is where one request's answer lands.
type frameSlot struct {
	waiting bool          // a caller registered before the answer came
	arrived chan struct{} // closed once body/files are complete, or the channel died
	final   bool          // the response's last frame came (arrived was not closed by death)
	msg     wire.Message  // the response's bytes, counted past the limit
	files   []*os.File
}

// newFrameConn makes the socketpair: the plugin's end goes to the plugin
// (nsexec fd 6), the core keeps the other.
func newFrameConn() (c *frameConn, pluginEnd *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, nil, err
	}
	c = &frameConn{
		fd:   fds[0],
		wake: wake,
		buf:  make([]byte, wire.MaxFrame),
		oob:  make([]byte, unix.CmsgSpace(wire.MaxFiles*4)),
		mail: make(map[string]*frameSlot),
		turn: make(chan struct{}),
		done: make(chan struct{}),
	}
	return c, os.NewFile(uintptr(fds[1]), "plugin-frames"), nil
}

// slot returns id's slot, making it. Called with mu held.
func (c *frameConn) slot(id string) *frameSlot {
	s := c.mail[id]
	if s == nil {
		s = &frameSlot{arrived: make(chan struct{})}
		c.mail[id] = s
	}
	return s
}

// await waits until s's answer arrives, reading the channel itself when
// nobody else is.
func (c *frameConn) await(ctx context.Context, s *frameSlot) error {
	for {
		c.mu.Lock()
		switch {
		case isClosed(s.arrived):
			c.mu.Unlock()
			return nil
		case c.dead:
			c.mu.Unlock()
			return errChannelClosed
		case !c.reading:
			c.reading = true
			c.mu.Unlock()
			c.read(ctx, s)
			c.mu.Lock()
			c.reading = false
			close(c.turn)
			c.turn = make(chan struct{})
			c.mu.Unlock()
			if !isClosed(s.arrived) && ctx.Err() != nil {
				return ctx.Err()
			}
			continue
		}
		turn := c.turn
		c.mu.Unlock()
		select {
		case <-s.arrived:
			return nil
		case <-turn: // the reader stepped down: take over if needed
		case <-c.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// read reads frames until s's answer is in, ctx ends or the channel dies.
func (c *frameConn) read(ctx context.Context, s *frameSlot) {
	// A cancelled caller must stop reading: the eventfd wakes its poll.
	// Its deadline, when it holds one as a time, is poll's timeout.
	_, cancelled := pollTimeout(ctx)
	stop := context.AfterFunc(cancelled, func() {
		c.fdmu.RLock()
		defer c.fdmu.RUnlock()
		if c.fd >= 0 {
			unix.Write(c.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		}
	})
	defer stop()
	c.fdmu.RLock()
	defer c.fdmu.RUnlock()
	if c.fd < 0 {
		c.markDead()
		return
	}
	var counter [8]byte
	for !isClosed(s.arrived) {
		n, oobn, flags, _, err := unix.Recvmsg(c.fd, c.buf, c.oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			timeout, _ := pollTimeout(ctx)
			if timeout == 0 { // the deadline passed
				return
			}
			pfd := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}, {Fd: int32(c.wake), Events: unix.POLLIN}}
			if _, err := unix.Poll(pfd, timeout); err != nil && err != unix.EINTR {
				c.markDead()
				return
			}
			if pfd[1].Revents&unix.POLLIN != 0 {
				unix.Read(c.wake, counter[:]) // drain; a stale wake-up is harmless
				if ctx.Err() != nil {
					return
				}
			}
			continue
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			c.markDead()
			return
		}
		c.deliver(c.buf[:n], parseRights(c.oob[:oobn]), flags)
	}
}

// write sends one frame (SOCK_SEQPACKET: atomically, whatever else is
// being written), with oob as its ancillary data.
func (c *frameConn) write(frame, oob []byte) error {
	c.fdmu.RLock()
	defer c.fdmu.RUnlock()
	if c.fd < 0 {
		return errChannelClosed
	}
	for {
		err := unix.Sendmsg(c.fd, frame, oob, nil, 0)
		switch err {
		case nil:
			return nil
		case unix.EINTR:
		case unix.EAGAIN:
			pfd := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLOUT}}
			unix.Poll(pfd, -1)
			if pfd[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
				return errChannelClosed
			}
		default:
			return errChannelClosed
		}
	}
}

// deliver hands one frame to its slot.
func (c *frameConn) deliver(frame []byte, files []*os.File, flags int) {
	kind, id, body, err := wire.ParseFrame(frame)
	if err != nil {
		closeFiles(files)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.mail[id]
	switch kind {
	case wire.FrameResponsePart, wire.FrameResponse:
		if s == nil || !s.waiting || isClosed(s.arrived) {
			closeFiles(files) // its caller gave up
			return
		}
		s.msg.Add(body)
		if kind == wire.FrameResponse {
			s.files = files
			s.final = true
			close(s.arrived)
		} else {
			closeFiles(files)
		}
	default:
		closeFiles(files)
		return
	}
	if flags&unix.MSG_CTRUNC != 0 && s.files != nil {
		// Some fds were dropped: refuse the rest rather than guess.
		closeFiles(s.files)
		s.files = []*os.File{}
	}
}

// markDead records that the plugin's end is gone and wakes every waiter.
func (c *frameConn) markDead() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return
	}
	c.dead = true
	close(c.done)
	for id, s := range c.mail {
		if !isClosed(s.arrived) {
			close(s.arrived)
		}
		if !s.waiting {
			closeFiles(s.files)
			delete(c.mail, id)
		}
	}
}

func parseRights(oob []byte) []*os.File { return wire.ParseRights(oob, "from-plugin") }

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// cancelGrace is how long a handler has, once its request is cancelled,
// to stop and answer; one that does not is killed with its instance.
const cancelGrace = 500 * time.Millisecond

// errStopped reports a request whose caller gave up and whose handler
// stopped when told to: the instance is healthy.
var errStopped = errors.New("request cancelled; the handler stopped")

// errChannelClosed reports a frame channel whose plugin end is gone.
var errChannelClosed = errorf(syscall.EPIPE, "the plugin's frame channel is closed")

// roundTrip sends req on the frame channel and waits for its response.
func (c *frameConn) roundTrip(ctx context.Context, req *wire.HandleRequest) (*wire.HandleResponse, []*os.File, error) {
	return c.roundTripWith(ctx, req, nil)
}

// roundTripWith is roundTrip with oob (SCM_RIGHTS) on the request's final
// frame: a direct channel's socket (channel.go).
func (c *frameConn) roundTripWith(ctx context.Context, req *wire.HandleRequest, oob []byte) (*wire.HandleResponse, []*os.File, error) {
	id := req.RequestId
	msg, err := proto.Marshal(req)
	if err != nil {
		return nil, nil, err
	}
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return nil, nil, errChannelClosed
	}
	s := c.slot(id)
	s.waiting = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.mail, id)
		c.mu.Unlock()
	}()
	if err := wire.Send(c.write, wire.FrameRequest, id, msg, oob); err != nil {
		return nil, nil, err
	}
	if err := c.await(ctx, s); err != nil {
		if ctx.Err() != nil {
			// Ask the handler to stop, and give it cancelGrace to say
			// it did: then the instance is still fit for requests.
			if wire.Send(c.write, wire.FrameCancel, id, nil, nil) == nil {
				grace, done := context.WithTimeout(context.Background(), cancelGrace)
				if c.await(grace, s) == nil {
					err = errStopped
				}
				done()
			}
		}
		c.mu.Lock()
		if isClosed(s.arrived) {
			closeFiles(s.files)
		}
		s.waiting = false
		c.mu.Unlock()
		return nil, nil, err
	}
	c.mu.Lock()
	// A plugin that died part way through a response leaves a fragment:
	// the channel is closed, not the response malformed.
	m, files, dead := s.msg, s.files, !s.final
	c.mu.Unlock()
	if m.TooLarge() {
		closeFiles(files)
		return nil, nil, wire.TooLarge("response", m.Size)
	}
	if dead {
		return nil, nil, errChannelClosed
	}
	resp := &wire.HandleResponse{}
	if err := proto.Unmarshal(m.Body, resp); err != nil || resp.RequestId != id {
		closeFiles(files)
		return nil, nil, errorf(syscall.EIO, "malformed response frame for request %s", id)
	}
	return resp, files, nil
}

// close ends the channel: a reader stops, waiters are woken, files
// nobody took are closed.
func (c *frameConn) close() {
	c.shutdown()
	c.markDead()
	c.fdmu.Lock() // everyone woken by shutdown has let go
	defer c.fdmu.Unlock()
	if c.fd >= 0 {
		unix.Close(c.fd)
		unix.Close(c.wake)
		c.fd = -1
	}
}

// shutdown ends the channel in both directions: the plugin reads EOF
// (a oneshot plugin then exits) and anyone polling the socket wakes.
func (c *frameConn) shutdown() {
	c.fdmu.RLock()
	defer c.fdmu.RUnlock()
	if c.fd >= 0 {
		unix.Shutdown(c.fd, unix.SHUT_RDWR)
	}
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
