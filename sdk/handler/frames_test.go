package handler

import (
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/nsplug/nsplug/wire"
)

// A request over MaxMessageBytes on the frame channel is refused whole,
// with the EIO error naming its size and the limit that a response over
// it gets: no request is decoded from the parts that fitted, and the
// server goes on serving. Over a plain socketpair: the core's end is
// played by the test.
func TestFrameRequestOverTheLimit(t *testing.T) {
	srv, err := newServer(&Plugin{Name: "echo", Handlers: []Handler{Handle("echo.say", "echo", echo)}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	plugin := os.NewFile(uintptr(fds[1]), "frames:plugin")
	defer plugin.Close()
	if err := serveFrames(plugin, srv.log, srv.handle, false); err != nil {
		t.Fatal(err)
	}
	coreEnd := os.NewFile(uintptr(fds[0]), "frames:core")
	c, err := net.FileConn(coreEnd)
	coreEnd.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn := c.(*net.UnixConn)
	conn.SetDeadline(time.Now().Add(60 * time.Second))

	roundTrip := func(id string, req *wire.HandleRequest) *wire.HandleResponse {
		t.Helper()
		msg, _ := proto.Marshal(req)
		parts := wire.Split(msg)
		for i, p := range parts {
			kind := wire.FrameRequestPart
			if i == len(parts)-1 {
				kind = wire.FrameRequest
			}
			frame, _ := wire.AppendFrame(nil, kind, id, p)
			if _, err := conn.Write(frame); err != nil {
				t.Fatalf("request %s: %v", id, err)
			}
		}
		var body []byte
		buf := make([]byte, wire.MaxFrame)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("response to %s: %v", id, err)
			}
			kind, got, part, err := wire.ParseFrame(buf[:n])
			if err != nil || got != id {
				t.Fatalf("response to %s: frame %q, %v", id, got, err)
			}
			body = append(body, part...)
			if kind == wire.FrameResponse {
				break
			}
		}
		resp := &wire.HandleResponse{}
		if err := proto.Unmarshal(body, resp); err != nil {
			t.Fatalf("response to %s: %v", id, err)
		}
		return resp
	}

	// Each would be a valid request within the limit; only its size is
	// wrong. The first goes over in its final frame, the second already
	// in a part frame (the parts after it were once dropped and the
	// final one appended to what was kept).
	for i, extra := range []int{1, 3 * wire.MaxFrameBody} {
		id := strconv.Itoa(i + 1)
		big := &wire.HandleRequest{Type: "echo.say", RequestId: id,
			Payload: []byte(`{"text":"` + strings.Repeat("x", MaxMessageBytes+extra) + `"}`)}
		size := proto.Size(big)
		resp := roundTrip(id, big)
		want := "request of " + strconv.Itoa(size) + " bytes exceeds the 64 MiB limit of one message"
		if e := resp.Error; e == nil || syscall.Errno(e.Errno) != syscall.EIO || !strings.Contains(e.Message, want) {
			t.Errorf("request of %d bytes: %.200v, want EIO and %q", size, resp, want)
		}
	}
	// The next request, on the same channel, is served.
	resp := roundTrip("3", &wire.HandleRequest{Type: "echo.say", RequestId: "3", Payload: []byte(`{"text":"hi"}`)})
	if resp.Error != nil || string(resp.Payload) != `{"text":"hi"}` {
		t.Errorf("after an oversized request: %+v", resp)
	}
}
