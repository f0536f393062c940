package fast

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/wire"
)

// ErrNotSpoken is the error of a Call to a daemon that does not speak the
// fast path (its first bytes were not the Preface): it served nothing of
// the request, which may go through gRPC instead.
var ErrNotSpoken = errors.New("the daemon does not speak the nsplug fast path")

// A Client is one fast-path connection to the daemon. Its calls are
// served one at a time, in order (concurrent Calls wait their turn); a
// client with calls to make in parallel dials one connection each.
type Client struct {
	mu      sync.Mutex
	conn    *net.UnixConn
	rights  *rightsReader
	r       *Reader
	buf     []byte
	body    []byte // the request's encoding, reused
	sent    bool   // the preface was sent
	greeted bool   // the daemon's preface was read
	next    int    // request ids: decimal, from 1
	broken  error  // once set, every Call fails with it
}

// SocketPath is the socket of a daemon address, "unix:///PATH" (the form
// of nsplug's --addr and NSPLUG_ADDR).
func SocketPath(addr string) (string, error) {
	path, ok := strings.CutPrefix(addr, "unix://")
	if !ok || !filepath.IsAbs(path) {
		return "", fmt.Errorf("daemon address %q: want unix:///PATH, the absolute path of its socket", addr)
	}
	return path, nil
}

// Dial connects to the daemon at addr, "unix:///PATH" (SocketPath); a
// malformed address is an error that is no *wire.Error. It sends nothing:
// the preface goes with the first request.
func Dial(addr string) (*Client, error) {
	path, err := SocketPath(addr)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, daemonError(err)
	}
	return NewClient(conn), nil
}

// NewClient is a Client on conn, a new connection to the daemon's socket
// (one made by another process, say, and passed on: the daemon knows the
// caller as the process that connected).
func NewClient(conn *net.UnixConn) *Client {
	rr := &rightsReader{conn: conn, oob: make([]byte, unix.CmsgSpace(wire.MaxFiles*4))}
	return &Client{conn: conn, rights: rr, r: NewReader(rr)}
}

// Close closes the connection; a Call in flight ends (the daemon cancels
// its request).
func (c *Client) Close() error { return c.conn.Close() }

// Call runs one request and returns the handler's response and the files
// it handed back (the caller's to close). A failure is the *wire.Error the
// daemon's core returned, with its errno, as an in-process caller gets it
// (the gRPC code is the errno's: server.CodeOf); ErrNotSpoken when the
// daemon does not speak the fast path. Cancelling ctx (or its deadline)
// closes the connection, which ends the request in the daemon; the Client
// is then done.
func (c *Client) Call(ctx context.Context, req *apiv1.CallRequest) (*apiv1.CallResponse, []*os.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	body := appendCallRequest(c.body[:0], req)
	if cap(body) <= 1<<16 {
		c.body = body
	}
	if len(body) > MaxMessage {
		return nil, nil, TooLarge("request", len(body))
	}
	status, files, err := c.roundTrip(ctx, wire.FrameRequest, body)
	if err != nil {
		return nil, nil, err
	}
	resp, err := decodeReply(status)
	if err != nil {
		closeFiles(files)
		return nil, nil, err
	}
	return resp, files, nil
}

// roundTrip sends one message of kind and reads its reply, with mu held.
func (c *Client) roundTrip(ctx context.Context, kind byte, body []byte) (replyStatus, []*os.File, error) {
	if c.broken != nil {
		return replyStatus{}, nil, c.broken
	}
	c.next++
	id := strconv.Itoa(c.next)
	buf := c.buf[:0]
	if !c.sent {
		buf = append(buf, Preface...)
	}
	buf, err := AppendMessage(buf, kind, id, body)
	if err != nil {
		return replyStatus{}, nil, wire.Errorf(syscall.EINVAL, "request: %v", err)
	}
	if cap(buf) <= 1<<16 {
		c.buf = buf
	}
	// Closing the connection is how a fast-path client cancels.
	stop := context.AfterFunc(ctx, func() { c.conn.Close() })
	status, files, err := c.exchange(buf, id)
	if !stop() {
		closeFiles(files)
		c.broken = wire.Errorf(syscall.ECANCELED, "nsplug daemon: the connection was closed when a call was cancelled")
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return replyStatus{}, nil, wire.Errorf(syscall.ETIMEDOUT, "nsplug daemon: %v", ctx.Err())
		}
		return replyStatus{}, nil, wire.Errorf(syscall.ECANCELED, "nsplug daemon: %v", ctx.Err())
	}
	if err != nil {
		closeFiles(files)
		if !errors.Is(err, ErrNotSpoken) {
			err = daemonError(err)
		}
		c.broken = err
		return replyStatus{}, nil, err
	}
	return status, files, nil
}

// OpenChannel asks the daemon for a direct channel (README.md,
// "Channels") for requests of req's type to req's target, with its
// namespaces, credentials and timeout (its payload is not used). The
// daemon authorizes it as it would a Call of that type to that target;
// a type that changes state is refused (EOPNOTSUPP: each of its calls is
// audited, so they go through Call). The channel lives until it is
// closed or revoked, and at the latest until this connection closes.
func (c *Client) OpenChannel(ctx context.Context, req *apiv1.CallRequest) (*Channel, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	tmpl := &apiv1.CallRequest{Target: req.Target, Type: req.Type, Namespaces: req.Namespaces, Credentials: req.Credentials, Timeout: req.Timeout}
	status, files, err := c.roundTrip(ctx, FrameOpenChannel, appendCallRequest(nil, tmpl))
	if err != nil {
		return nil, err
	}
	if status.code != 0 {
		closeFiles(files)
		_, err := decodeReply(status)
		return nil, err
	}
	var grant *apiv1.ChannelGrant
	if len(status.details) == 1 && status.details[0].name == channelGrantName {
		grant, err = decodeChannelGrant(status.details[0].value)
	}
	if grant == nil || err != nil || len(files) != 1 {
		closeFiles(files)
		return nil, wire.Errorf(syscall.EPROTO, "nsplug daemon: a channel's reply without its grant and socket")
	}
	ch := NewChannel(files[0], grant.Type)
	ch.id, ch.client = grant.Id, c
	return ch, nil
}

// closeChannel tells the daemon a channel is closed (best effort: a
// broken connection has revoked it already).
func (c *Client) closeChannel(id uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken == nil {
		c.roundTrip(context.Background(), FrameCloseChannel, strconv.AppendUint(nil, id, 10))
	}
}

// exchange sends one request and reads its reply and files.
func (c *Client) exchange(buf []byte, id string) (replyStatus, []*os.File, error) {
	if _, err := c.conn.Write(buf); err != nil {
		if !c.greeted {
			return replyStatus{}, nil, notSpoken(err)
		}
		return replyStatus{}, nil, err
	}
	c.sent = true
	if !c.greeted {
		if ok, err := c.r.ReadPreface(); !ok {
			if err == nil {
				err = errors.New("its first bytes are not the preface")
			}
			return replyStatus{}, nil, notSpoken(err)
		}
		c.greeted = true
	}
	rid, msg, err := c.r.Read(wire.FrameResponse)
	files := c.rights.take()
	if err == nil && c.rights.truncated {
		err = wire.Errorf(syscall.EIO, "nsplug daemon: the reply's files did not fit (more than %d)", wire.MaxFiles)
	}
	// An empty id is the daemon's answer to a breach of the protocol,
	// before it closes: its error is the call's.
	if err == nil && rid != id && rid != "" {
		err = wire.Errorf(syscall.EPROTO, "nsplug daemon: the reply to request %q came for %q", id, rid)
	}
	if err != nil {
		return replyStatus{}, files, err
	}
	st, err := decodeStatus(msg)
	if err != nil {
		return replyStatus{}, files, wire.Errorf(syscall.EPROTO, "nsplug daemon: a reply that does not decode: %v", err)
	}
	return st, files, nil
}

// Full names of the messages a reply's details hold.
const (
	callResponseName = "nsplug.api.v1.CallResponse"
	channelGrantName = "nsplug.api.v1.ChannelGrant"
	errorName        = "nsplug.api.v1.Error"
)

// decodeReply is the response of a reply, or its error as the core's.
func decodeReply(st replyStatus) (*apiv1.CallResponse, error) {
	if st.code == 0 {
		if len(st.details) == 1 && st.details[0].name == callResponseName {
			if resp, err := decodeCallResponse(st.details[0].value); err == nil {
				return resp, nil
			}
		}
		return nil, wire.Errorf(syscall.EPROTO, "nsplug daemon: a successful reply without its CallResponse")
	}
	for _, d := range st.details {
		if d.name != errorName {
			continue
		}
		if e, err := decodeError(d.value); err == nil {
			return nil, &wire.Error{Errno: syscall.Errno(e.Errno), Message: e.Message}
		}
	}
	return nil, wire.Errorf(syscall.EIO, "nsplug daemon: %s (gRPC code %d)", st.message, st.code)
}

func notSpoken(err error) error { return fmt.Errorf("%w: %v", ErrNotSpoken, err) }

// daemonError is an error of the connection as a *wire.Error, with the
// errno the system gave (ENOENT: no socket; ECONNREFUSED: nobody serves).
func daemonError(err error) error {
	if e, ok := err.(*wire.Error); ok {
		return e
	}
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return pe.Err
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		errno = syscall.ECONNRESET
	}
	return wire.Errorf(errno, "nsplug daemon: %v", err)
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}

// rightsReader reads the connection with recvmsg(2), keeping the
// descriptors that come with the bytes (SCM_RIGHTS; close-on-exec, which
// Go's ReadMsgUnix asks for).
type rightsReader struct {
	conn      *net.UnixConn
	oob       []byte
	fds       []int
	truncated bool
}

func (r *rightsReader) Read(p []byte) (int, error) {
	n, oobn, flags, _, err := r.conn.ReadMsgUnix(p, r.oob)
	if oobn > 0 {
		if msgs, perr := unix.ParseSocketControlMessage(r.oob[:oobn]); perr == nil {
			for _, m := range msgs {
				if fds, err := unix.ParseUnixRights(&m); err == nil {
					r.fds = append(r.fds, fds...)
				}
			}
		}
	}
	if flags&unix.MSG_CTRUNC != 0 {
		r.truncated = true
	}
	if n < 0 { // on an error
		n = 0
	}
	if n == 0 && err == nil && len(p) > 0 {
		err = io.EOF
	}
	return n, err
}

// take returns the files received so far, which are then the caller's.
func (r *rightsReader) take() []*os.File {
	var files []*os.File
	for _, fd := range r.fds {
		files = append(files, os.NewFile(uintptr(fd), "nsplug-file"))
	}
	r.fds = r.fds[:0]
	return files
}
