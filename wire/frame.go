// Package wire is the contract between the nsplug core and its plugins,
// the one place both sides take it from: the control plane (plugin.proto,
// the go-plugin handshake and versioned plugin sets), the frame channel
// that carries every request, its cancellation and its files (this file's
// codec), the
// environment the core hands a plugin, and the limits and validators both
// ends apply. README.md in this directory specifies it normatively, byte
// by byte; nsexec/nsexec.h defines the bootstrap (descriptors, stages).
//
// The core (package core) and the sdk both import wire; neither imports
// the other.
package wire

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// Frame kinds (README.md, "Frame kinds"). Kind 6 was protocol 1's
// FrameFiles, for the files of a response that went through gRPC; it is
// not to be reused.
const (
	FrameRequestPart  byte = 1
	FrameRequest      byte = 2
	FrameResponsePart byte = 3
	FrameResponse     byte = 4
	FrameCancel       byte = 5
)

// MaxFrameBody is the largest body one frame carries; bigger messages are
// split. It keeps every frame within a socket's default send buffer.
const MaxFrameBody = 60 << 10

// MaxRequestID is the longest request id: its length is one byte.
const MaxRequestID = 255

// MaxFrame is the largest frame, header included.
const MaxFrame = 2 + MaxRequestID + MaxFrameBody

// AppendFrame appends one frame to dst.
func AppendFrame(dst []byte, kind byte, id string, body []byte) ([]byte, error) {
	if len(id) > MaxRequestID {
		return nil, errors.New("frame: request id longer than 255 bytes")
	}
	dst = append(dst, kind, byte(len(id)))
	dst = append(dst, id...)
	return append(dst, body...), nil
}

// ParseFrame splits a frame into its kind, request id and body.
func ParseFrame(frame []byte) (kind byte, id string, body []byte, err error) {
	if len(frame) < 2 || len(frame) < 2+int(frame[1]) {
		return 0, "", nil, errors.New("frame: truncated")
	}
	n := int(frame[1])
	return frame[0], string(frame[2 : 2+n]), frame[2+n:], nil
}

// Split cuts a message into frame bodies of at most MaxFrameBody bytes;
// the last one is the final frame's (possibly empty).
func Split(msg []byte) [][]byte {
	var parts [][]byte
	for len(msg) > MaxFrameBody {
		parts = append(parts, msg[:MaxFrameBody])
		msg = msg[MaxFrameBody:]
	}
	return append(parts, msg)
}

// partKind is the kind of the frames before a final frame of kind final:
// only requests and responses are split.
func partKind(final byte) byte {
	switch final {
	case FrameRequest:
		return FrameRequestPart
	case FrameResponse:
		return FrameResponsePart
	}
	return 0
}

// Send sends message msg of request id as frames: part frames, then one
// final frame of kind final (FrameRequest, FrameResponse, or a FrameCancel
// with no body), which alone carries oob (an SCM_RIGHTS
// control message, or nil). write sends one frame, whole (SOCK_SEQPACKET).
// Both ends send through it.
func Send(write func(frame, oob []byte) error, final byte, id string, msg, oob []byte) error {
	if len(msg) <= MaxFrameBody { // one frame, as nearly every message is
		frame, err := AppendFrame(make([]byte, 0, 2+len(id)+len(msg)), final, id, msg)
		if err != nil {
			return err
		}
		return write(frame, oob)
	}
	parts := Split(msg)
	if len(parts) > 1 && partKind(final) == 0 {
		return errors.New("frame: only requests and responses have a body")
	}
	frame := make([]byte, 0, 2+len(id)+len(parts[0]))
	for i, p := range parts {
		kind, rights := partKind(final), []byte(nil)
		if i == len(parts)-1 {
			kind, rights = final, oob
		}
		var err error
		if frame, err = AppendFrame(frame[:0], kind, id, p); err != nil {
			return err
		}
		if err := write(frame, rights); err != nil {
			return err
		}
	}
	return nil
}

// Message collects the frame bodies of one message as they arrive. Past
// MaxMessageBytes its bytes are only counted: the message is refused
// whole, naming its size (TooLarge), rather than decoded from the parts
// that fitted.
type Message struct {
	Body []byte // the bytes so far; nil once too large
	Size int    // bytes received, kept or not
	Max  int    // the limit, when below MaxMessageBytes; 0: MaxMessageBytes
}

func (m *Message) limit() int {
	if m.Max > 0 && m.Max < MaxMessageBytes {
		return m.Max
	}
	return MaxMessageBytes
}

// Add appends one frame's body (a copy: the caller's buffer is reused).
func (m *Message) Add(part []byte) {
	m.Size += len(part)
	if m.Size > m.limit() {
		m.Body = nil
	} else {
		m.Body = append(m.Body, part...)
	}
}

// TooLarge reports whether the message exceeds its limit.
func (m *Message) TooLarge() bool { return m.Size > m.limit() }

// ParseRights is the files of a received frame's control message (oob,
// as recvmsg(2) filled it): the SCM_RIGHTS descriptors, named name.
func ParseRights(oob []byte, name string) []*os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var files []*os.File
	for _, m := range msgs {
		fds, _ := unix.ParseUnixRights(&m)
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), name))
		}
	}
	return files
}
