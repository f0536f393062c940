package handler

import (
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
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
	conn := echoFrameServer(t, nil)

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

// echoFrameServer serves an echo plugin's frame channel over a plain
// socketpair and returns the core's end, whose part the test plays.
func echoFrameServer(t testing.TB, served func()) *net.UnixConn {
	t.Helper()
	srv, err := newServer(&Plugin{Name: "echo", Handlers: []Handler{Handle("echo.say", "echo", echo)}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	plugin := os.NewFile(uintptr(fds[1]), "frames:plugin")
	t.Cleanup(func() { plugin.Close() })
	if err := serveFrames(plugin, srv.log, srv.handle, false, served); err != nil {
		t.Fatal(err)
	}
	coreEnd := os.NewFile(uintptr(fds[0]), "frames:core")
	c, err := net.FileConn(coreEnd)
	coreEnd.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	conn := c.(*net.UnixConn)
	conn.SetDeadline(time.Now().Add(60 * time.Second))

	return conn
}

// The hook after each response (the sdk applies wire.EnvGOGC from the
// first one on) runs once per response, after it was sent.
func TestFrameServerCallsServedAfterEachResponse(t *testing.T) {
	var n atomic.Int32
	conn := echoFrameServer(t, func() { n.Add(1) })
	buf := make([]byte, wire.MaxFrame)
	for i := 1; i <= 3; i++ {
		msg, _ := proto.Marshal(&wire.HandleRequest{Type: "echo.say", Payload: []byte(`{}`), RequestId: strconv.Itoa(i)})
		frame, _ := wire.AppendFrame(nil, wire.FrameRequest, strconv.Itoa(i), msg)
		if _, err := conn.Write(frame); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Read(buf); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); n.Load() < int32(i) && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		if got := n.Load(); got != int32(i) {
			t.Fatalf("after %d responses the hook ran %d times", i, got)
		}
	}
}

// levelWritabilityWaits counts the epoll registrations in this process
// that wait, level-triggered, for a descriptor to be writable: what
// fdwait.Writable makes (the runtime's own are edge-triggered).
func levelWritabilityWaits(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fdinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		b, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) < 4 || f[0] != "tfd:" || f[2] != "events:" {
				continue
			}
			ev, err := strconv.ParseUint(f[3], 16, 32)
			if err == nil && ev&unix.EPOLLOUT != 0 && ev&unix.EPOLLET == 0 {
				n++
			}
		}
	}
	return n
}

// A response is written at once; only a write that would block waits for
// the socket to be writable, and nothing waits for that once it is
// written. (A lasting wait woke the handler each time the core read a
// response: two wake-ups per request instead of one.) Responses that
// fill the socket all arrive once the core reads them.
func TestFrameServerWaitsForWritabilityOnlyWhileBlocked(t *testing.T) {
	conn := echoFrameServer(t, nil)
	buf := make([]byte, wire.MaxFrame)
	request := func(id, text string) {
		t.Helper()
		msg, _ := proto.Marshal(&wire.HandleRequest{Type: "echo.say", Payload: []byte(`{"text":"` + text + `"}`), RequestId: id})
		frame, err := wire.AppendFrame(nil, wire.FrameRequest, id, msg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write(frame); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		request(strconv.Itoa(i), "hi")
		if _, err := conn.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	if n := levelWritabilityWaits(t); n != 0 {
		t.Fatalf("after three answered requests, %d waits for writability remain", n)
	}

	// Twenty 40 KB answers do not fit in the socket's buffer: the
	// server's writes block until the test reads.
	const many = 20
	big := strings.Repeat("x", 40<<10)
	for i := 0; i < many; i++ {
		request("big"+strconv.Itoa(i), big)
	}
	for deadline := time.Now().Add(10 * time.Second); levelWritabilityWaits(t) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no write of twenty 40 KB answers waited for the socket")
		}
		time.Sleep(time.Millisecond)
	}
	got := map[string]bool{}
	for len(got) < many {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		kind, id, body, err := wire.ParseFrame(buf[:n])
		if err != nil || kind != wire.FrameResponse {
			t.Fatalf("frame kind %d, %v", kind, err)
		}
		resp := &wire.HandleResponse{}
		if err := proto.Unmarshal(body, resp); err != nil || resp.Error != nil || len(resp.Payload) < len(big) {
			t.Fatalf("response %s: %v %v (%d bytes)", id, err, resp.Error, len(resp.Payload))
		}
		got[id] = true
	}
	for deadline := time.Now().Add(10 * time.Second); levelWritabilityWaits(t) != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d waits for writability remain after every answer was read", levelWritabilityWaits(t))
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkFrameRoundTrip is one request and its response through the
// frame server, in process: allocs/op is what a request allocates (the
// core's side here is one write and one read), which the GC pays for.
func BenchmarkFrameRoundTrip(b *testing.B) {
	conn := echoFrameServer(b, nil)
	msg, _ := proto.Marshal(&wire.HandleRequest{Type: "echo.say", Payload: []byte(`{"text":"hello"}`), RequestId: "1"})
	frame, _ := wire.AppendFrame(nil, wire.FrameRequest, "1", msg)
	buf := make([]byte, wire.MaxFrame)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := conn.Write(frame); err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
}
