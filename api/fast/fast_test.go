package fast

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/nsplug/nsplug/wire"
)

// A message goes out as frames of at most wire.MaxFrameBody, each with its
// length, and comes back whole, with its id; an empty one is one frame.
func TestMessageRoundTrip(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789"), wire.MaxFrameBody/4)
	var stream []byte
	var err error
	for i, msg := range [][]byte{big, nil, []byte("x")} {
		if stream, err = AppendMessage(stream, wire.FrameRequest, strings.Repeat("i", i), msg); err != nil {
			t.Fatal(err)
		}
	}
	r := NewReader(bytes.NewReader(stream))
	for i, want := range [][]byte{big, {}, []byte("x")} {
		id, msg, err := r.Read(wire.FrameRequest)
		if err != nil || id != strings.Repeat("i", i) || !bytes.Equal(msg, want) || msg == nil {
			t.Fatalf("message %d: id %q, %d bytes, %v", i, id, len(msg), err)
		}
	}
	if _, _, err := r.Read(wire.FrameRequest); err != io.EOF {
		t.Errorf("after the last message: %v, want EOF", err)
	}
}

// What breaks the framing is a ProtocolError with its errno; a stream cut
// inside a message is io.ErrUnexpectedEOF.
func TestReadBreaches(t *testing.T) {
	frame := func(kind byte, id string, body []byte) []byte {
		b, err := AppendMessage(nil, kind, id, body)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	part := func(id string, n int) []byte {
		f, _ := wire.AppendFrame(nil, wire.FrameRequestPart, id, make([]byte, n))
		return append([]byte{byte(len(f) >> 24), byte(len(f) >> 16), byte(len(f) >> 8), byte(len(f))}, f...)
	}
	for _, c := range []struct {
		name   string
		stream []byte
		final  byte
		errno  syscall.Errno
		want   string
	}{
		{"too long", []byte{0, 1, 0, 0}, wire.FrameRequest, syscall.EINVAL, "a frame of 65536 bytes"},
		{"too short", []byte{0, 0, 0, 0}, wire.FrameRequest, syscall.EINVAL, "a frame of 0 bytes"},
		{"kind", frame(wire.FrameResponse, "", nil), wire.FrameRequest, syscall.EINVAL, "kind 4"},
		{"kind in a response", frame(wire.FrameRequest, "", nil), wire.FrameResponse, syscall.EPROTO, "response: a frame of kind 2"},
		{"ids", append(part("a", 1), frame(wire.FrameRequest, "b", nil)...), wire.FrameRequest, syscall.EINVAL, `request "b" inside the message of request "a"`},
		{"too large", bytes.Repeat(part("", wire.MaxFrameBody), MaxMessage/wire.MaxFrameBody+1), wire.FrameRequest, syscall.EIO, "exceeds the limit"},
	} {
		_, _, err := NewReader(bytes.NewReader(c.stream)).Read(c.final)
		var pe *ProtocolError
		if !errors.As(err, &pe) || pe.Err.Errno != c.errno || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %v naming %q", c.name, err, c.errno, c.want)
		}
	}
	if _, _, err := NewReader(bytes.NewReader(part("", 3))).Read(wire.FrameRequest); err != io.ErrUnexpectedEOF {
		t.Errorf("a message cut short: %v", err)
	}
	if _, _, err := NewReader(bytes.NewReader([]byte{0, 0})).Read(wire.FrameRequest); err != io.ErrUnexpectedEOF {
		t.Errorf("a length cut short: %v", err)
	}
}

// The daemon makes a Reader per connection, and a whole `nsplug call` is
// one connection: a Reader is small until a frame needs more, and a small
// call through it stays small.
func TestReaderIsSmallForSmallCalls(t *testing.T) {
	msg, err := AppendMessage(nil, wire.FrameRequest, "1", []byte("a small request"))
	if err != nil {
		t.Fatal(err)
	}
	const readers = 64
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range readers {
		r := NewReader(bytes.NewReader(msg))
		if _, got, err := r.Read(wire.FrameRequest); err != nil || string(got) != "a small request" {
			t.Fatalf("Read = %q, %v", got, err)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / readers; per > 16<<10 {
		t.Errorf("a Reader that read one small message allocated %d bytes; want at most 16 KiB (a frame's size is %d)", per, wire.MaxFrame)
	}
}
