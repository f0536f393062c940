// Package fast is the fast path of the nsplug node API: a minimal
// synchronous protocol for Call on the daemon's own unix socket, beside
// gRPC (README.md in this directory is its specification). The daemon
// (package server) tells the two apart by a connection's first bytes; this
// package holds the protocol's constants and codec, used by both ends, and
// the Go client (Dial).
//
// A request and its reply are nsplug.api.v1 messages (api/v1) carried as
// frames of the plugin contract's codec (wire/frame.go), each preceded by
// its length: one codec for both. The package links no gRPC server or
// client code of its own.
package fast

import (
	"bufio"
	"encoding/binary"
	"io"
	"slices"
	"syscall"

	"github.com/nsplug/nsplug/wire"
)

// Preface opens a fast-path connection: the client sends it first, and the
// daemon answers with the same bytes before it serves anything. An HTTP/2
// client's first bytes ("PRI * HTTP/2.0...") differ from its first byte on.
const Preface = "NSPLUG-FAST/1\n"

// The fast path's own frame kinds, client → daemon, beside the frame
// channel's (wire): each message is one final frame, never split.
const (
	// FrameOpenChannel asks for a direct channel: its body is a
	// CallRequest (its payload unused); the reply's details hold a
	// ChannelGrant, its socket comes with it (SCM_RIGHTS).
	FrameOpenChannel byte = 7
	// FrameCloseChannel closes a channel the connection opened: its body
	// is the ChannelGrant's id, in decimal.
	FrameCloseChannel byte = 8
)

// lenSize is the size of the big-endian length before each frame.
const lenSize = 4

// AppendMessage appends msg (a protobuf message) of request id, as frames
// of kind final and its part kind (wire.Send), each preceded by its length.
func AppendMessage(dst []byte, final byte, id string, msg []byte) ([]byte, error) {
	err := wire.Send(func(frame, _ []byte) error {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(frame)))
		dst = append(dst, frame...)
		return nil
	}, final, id, msg, nil)
	return dst, err
}

// partOf is the part kind of a final kind.
func partOf(final byte) byte {
	if final == wire.FrameRequest {
		return wire.FrameRequestPart
	}
	return wire.FrameResponsePart
}

// A ProtocolError is a peer's breach of the framing (a frame too long or
// too short, of the wrong kind or request id, a message over
// wire.MaxMessageBytes): the stream cannot be read further, and the
// connection is to be closed. Err is a *wire.Error (EPROTO; EIO for a
// message too large, as on the frame channel).
type ProtocolError struct{ Err *wire.Error }

func (e *ProtocolError) Error() string { return e.Err.Error() }
func (e *ProtocolError) Unwrap() error { return e.Err }

func breach(errno syscall.Errno, format string, args ...any) error {
	return &ProtocolError{wire.Errorf(errno, "nsplug fast path: "+format, args...)}
}

// MaxMessage bounds one message either way: a request or a response of
// the contract's largest (wire.MaxMessageBytes) with room for the fields
// around it, as the daemon's gRPC service bounds its messages.
const MaxMessage = wire.MaxMessageBytes + 1<<20

// Reader reads the messages of one direction of a connection.
type Reader struct {
	r       *bufio.Reader
	frame   []byte // the frame being read; grows
	limit   int    // the largest message; 0: MaxMessage
	setting string // names limit in the error, when set
}

// NewReader reads messages from r (buffered: one read(2) usually takes a
// whole small message).
func NewReader(r io.Reader) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, readBuffer)}
}

// readBuffer is a Reader's buffer: a small call in one read(2). It is
// small because the daemon makes a Reader per connection, and a whole
// `nsplug call` is one connection: two buffers of a frame's size cost
// each connection 120 KiB to allocate and clear (a third of the daemon's
// CPU per connection, with the collections they caused). A frame longer
// than the buffer is read past it, into Reader.frame, which grows to the
// longest frame yet.
const readBuffer = 4 << 10

// Limit lowers the largest message Read takes to n bytes (at most
// MaxMessage), and names where it comes from in the error of a message
// over it (setting: "server.max_user_request_bytes"; may be empty).
func (r *Reader) Limit(n int, setting string) {
	r.limit, r.setting = min(n, MaxMessage), setting
}

// ReadPreface reads the peer's first bytes and reports whether they are
// the Preface.
func (r *Reader) ReadPreface() (bool, error) {
	var got [len(Preface)]byte
	_, err := io.ReadFull(r.r, got[:])
	return err == nil && string(got[:]) == Preface, err
}

// Read reads one message of kind final (wire.FrameRequest or
// wire.FrameResponse) and returns its request id and bytes. io.EOF means
// the peer closed the connection between messages; an io error inside a
// message is io.ErrUnexpectedEOF or the error itself; a breach of the
// framing is a *ProtocolError: EINVAL in a request, EPROTO in a
// response, EIO for a message over MaxMessage (refused as soon as it is
// known to be: nothing more of it is read).
func (r *Reader) Read(final byte) (id string, msg []byte, err error) {
	_, id, msg, err = r.read(final)
	return id, msg, err
}

// ReadRequest is Read of a request, which may also be one of the fast
// path's own (FrameOpenChannel, FrameCloseChannel); kind says which.
func (r *Reader) ReadRequest() (kind byte, id string, msg []byte, err error) {
	return r.read(wire.FrameRequest, FrameOpenChannel, FrameCloseChannel)
}

// read reads one message of kind final, or of one of the kinds single,
// which are never split.
func (r *Reader) read(final byte, single ...byte) (kind byte, id string, msg []byte, err error) {
	what, errno := "request", syscall.EINVAL
	if final == wire.FrameResponse {
		what, errno = "response", syscall.EPROTO
	}
	size := 0
	for first := true; ; first = false {
		var head [lenSize]byte
		if _, err := io.ReadFull(r.r, head[:]); err != nil {
			if !first && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, "", nil, err
		}
		n := binary.BigEndian.Uint32(head[:])
		if n < 2 || n > wire.MaxFrame {
			return 0, "", nil, breach(errno, "%s: a frame of %d bytes (want 2 to %d)", what, n, wire.MaxFrame)
		}
		if int(n) > cap(r.frame) {
			r.frame = make([]byte, n)
		}
		frame := r.frame[:n]
		if _, err := io.ReadFull(r.r, frame); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, "", nil, err
		}
		k, fid, body, err := wire.ParseFrame(frame)
		if err != nil {
			return 0, "", nil, breach(errno, "%s: %v", what, err)
		}
		if first && slices.Contains(single, k) {
			return k, fid, append([]byte{}, body...), nil
		}
		if k != final && k != partOf(final) {
			return 0, "", nil, breach(errno, "%s: a frame of kind %d (want %d or %d)", what, k, partOf(final), final)
		}
		if first {
			id = fid
		} else if fid != id {
			return 0, "", nil, breach(errno, "%s: a frame of request %q inside the message of request %q", what, fid, id)
		}
		if size += len(body); r.limit > 0 && size > r.limit {
			return 0, "", nil, &ProtocolError{tooLarge(what, size, r.limit, r.setting)}
		} else if size > MaxMessage {
			return 0, "", nil, &ProtocolError{TooLarge(what, size)}
		}
		msg = append(msg, body...)
		if k == final {
			if msg == nil {
				msg = []byte{}
			}
			return k, id, msg, nil
		}
	}
}

// TooLarge is the EIO error of a message over MaxMessage, of which n bytes
// came (or would go).
func TooLarge(what string, n int) *wire.Error { return tooLarge(what, n, MaxMessage, "") }

func tooLarge(what string, n, limit int, setting string) *wire.Error {
	if setting != "" {
		setting = ", " + setting
	}
	return wire.Errorf(syscall.EIO, "nsplug fast path: %s of %d bytes or more exceeds the limit of one message (%d bytes%s)", what, n, limit, setting)
}
