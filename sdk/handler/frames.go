package handler

import (
	"context"
	"os"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/nsplug/nsplug/internal/fdwait"
	"github.com/nsplug/nsplug/wire"
)

// frameServer serves the frame channel (see wire/README.md), the data
// plane: every request arrives here, pooled or oneshot.
type frameServer struct {
	handle handleFunc
	log    hclog.Logger
	// The socket is never the runtime poller's: the poller would wake
	// for it each time the core reads a response (fdwait). Reads and
	// writes are raw non-blocking system calls, which wait through
	// fdwait's Waiters.
	fd       int
	readable *fdwait.Waiter
	writable *fdwait.Waiter // a direct channel's, while a write that would block waits
	ended    bool           // a direct channel's end: no more waits
	idle     *idleReturn    // the process's: shared by its channels
	oob      []byte         // the core's channel only: a grant's socket comes with its request
	rx       *frameReader   // made by the first read

	// grant is set on a direct channel (channel.go), which serves one
	// request at a time of the one type it grants; nil on the core's.
	grant  *wire.ChannelGrant
	stats  *channelStats  // a direct channel's counts
	hangUp *fdwait.Waiter // a direct channel's: its caller hanging up

	mu      sync.Mutex
	partial map[string]*wire.Message      // request bodies still arriving
	cancels map[string]context.CancelFunc // requests being served
	closed  chan struct{}                 // closed when the core closes the channel

	// spare hands reading (and its buffer) to a goroutine that served a
	// request before and waits to read again: its stack has grown to
	// what serving takes, so the next request does not grow a new
	// goroutine's stack (a fifth of a warm request's CPU in the handler).
	spare chan []byte

	served func() // called after each response is sent, or nil
}

// handleFunc handles one request: a plugin's server (server.handle), or
// the servers of the built-ins a process serves together (mux.handle).
type handleFunc func(ctx context.Context, req *wire.HandleRequest) (*wire.HandleResponse, []*os.File)

// serveFrames serves the frame channel in the background, or until it
// closes when wait is set; served, if not nil, is called after each
// response is sent.
func serveFrames(f *os.File, log hclog.Logger, handle handleFunc, wait bool, served func()) error {
	fd, readable, err := rawSocket(f)
	if err != nil {
		return err
	}
	fs := &frameServer{handle: handle, log: log, fd: fd, readable: readable, idle: &idleReturn{}, oob: make([]byte, unix.CmsgSpace(4)),
		partial: make(map[string]*wire.Message), cancels: make(map[string]context.CancelFunc), closed: make(chan struct{}),
		spare: make(chan []byte), served: served}
	go fs.run(make([]byte, wire.MaxFrame))
	if wait {
		<-fs.closed
	}
	return nil
}

// run reads frames. When a request is complete, the reading goroutine
// hands reading (and its buffer) on, to a spare goroutine or a new one,
// and serves the request itself: the handler starts at once instead of
// waiting for the reader to park, and requests still run concurrently.
// Having served, it waits as a spare; there are never more spares than
// requests once served at the same time.
func (fs *frameServer) run(buf []byte) {
	for {
		n, file, err := fs.recv(buf)
		if err != nil || n == 0 {
			if file != nil {
				file.Close()
			}
			fs.end()
			return
		}
		kind, id, body, err := wire.ParseFrame(buf[:n])
		if fs.grant != nil && fs.breached(kind, id, err) {
			fs.end()
			return
		}
		if err != nil || (file != nil && kind != wire.FrameRequest) {
			if file != nil {
				file.Close()
			}
			if err != nil {
				fs.log.Error("bad frame from the core", "error", err)
			}
			continue
		}
		switch kind {
		case wire.FrameRequestPart:
			fs.mu.Lock()
			p := fs.partial[id]
			if p == nil {
				p = fs.newMessage()
				fs.partial[id] = p
			}
			p.Add(body)
			fs.mu.Unlock()
		case wire.FrameRequest:
			fs.mu.Lock()
			p := fs.partial[id]
			if p == nil {
				p = fs.newMessage()
			}
			p.Add(body) // a copy: buf goes on to the next reader
			delete(fs.partial, id)
			if fs.grant != nil {
				// A direct channel: one request at a time, the next
				// read only once this one is answered.
				fs.mu.Unlock()
				fs.serve(context.Background(), id, p, nil)
				continue
			}
			ctx, cancel := context.WithCancel(context.Background())
			fs.cancels[id] = cancel
			fs.mu.Unlock()
			select {
			case fs.spare <- buf:
			default:
				go fs.run(buf)
			}
			fs.serve(ctx, id, p, file)
			select {
			case buf = <-fs.spare:
			case <-fs.closed:
				return
			}
		case wire.FrameCancel:
			fs.mu.Lock()
			if cancel := fs.cancels[id]; cancel != nil {
				cancel()
			}
			fs.mu.Unlock()
		}
	}
}

// serve answers one complete request; file is the socket that came with
// it (a channel's grant), closed unless a grant keeps it.
func (fs *frameServer) serve(ctx context.Context, id string, p *wire.Message, file *os.File) {
	fs.idle.begin()
	defer fs.idle.end()
	defer func() {
		if file != nil {
			file.Close()
		}
	}()
	defer func() {
		fs.mu.Lock()
		if cancel := fs.cancels[id]; cancel != nil {
			cancel()
			delete(fs.cancels, id)
		}
		fs.mu.Unlock()
	}()
	req := &wire.HandleRequest{}
	var resp *wire.HandleResponse
	var files []*os.File
	if p.TooLarge() && p.Max > 0 {
		resp = wire.ErrorResponse(Errorf(syscall.EIO, "request of %d bytes or more exceeds this channel's limit of %d bytes", p.Size, p.Max))
	} else if p.TooLarge() {
		resp = wire.ErrorResponse(wire.TooLarge("request", p.Size))
	} else if err := proto.Unmarshal(p.Body, req); err != nil {
		resp = wire.ErrorResponse(Errorf(syscall.EINVAL, "malformed request frame: %v", err))
	} else if fs.grant != nil {
		resp, files = fs.serveGranted(req)
	} else if strings.HasPrefix(req.Type, wire.ReservedPrefix) {
		resp = fs.serveChannelRequest(req, &file)
	} else {
		resp, files = fs.handle(ctx, req)
	}
	defer closeAll(files)
	resp.RequestId = id
	out, err := proto.Marshal(resp)
	if err != nil {
		out, _ = proto.Marshal(wire.ErrorResponse(Errorf(syscall.EIO, "encoding response: %v", err)))
	}
	if err := fs.send(id, out, files); err != nil {
		fs.log.Error("sending a response", "request_id", id, "error", err)
	}
	if fs.served != nil {
		fs.served()
	}
}

// send writes a response, its files on the final frame.
func (fs *frameServer) send(id string, msg []byte, files []*os.File) error {
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for j, f := range files {
			fds[j] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	return wire.Send(func(frame, oob []byte) error {
		if len(oob) == 0 {
			return fs.write(frame)
		}
		return fs.sendmsg(frame, oob)
	}, wire.FrameResponse, id, msg, oob)
}

// rawSocket is a non-blocking copy of f's descriptor, never the runtime
// poller's, with its Waiter for reads.
func rawSocket(f *os.File) (int, *fdwait.Waiter, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, nil, os.NewSyscallError("dup", err)
	}
	readable, err := fdwait.Readable(fd)
	if err == nil {
		err = unix.SetNonblock(fd, true)
	}
	if err != nil {
		if readable != nil {
			readable.Close()
		}
		unix.Close(fd)
		return -1, nil, err
	}
	return fd, readable, nil
}

// The frame channel's reads and writes never block (the socket is
// non-blocking; fdwait waits for it), so they are made as raw system
// calls: through the runtime's entersyscall, each would wake its sysmon
// thread whenever that sleeps, as it does whenever the process waits for
// a request, and an awake sysmon moves the only P to another thread when
// a system call is slow to return.

// recv reads one frame (SOCK_SEQPACKET: one read takes one record). On
// the core's channel it takes the one socket a frame may carry (a
// channel's grant) with recvmsg(2); a direct channel's caller can send
// none: read(2) discards them.
func (fs *frameServer) recv(buf []byte) (int, *os.File, error) {
	if fs.rx == nil {
		fs.rx = newFrameReader(fs.fd, fs.oob)
	}
	return fs.rx.read(fs.readable, buf)
}

// frameReader is what a read of the frame channel needs, kept from one
// read to the next: one goroutine reads at a time (reading and its buffer
// are handed on together, which orders the reads), so a read allocates
// nothing, where a closure over its results allocated four objects per
// request.
type frameReader struct {
	fd    int
	oob   []byte // nil: read(2); else recvmsg(2), with room for one descriptor
	buf   []byte // the read's, while it is made
	iov   unix.Iovec
	msg   unix.Msghdr
	n     uintptr
	errno syscall.Errno
	try   func() bool // attempt, made once
}

func newFrameReader(fd int, oob []byte) *frameReader {
	r := &frameReader{fd: fd, oob: oob}
	r.try = r.attempt
	return r
}

// attempt makes one non-blocking read, again while it is interrupted,
// and reports whether it is done (false: it would block).
func (r *frameReader) attempt() bool {
	for {
		if r.oob == nil {
			r.n, _, r.errno = syscall.RawSyscall(syscall.SYS_READ, uintptr(r.fd), uintptr(unsafe.Pointer(&r.buf[0])), uintptr(len(r.buf)))
		} else {
			r.iov.Base = &r.buf[0]
			r.iov.SetLen(len(r.buf))
			r.msg.Iov = &r.iov
			r.msg.SetIovlen(1)
			r.msg.Control = &r.oob[0]
			r.msg.SetControllen(len(r.oob))
			r.msg.Flags = 0
			r.n, _, r.errno = syscall.RawSyscall(syscall.SYS_RECVMSG, uintptr(r.fd), uintptr(unsafe.Pointer(&r.msg)), unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
		}
		if r.errno != syscall.EINTR {
			return r.errno != syscall.EAGAIN
		}
	}
}

// read reads one frame into buf, waiting through w while there is none,
// with the one descriptor it may carry (more are truncated, which closes
// them; those received are close-on-exec).
func (r *frameReader) read(w *fdwait.Waiter, buf []byte) (int, *os.File, error) {
	r.buf = buf
	err := w.Wait(r.try)
	r.buf, r.msg.Iov, r.iov.Base = nil, nil, nil
	if err != nil {
		return 0, nil, err
	}
	if r.errno != 0 {
		return 0, nil, r.errno
	}
	var file *os.File
	if r.oob != nil && r.msg.Controllen > 0 {
		files := wire.ParseRights(r.oob[:r.msg.Controllen], "channel")
		if len(files) > 0 {
			file = files[0]
			closeAll(files[1:])
		}
	}
	return int(r.n), file, nil
}

// write sends one frame without files. The first attempt is made
// directly, without the closure a wait needs: nearly every write
// succeeds at once.
func (fs *frameServer) write(frame []byte) error {
	n, errno := rawSyscall(syscall.SYS_WRITE, fs.fd, unsafe.Pointer(&frame[0]), uintptr(len(frame)), 0)
	if errno == syscall.EAGAIN {
		return fs.writeWhenWritable(frame)
	}
	return writeResult(n, errno, frame)
}

func (fs *frameServer) writeWhenWritable(frame []byte) error {
	var n uintptr
	var errno syscall.Errno
	err := fs.whenWritable(func() bool {
		n, errno = rawSyscall(syscall.SYS_WRITE, fs.fd, unsafe.Pointer(&frame[0]), uintptr(len(frame)), 0)
		return errno != syscall.EAGAIN
	})
	if err != nil {
		return err
	}
	return writeResult(n, errno, frame)
}

func writeResult(n uintptr, errno syscall.Errno, frame []byte) error {
	if errno != 0 {
		return errno
	}
	if int(n) != len(frame) {
		return syscall.EMSGSIZE
	}
	return nil
}

// sendmsg sends one frame with files (oob, SCM_RIGHTS).
func (fs *frameServer) sendmsg(frame, oob []byte) error {
	var serr error
	err := fs.whenWritable(func() bool {
		for {
			_, serr = unix.SendmsgN(fs.fd, frame, oob, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
			if serr != unix.EINTR {
				return serr != unix.EAGAIN
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// whenWritable calls try, which makes one non-blocking write and returns
// false if it would block, until it returns true. Only a write that
// would block waits, through a Waiter made for that wait and closed after
// it: a lasting Waiter for writability would wake the process each time
// the core reads a response, the wake-up fdwait exists to avoid: a
// second one per request. Responses to the core may be
// written by several goroutines, each blocked one with its own Waiter; a
// direct channel serves one request at a time, and its end closes the
// Waiter of a write still waiting.
func (fs *frameServer) whenWritable(try func() bool) error {
	if try() {
		return nil
	}
	fs.mu.Lock()
	if fs.ended {
		fs.mu.Unlock()
		return os.ErrClosed
	}
	w, err := fdwait.Writable(fs.fd)
	if err != nil {
		fs.mu.Unlock()
		return err
	}
	if fs.grant != nil {
		fs.writable = w
	}
	fs.mu.Unlock()
	err = w.Wait(try)
	fs.mu.Lock()
	if fs.grant != nil {
		fs.writable = nil
	}
	fs.mu.Unlock()
	w.Close()
	return err
}

// rawSyscall makes a system call of up to four arguments on fd, again
// while it is interrupted (EINTR).
func rawSyscall(trap uintptr, fd int, p unsafe.Pointer, a2, a3 uintptr) (uintptr, syscall.Errno) {
	for {
		r, _, errno := syscall.RawSyscall6(trap, uintptr(fd), uintptr(p), a2, a3, 0, 0)
		if errno != syscall.EINTR {
			return r, errno
		}
	}
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
