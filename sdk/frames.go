package sdk

import (
	"context"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/nsplug/nsplug/sdk/pluginpb"
)

// frameServer serves Handle on the frame channel (see pluginpb/frame.go),
// the fast path the core prefers to gRPC.
type frameServer struct {
	s    *Server
	conn *net.UnixConn

	mu      sync.Mutex
	partial map[string]*partialRequest    // request bodies still arriving
	cancels map[string]context.CancelFunc // requests being served
	closed  chan struct{}                 // closed when the core closes the channel
}

// EnvOneshot tells a plugin process it was started for a single request
// on the frame channel, without go-plugin: it serves until the core closes
// the channel, then exits.
const EnvOneshot = "NSPLUG_ONESHOT"

// serveFrames serves the frame channel in the background, or until it
// closes when wait is set.
func (s *Server) serveFrames(f *os.File, wait bool) error {
	c, err := net.FileConn(f)
	if err != nil {
		return err
	}
	fs := &frameServer{s: s, conn: c.(*net.UnixConn), partial: make(map[string]*partialRequest),
		cancels: make(map[string]context.CancelFunc), closed: make(chan struct{})}
	go fs.run(make([]byte, pluginpb.MaxFrame))
	if wait {
		<-fs.closed
	}
	return nil
}

// run reads frames. When a request is complete, the reading goroutine
// hands reading (and its buffer) to a new goroutine and serves the
// request itself: the handler starts at once instead of waiting for the
// reader to park, and requests still run concurrently.
func (fs *frameServer) run(buf []byte) {
	for {
		n, _, _, _, err := fs.conn.ReadMsgUnix(buf, nil)
		if err != nil || n == 0 {
			close(fs.closed) // the core is gone; go-plugin ends the process
			return
		}
		kind, id, body, err := pluginpb.ParseFrame(buf[:n])
		if err != nil {
			fs.s.log.Error("bad frame from the core", "error", err)
			continue
		}
		switch kind {
		case pluginpb.FrameRequestPart:
			fs.mu.Lock()
			p := fs.partial[id]
			if p == nil {
				p = &partialRequest{}
				fs.partial[id] = p
			}
			p.add(body)
			fs.mu.Unlock()
		case pluginpb.FrameRequest:
			fs.mu.Lock()
			p := fs.partial[id]
			if p == nil {
				p = &partialRequest{}
			}
			p.add(body) // a copy: buf goes on to the next reader
			delete(fs.partial, id)
			ctx, cancel := context.WithCancel(context.Background())
			fs.cancels[id] = cancel
			fs.mu.Unlock()
			go fs.run(buf)
			fs.serve(ctx, id, p)
			return
		case pluginpb.FrameCancel:
			fs.mu.Lock()
			if cancel := fs.cancels[id]; cancel != nil {
				cancel()
			}
			fs.mu.Unlock()
		}
	}
}

// partialRequest is a request whose frames are arriving. Past
// MaxMessageBytes its bytes are only counted: the request is refused
// whole, naming its size, rather than decoded from the parts that fitted.
type partialRequest struct {
	body []byte
	size int // bytes received, kept or not
}

func (p *partialRequest) add(part []byte) {
	p.size += len(part)
	if p.size > MaxMessageBytes {
		p.body = nil
	} else {
		p.body = append(p.body, part...)
	}
}

func (fs *frameServer) serve(ctx context.Context, id string, p *partialRequest) {
	defer func() {
		fs.mu.Lock()
		if cancel := fs.cancels[id]; cancel != nil {
			cancel()
			delete(fs.cancels, id)
		}
		fs.mu.Unlock()
	}()
	req := &pluginpb.HandleRequest{}
	var resp *pluginpb.HandleResponse
	var files []*os.File
	if p.size > MaxMessageBytes {
		resp = errorResponse(TooLarge("request", p.size))
	} else if err := proto.Unmarshal(p.body, req); err != nil {
		resp = errorResponse(Errorf(syscall.EINVAL, "malformed request frame: %v", err))
	} else {
		resp, files = fs.s.handle(ctx, req)
	}
	defer closeAll(files)
	resp.RequestId = id
	out, err := proto.Marshal(resp)
	if err != nil {
		out, _ = proto.Marshal(errorResponse(Errorf(syscall.EIO, "encoding response: %v", err)))
	}
	if err := fs.send(pluginpb.FrameResponsePart, pluginpb.FrameResponse, id, out, files); err != nil {
		fs.s.log.Error("sending a response", "request_id", id, "error", err)
	}
}

// send writes msg as part frames and one final frame carrying files.
func (fs *frameServer) send(partKind, finalKind byte, id string, msg []byte, files []*os.File) error {
	parts := pluginpb.Split(msg)
	frame := make([]byte, 0, 2+len(id)+len(parts[0]))
	for i, p := range parts {
		kind, oob := partKind, []byte(nil)
		if i == len(parts)-1 {
			kind = finalKind
			if len(files) > 0 {
				fds := make([]int, len(files))
				for j, f := range files {
					fds[j] = int(f.Fd())
				}
				oob = unix.UnixRights(fds...)
			}
		}
		frame, _ = pluginpb.AppendFrame(frame[:0], kind, id, p)
		if _, _, err := fs.conn.WriteMsgUnix(frame, oob, nil); err != nil {
			return err
		}
	}
	return nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
