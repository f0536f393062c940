package core

import (
	"context"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/nsplug/nsplug/sdk"
	"github.com/nsplug/nsplug/sdk/pluginpb"
)

// frameConn is the host end of an instance's frame channel (see
// sdk/pluginpb/frame.go): the fast path for requests, and the only way
// file descriptors come back. One goroutine reads it and hands each
// response, with its files, to the request waiting for it. Received fds
// are close-on-exec, so they never reach another plugin or target; files
// nobody takes are closed.
type frameConn struct {
	conn *net.UnixConn
	mu   sync.Mutex
	mail map[string]*frameSlot
	dead bool
	done chan struct{}
}

// frameSlot is where one request's answer lands.
type frameSlot struct {
	waiting bool          // a caller registered before the answer came
	arrived chan struct{} // closed once body/files are complete
	body    []byte
	files   []*os.File
}

// newFrameConn makes the socketpair: the plugin's end goes to the plugin
// (nsexec fd 6), the core keeps the other.
func newFrameConn() (c *frameConn, pluginEnd *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	ours := os.NewFile(uintptr(fds[0]), "frames")
	defer ours.Close() // FileConn dups it
	nc, err := net.FileConn(ours)
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	c = &frameConn{conn: nc.(*net.UnixConn), mail: make(map[string]*frameSlot), done: make(chan struct{})}
	go c.run()
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

func (c *frameConn) run() {
	defer close(c.done)
	buf := make([]byte, pluginpb.MaxFrame)
	oob := make([]byte, unix.CmsgSpace(sdk.MaxFiles*4))
	for {
		n, oobn, flags, _, err := c.conn.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 {
			break
		}
		files := parseRights(oob[:oobn])
		kind, id, body, err := pluginpb.ParseFrame(buf[:n])
		if err != nil {
			closeFiles(files)
			continue
		}
		c.mu.Lock()
		s := c.mail[id]
		switch kind {
		case pluginpb.FrameResponsePart, pluginpb.FrameResponse:
			if s == nil || !s.waiting || isClosed(s.arrived) {
				closeFiles(files) // its caller gave up
				break
			}
			if len(s.body)+len(body) > sdk.MaxMessageBytes {
				s.body = nil // too large: it will fail to decode
			} else {
				s.body = append(s.body, body...)
			}
			if kind == pluginpb.FrameResponse {
				s.files = files
				close(s.arrived)
			} else {
				closeFiles(files)
			}
		case pluginpb.FrameFiles: // for a response that goes through gRPC
			s = c.slot(id)
			if isClosed(s.arrived) {
				closeFiles(files)
				break
			}
			s.files = files
			close(s.arrived)
		default:
			closeFiles(files)
		}
		if flags&unix.MSG_CTRUNC != 0 && s != nil && s.files != nil {
			// Some fds were dropped: refuse the rest rather than guess.
			closeFiles(s.files)
			s.files = []*os.File{}
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.dead = true
	for id, s := range c.mail {
		if !isClosed(s.arrived) {
			close(s.arrived)
		}
		if !s.waiting {
			closeFiles(s.files)
			delete(c.mail, id)
		}
	}
	c.mu.Unlock()
}

func parseRights(oob []byte) []*os.File {
	var files []*os.File
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	for _, m := range msgs {
		fds, _ := unix.ParseUnixRights(&m)
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "from-plugin"))
		}
	}
	return files
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// errChannelClosed reports a frame channel whose plugin end is gone.
var errChannelClosed = errorf(syscall.EPIPE, "the plugin's frame channel is closed")

// roundTrip sends req on the frame channel and waits for its response.
func (c *frameConn) roundTrip(ctx context.Context, req *pluginpb.HandleRequest) (*pluginpb.HandleResponse, []*os.File, error) {
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
	parts := pluginpb.Split(msg)
	frame := make([]byte, 0, 2+len(id)+len(parts[0]))
	for i, p := range parts {
		kind := pluginpb.FrameRequestPart
		if i == len(parts)-1 {
			kind = pluginpb.FrameRequest
		}
		if frame, err = pluginpb.AppendFrame(frame[:0], kind, id, p); err != nil {
			return nil, nil, err
		}
		if _, err := c.conn.Write(frame); err != nil {
			return nil, nil, errChannelClosed
		}
	}
	select {
	case <-s.arrived:
	case <-ctx.Done():
		cancel, _ := pluginpb.AppendFrame(nil, pluginpb.FrameCancel, id, nil)
		c.conn.Write(cancel)
		c.mu.Lock()
		if isClosed(s.arrived) {
			closeFiles(s.files)
		}
		s.waiting = false
		c.mu.Unlock()
		return nil, nil, ctx.Err()
	}
	c.mu.Lock()
	body, files, dead := s.body, s.files, c.dead && s.body == nil
	c.mu.Unlock()
	if dead {
		return nil, nil, errChannelClosed
	}
	resp := &pluginpb.HandleResponse{}
	if err := proto.Unmarshal(body, resp); err != nil || resp.RequestId != id {
		closeFiles(files)
		return nil, nil, errorf(syscall.EIO, "malformed response frame for request %s", id)
	}
	return resp, files, nil
}

// takeFiles waits for the n files of a gRPC response to request id.
func (c *frameConn) takeFiles(ctx context.Context, id string, n int) ([]*os.File, error) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return nil, errChannelClosed
	}
	s := c.slot(id)
	s.waiting = true
	c.mu.Unlock()
	select {
	case <-s.arrived:
	case <-ctx.Done():
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.mail, id)
	if !isClosed(s.arrived) || s.files == nil {
		if isClosed(s.arrived) {
			closeFiles(s.files)
		}
		s.waiting = false
		return nil, errorf(syscall.EIO, "the files of request %s never arrived", id)
	}
	if len(s.files) != n {
		closeFiles(s.files)
		return nil, errorf(syscall.EIO, "request %s: the plugin announced %d files and sent %d", id, n, len(s.files))
	}
	return s.files, nil
}

// close stops the reader and closes every file nobody took.
func (c *frameConn) close() {
	c.conn.Close()
	<-c.done
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
