package server

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/nsplug/nsplug/api/fast"
	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/wire"
)

// The fast path (api/fast/README.md): Call without gRPC, on the same
// socket. Each connection is served in the goroutine that sorted it
// (mux), one request at a time: read, call (the same call as gRPC's),
// reply, with no other goroutine on the way; one epoll instance for all
// of them tells when a client hangs up (hangups.go).

// fastConns are the fast path's connections, for Shutdown.
type fastConns struct {
	mu      sync.Mutex
	conns   map[*fastConn]struct{}
	stopped bool
	wg      sync.WaitGroup
	hangups hangups
}

type fastConn struct {
	conn   *net.UnixConn
	cancel context.CancelFunc // of its request in flight; nil when idle
	hungUp bool               // the client closed its end (hangups)
	watch  uint64             // its key in hangups, 0 for none
	// channels it opened, by id (channels.go; under Server.channels.mu)
	channels map[uint64]*openChannel
}

func (f *fastConns) add(fc *fastConn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return false
	}
	if f.conns == nil {
		f.conns = make(map[*fastConn]struct{})
	}
	f.conns[fc] = struct{}{}
	f.wg.Add(1)
	return true
}

func (f *fastConns) remove(fc *fastConn) {
	f.mu.Lock()
	delete(f.conns, fc)
	f.mu.Unlock()
	f.hangups.remove(fc)
	fc.conn.Close()
	f.wg.Done()
}

// begin marks fc busy with a request and returns its context; false once
// the daemon is shutting down.
func (f *fastConns) begin(fc *fastConn) (context.Context, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return nil, false
	}
	var ctx context.Context
	ctx, fc.cancel = context.WithCancel(context.Background())
	if fc.hungUp { // with the request still to be read
		fc.cancel()
	}
	return ctx, true
}

// hangUp cancels fc's request in flight, and the next one, if its client
// sent one before it hung up.
func (f *fastConns) hangUp(fc *fastConn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fc.hungUp = true
	if fc.cancel != nil {
		fc.cancel()
	}
}

// end marks fc idle; false once the daemon is shutting down (the
// connection is then closed).
func (f *fastConns) end(fc *fastConn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	fc.cancel()
	fc.cancel = nil
	return !f.stopped
}

// stop refuses new requests and closes the idle connections; the busy
// ones close after their reply.
func (f *fastConns) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	for fc := range f.conns {
		if fc.cancel == nil {
			fc.conn.Close()
		}
	}
}

// cancel ends the requests in flight (their replies say so).
func (f *fastConns) cancel() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for fc := range f.conns {
		if fc.cancel != nil {
			fc.cancel()
		}
	}
}

// serveFast serves the fast path on conn, whose preface the mux read,
// until the client closes it or breaks the protocol, or the daemon shuts
// down.
func (s *Server) serveFast(conn *net.UnixConn, c Caller) {
	fc := &fastConn{conn: conn}
	if !s.fast.add(fc) {
		conn.Close()
		return
	}
	defer s.fast.remove(fc)
	defer s.closeConnChannels(fc)
	if err := s.fast.hangups.add(fc); err != nil {
		s.log.Warn("api: fast path: cannot watch a connection for its client hanging up; closing it", "error", err)
		return
	}
	if _, err := conn.Write([]byte(fast.Preface)); err != nil {
		return
	}
	r := fast.NewReader(conn)
	if !c.Root() {
		r.Limit(s.userLimit, "server.max_user_request_bytes")
	}
	var out []byte
	for {
		kind, id, msg, err := r.ReadRequest()
		if err != nil {
			var pe *fast.ProtocolError
			if errors.As(err, &pe) { // answered, then closed: the stream is lost
				s.log.Debug("api: fast path: closing a connection that broke the protocol", "caller_uid", c.UID, "caller_pid", c.PID, "error", pe.Err)
				s.reply(conn, out, "", statusOf(pe.Err), nil)
			} else if err != io.EOF && !errors.Is(err, net.ErrClosed) {
				s.log.Debug("api: fast path: connection lost", "caller_uid", c.UID, "caller_pid", c.PID, "error", err)
			}
			return
		}
		ctx, ok := s.fast.begin(fc)
		if !ok {
			s.reply(conn, out, id, statusOf(wire.Errorf(syscall.ESHUTDOWN, "the daemon is shutting down")), nil)
			return
		}
		var st *spb.Status
		var files []*os.File
		switch kind {
		case fast.FrameOpenChannel:
			st, files = s.openFastChannel(ctx, c, fc, msg)
		case fast.FrameCloseChannel:
			st = s.closeFastChannel(fc, msg)
		default:
			st, files = s.fastCall(ctx, c, msg)
		}
		out, err = s.reply(conn, out, id, st, files)
		closeAll(files) // sent or not, the daemon keeps no copy
		if !s.fast.end(fc) || err != nil {
			return
		}
	}
}

// fastCall decodes and runs one request (ctx ends when the client hangs
// up: hangups).
func (s *Server) fastCall(ctx context.Context, c Caller, msg []byte) (*spb.Status, []*os.File) {
	var in apiv1.CallRequest
	if err := proto.Unmarshal(msg, &in); err != nil {
		return statusOf(wire.Errorf(syscall.EINVAL, "the request is no nsplug.api.v1.CallRequest: %v", err)), nil
	}
	resp, err := s.call(ctx, c, &in, viaFast)
	if err != nil {
		return statusOf(err), nil
	}
	detail, err := anypb.New(&apiv1.CallResponse{Payload: resp.Payload})
	if err != nil {
		closeAll(resp.Files)
		return statusOf(wire.Errorf(syscall.EIO, "encoding the response: %v", err)), nil
	}
	return &spb.Status{Details: []*anypb.Any{detail}}, resp.Files
}

// statusOf is err as gRPC's Call would end with it (Status): the same code,
// message and apiv1.Error detail.
func statusOf(err error) *spb.Status { return status.Convert(Status(err)).Proto() }

// reply sends one reply, with files (SCM_RIGHTS, on its first bytes);
// buf is reused.
func (s *Server) reply(conn *net.UnixConn, buf []byte, id string, st *spb.Status, files []*os.File) ([]byte, error) {
	msg, err := proto.Marshal(st)
	if err != nil {
		return buf, err
	}
	if buf, err = fast.AppendMessage(buf[:0], wire.FrameResponse, id, msg); err != nil {
		return buf, err
	}
	out := buf
	if cap(buf) > 1<<16 {
		buf = nil // not kept for the next reply
	}
	if len(files) == 0 {
		_, err = conn.Write(out)
		return buf, err
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	n, _, err := conn.WriteMsgUnix(out, unix.UnixRights(fds...), nil)
	if err == nil && n < len(out) {
		_, err = conn.Write(out[n:])
	}
	return buf, err
}

// refuseFast answers a fast-path connection the daemon will not serve (its
// preface read, its request not): the preface, then err as the reply to a
// breach of the protocol (no request id), which the client returns as its
// call's error. Best effort, bounded: the connection is closed after.
func refuseFast(conn *net.UnixConn, err error) {
	msg, merr := proto.Marshal(statusOf(err))
	if merr != nil {
		return
	}
	buf, aerr := fast.AppendMessage([]byte(fast.Preface), wire.FrameResponse, "", msg)
	if aerr != nil {
		return
	}
	conn.SetWriteDeadline(time.Now().Add(time.Second))
	conn.Write(buf)
}
