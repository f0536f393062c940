// Package pluginpb is the wire contract between the nsplug core and its
// plugins: plugin.proto (the Handler service, generated here by `make
// proto`) and the frame channel below, which carries the same messages
// faster and with file descriptors.
package pluginpb

// The frame channel: a faster path than gRPC for Handle.
//
// gRPC costs most of a warm request (a go-plugin gRPC call takes ~170 µs
// on a small machine; a unix-socket round trip ~12 µs), and it cannot carry
// file descriptors. So every instance also gets a SOCK_SEQPACKET socketpair
// (nsexec fd 6 in the plugin). On it, each message is one frame:
//
//	byte 0      kind (Frame* below)
//	byte 1      n, the length of the request id
//	bytes 2..   the request id (n bytes), then the body
//
// A request is sent as zero or more FrameRequestPart frames and one
// FrameRequest frame whose bodies, concatenated, are a protobuf
// HandleRequest; a response likewise as FrameResponsePart frames and one
// FrameResponse, a protobuf HandleResponse, with the handler's files as
// SCM_RIGHTS on the final frame. FrameCancel asks the plugin to cancel the
// request's context. FrameFiles carries the files of a response that went
// through gRPC (its body is empty). Frames of different requests may
// interleave; the channel is full duplex and requests run concurrently.
//
// A plugin announces the channel with DescribeResponse.frames; the core
// falls back to gRPC for plugins that do not.

import (
	"errors"
)

// Frame kinds.
const (
	FrameRequestPart  byte = 1
	FrameRequest      byte = 2
	FrameResponsePart byte = 3
	FrameResponse     byte = 4
	FrameCancel       byte = 5
	FrameFiles        byte = 6
)

// MaxFrameBody is the largest body one frame carries; bigger messages are
// split. It keeps every frame within a socket's default send buffer.
const MaxFrameBody = 60 << 10

// MaxFrame is the largest frame, header included.
const MaxFrame = 2 + 255 + MaxFrameBody

// AppendFrame appends one frame to dst.
func AppendFrame(dst []byte, kind byte, id string, body []byte) ([]byte, error) {
	if len(id) > 255 {
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
