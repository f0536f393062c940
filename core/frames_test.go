package core

import (
	"context"
	"io"
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

// A plugin that answers with more than wire.MaxMessageBytes on the frame
// channel gets an error naming the size and the limit, once, and no
// partial message is ever decoded. Over a plain socketpair: the plugin end
// is played by the test.
func TestFrameResponseOverTheLimit(t *testing.T) {
	c, plugin := newScriptedChannel(t)
	big := &wire.HandleResponse{RequestId: "1", Payload: make([]byte, wire.MaxMessageBytes+1)}
	resp, _ := proto.Marshal(big)
	go func() {
		buf := make([]byte, wire.MaxFrame)
		if _, err := plugin.conn.Read(buf); err != nil { // the request
			return
		}
		parts := wire.Split(resp)
		for i, p := range parts {
			kind := wire.FrameResponsePart
			if i == len(parts)-1 {
				kind = wire.FrameResponse
			}
			if plugin.send(kind, "1", p) != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _, err := c.roundTrip(ctx, &wire.HandleRequest{RequestId: "1", Type: "x.y"})
	want := "response of " + strconv.Itoa(len(resp)) + " bytes exceeds the 64 MiB limit"
	if err == nil || !strings.Contains(err.Error(), want) || strings.Count(err.Error(), "(EIO)") != 1 {
		t.Fatalf("err %v, want %q and one (EIO)", err, want)
	}
	if errnoOf(err) != syscall.EIO {
		t.Errorf("errno %v", errnoOf(err))
	}
	// Wrapped the way a failed call is reported, it still names EIO once.
	if wrapped := errorf(syscall.EIO, "plugin p (pid 1): x.y: %v", err); strings.Count(wrapped.Error(), "(EIO)") != 1 {
		t.Errorf("wrapped: %v", wrapped)
	}
}

// The tests below play the plugin's end of the frame channel over the
// plain socketpair newFrameConn makes, and drive the core's end through
// roundTrip and close only. The frame codec is reached only through
// peerFrame and parsePeerFrame, so that they follow the codec wherever
// it lives.

// peerFrame encodes one frame as the plugin sends it.
func peerFrame(t *testing.T, kind byte, id string, body []byte) []byte {
	t.Helper()
	f, err := wire.AppendFrame(nil, kind, id, body)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// parsePeerFrame decodes one frame as the plugin receives it.
func parsePeerFrame(t *testing.T, frame []byte) (kind byte, id string, body []byte) {
	t.Helper()
	kind, id, body, err := wire.ParseFrame(frame)
	if err != nil {
		t.Fatal(err)
	}
	return kind, id, body
}

// scriptedPlugin is the plugin's end of a frame channel, played by a test.
type scriptedPlugin struct {
	t       *testing.T
	conn    *net.UnixConn
	pending map[string][]byte // request bodies still arriving
}

func newScriptedChannel(t *testing.T) (*frameConn, *scriptedPlugin) {
	t.Helper()
	c, end, err := newFrameConn()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.close)
	conn, err := net.FileConn(end)
	end.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return c, &scriptedPlugin{t: t, conn: conn.(*net.UnixConn), pending: make(map[string][]byte)}
}

// next reads the next frame from the core.
func (p *scriptedPlugin) next() (kind byte, id string, body []byte) {
	p.t.Helper()
	buf := make([]byte, wire.MaxFrame)
	p.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := p.conn.Read(buf)
	if err != nil {
		p.t.Fatalf("plugin end: reading a frame: %v", err)
	}
	return parsePeerFrame(p.t, buf[:n])
}

// request reads frames until a whole request is in, and returns it.
func (p *scriptedPlugin) request() *wire.HandleRequest {
	p.t.Helper()
	for {
		kind, id, body := p.next()
		p.pending[id] = append(p.pending[id], body...)
		switch kind {
		case wire.FrameRequestPart:
			continue
		case wire.FrameRequest:
		default:
			p.t.Fatalf("plugin end: frame kind %d for %s, want a request", kind, id)
		}
		req := &wire.HandleRequest{}
		if err := proto.Unmarshal(p.pending[id], req); err != nil || req.RequestId != id {
			p.t.Fatalf("plugin end: request %s: %v (id %q)", id, err, req.RequestId)
		}
		delete(p.pending, id)
		return req
	}
}

// send writes one frame, with files as SCM_RIGHTS.
func (p *scriptedPlugin) send(kind byte, id string, body []byte, files ...*os.File) error {
	var fds []int
	for _, f := range files {
		fds = append(fds, int(f.Fd()))
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := p.conn.WriteMsgUnix(peerFrame(p.t, kind, id, body), oob, nil)
	return err
}

// responseParts encodes a response and splits it into frame bodies.
func responseParts(t *testing.T, resp *wire.HandleResponse) [][]byte {
	t.Helper()
	msg, err := proto.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	return wire.Split(msg)
}

// respond sends a whole response, files on its final frame.
func (p *scriptedPlugin) respond(resp *wire.HandleResponse, files ...*os.File) {
	p.t.Helper()
	parts := responseParts(p.t, resp)
	for i, part := range parts {
		kind, fs := wire.FrameResponsePart, []*os.File(nil)
		if i == len(parts)-1 {
			kind, fs = wire.FrameResponse, files
		}
		if err := p.send(kind, resp.RequestId, part, fs...); err != nil {
			p.t.Fatalf("plugin end: %v", err)
		}
	}
}

type roundTripped struct {
	resp  *wire.HandleResponse
	files []*os.File
	err   error
}

// goRoundTrip sends a request in a goroutine; the outcome arrives on the
// channel.
func goRoundTrip(ctx context.Context, c *frameConn, id string, payload []byte) <-chan roundTripped {
	ch := make(chan roundTripped, 1)
	go func() {
		resp, files, err := c.roundTrip(ctx, &wire.HandleRequest{RequestId: id, Type: "x.y", Payload: payload})
		ch <- roundTripped{resp, files, err}
	}()
	return ch
}

func outcome(t *testing.T, ch <-chan roundTripped) roundTripped {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("roundTrip has not returned after 10s")
		return roundTripped{}
	}
}

// watchedPipe is a pipe whose write end is handed to the core: once every
// copy of it is closed, EOF on the read end proves the core closed its own
// (no fd leaked).
func watchedPipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// wantClosedEverywhere closes the test's copy of w and waits for EOF on r.
func wantClosedEverywhere(t *testing.T, r, w *os.File, what string) {
	t.Helper()
	w.Close()
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("%s: the core still holds a received fd (read: %d, %v)", what, n, err)
	}
}

// cancelledRequest sends request id, cancels it once the plugin has it,
// and checks that a cancel frame for it follows.
func (p *scriptedPlugin) cancelledRequest(c *frameConn, id string) <-chan roundTripped {
	p.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p.t.Cleanup(cancel)
	call := goRoundTrip(ctx, c, id, nil)
	p.request()
	cancel()
	if kind, got, _ := p.next(); kind != wire.FrameCancel || got != id {
		p.t.Fatalf("after cancel: frame kind %d for %s, want a cancel frame for %s", kind, got, id)
	}
	return call
}

// wantServed checks that the channel still serves request id, and that
// its answer comes with its own payload and no file.
func (p *scriptedPlugin) wantServed(c *frameConn, id string) {
	p.t.Helper()
	call := goRoundTrip(context.Background(), c, id, nil)
	p.request()
	p.respond(&wire.HandleResponse{RequestId: id, Payload: []byte("ok " + id)})
	if got := outcome(p.t, call); got.err != nil || string(got.resp.Payload) != "ok "+id || len(got.files) != 0 {
		p.t.Fatalf("request %s: %v, %d files", id, got.err, len(got.files))
	}
}

// Requests in flight at once get their own answers, whatever order the
// plugin answers in and however their frames interleave; files land with
// the response they came with.
func TestFrameInterleavedResponses(t *testing.T) {
	c, plugin := newScriptedChannel(t)
	ctx := context.Background()
	big := make([]byte, 3*wire.MaxFrameBody) // several frames
	for i := range big {
		big[i] = byte(i)
	}
	calls := map[string]<-chan roundTripped{}
	for _, id := range []string{"1", "2", "3"} {
		calls[id] = goRoundTrip(ctx, c, id, []byte("req"+id))
	}
	reqs := map[string]*wire.HandleRequest{}
	for range 3 {
		req := plugin.request()
		reqs[req.RequestId] = req
	}
	for id, req := range reqs {
		if string(req.Payload) != "req"+id {
			t.Fatalf("request %s arrived with payload %q", id, req.Payload)
		}
	}
	// 1's parts, with 3's whole answer and 2's between them; 2 brings a file.
	r, w := watchedPipe(t)
	parts := responseParts(t, &wire.HandleResponse{RequestId: "1", Payload: big})
	plugin.send(wire.FrameResponsePart, "1", parts[0])
	plugin.respond(&wire.HandleResponse{RequestId: "3", Payload: []byte("three")})
	plugin.send(wire.FrameResponsePart, "1", parts[1])
	plugin.respond(&wire.HandleResponse{RequestId: "2", Payload: []byte("two"), Files: 1}, w)
	for i, part := range parts[2:] {
		kind := wire.FrameResponsePart
		if i == len(parts)-3 {
			kind = wire.FrameResponse
		}
		plugin.send(kind, "1", part)
	}
	want := map[string]string{"1": string(big), "2": "two", "3": "three"}
	for id, ch := range calls {
		got := outcome(t, ch)
		if got.err != nil || string(got.resp.Payload) != want[id] {
			t.Fatalf("request %s: %v, payload of %d bytes", id, got.err, len(got.resp.GetPayload()))
		}
		if wantFiles := map[string]int{"2": 1}[id]; len(got.files) != wantFiles {
			t.Errorf("request %s: %d files, want %d", id, len(got.files), wantFiles)
		}
		closeFiles(got.files)
	}
	wantClosedEverywhere(t, r, w, "after the caller closed its file")
}

// A cancelled request sends a cancel frame; a handler that answers within
// the cancel grace leaves the channel fit for requests (errStopped).
func TestFrameCancelAnsweredWithinGrace(t *testing.T) {
	c, plugin := newScriptedChannel(t)
	call := plugin.cancelledRequest(c, "1")
	plugin.respond(&wire.HandleResponse{RequestId: "1", Error: &wire.HandlerError{Errno: int32(syscall.ECANCELED), Message: "stopped"}})
	if got := outcome(t, call); got.err != errStopped {
		t.Fatalf("cancelled request answered in time: %v, want errStopped", got.err)
	}
	plugin.wantServed(c, "2")
}

// A handler that does not answer within the cancel grace gets the
// caller's error (the instance is then retired); its late answer, files
// and all, is dropped when it comes.
func TestFrameCancelGraceExpires(t *testing.T) {
	c, plugin := newScriptedChannel(t)
	cancelled := time.Now()
	call := plugin.cancelledRequest(c, "1")
	got := outcome(t, call)
	if got.err != context.Canceled {
		t.Fatalf("cancelled request not answered: %v, want context.Canceled", got.err)
	}
	if waited := time.Since(cancelled); waited < cancelGrace {
		t.Errorf("gave up %v after the cancel, before the %v grace", waited, cancelGrace)
	}
	r, w := watchedPipe(t)
	plugin.respond(&wire.HandleResponse{RequestId: "1", Files: 1}, w)
	// The next request's reader meets the late answer first.
	plugin.wantServed(c, "2")
	wantClosedEverywhere(t, r, w, "a late answer's file")
}

// A plugin that dies in the middle of a response fails every waiting
// request, and every later one at once, with EPIPE. (The request whose
// response was cut short gets an error too, but today EIO "malformed
// response frame": the partial body is decoded. It is checked to fail
// without a response, not for its errno.)
func TestFramePeerDiesMidResponse(t *testing.T) {
	c, plugin := newScriptedChannel(t)
	first := goRoundTrip(context.Background(), c, "1", nil)
	second := goRoundTrip(context.Background(), c, "2", nil)
	plugin.request()
	plugin.request()
	parts := responseParts(t, &wire.HandleResponse{RequestId: "1", Payload: make([]byte, 2*wire.MaxFrameBody)})
	plugin.send(wire.FrameResponsePart, "1", parts[0])
	plugin.conn.Close()
	if got := outcome(t, first); got.err != errChannelClosed || got.resp != nil || got.files != nil {
		t.Errorf("request cut short when the plugin died: %v, %v; want %v", got.resp, got.err, errChannelClosed)
	}
	if got := outcome(t, second); got.err != errChannelClosed {
		t.Errorf("request waiting when the plugin died: %v, %v; want %v", got.resp, got.err, errChannelClosed)
	}
	if _, _, err := c.roundTrip(context.Background(), &wire.HandleRequest{RequestId: "3"}); errnoOf(err) != syscall.EPIPE {
		t.Errorf("request after the plugin died: %v, want EPIPE", err)
	}
}

// More fds than wire.MaxFiles on one frame overflow the core's control
// buffer (MSG_CTRUNC): the response comes back with none of them, and
// none of those that did arrive stays open.
func TestFrameTooManyFilesTruncated(t *testing.T) {
	c, plugin := newScriptedChannel(t)
	call := goRoundTrip(context.Background(), c, "1", nil)
	plugin.request()
	r, w := watchedPipe(t)
	files := make([]*os.File, wire.MaxFiles+1)
	for i := range files {
		files[i] = w
	}
	plugin.respond(&wire.HandleResponse{RequestId: "1", Files: uint32(len(files))}, files...)
	got := outcome(t, call)
	if got.err != nil {
		t.Fatal(got.err)
	}
	if len(got.files) != 0 || got.resp.Files != uint32(wire.MaxFiles+1) {
		t.Fatalf("truncated fds: %d files kept (announced %d), want none", len(got.files), got.resp.Files)
	}
	wantClosedEverywhere(t, r, w, "fds of a truncated control message")
}
