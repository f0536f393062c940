package fast

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/wire"
)

// fakeDaemon accepts one connection on a fresh socket and hands it to
// serve; it returns the address to dial.
func fakeDaemon(t *testing.T, serve func(*net.UnixConn)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "d.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	t.Cleanup(func() { l.Close(); <-done })
	return "unix://" + path
}

// reply reads the preface and one request, and answers st (with files).
func reply(t *testing.T, c *net.UnixConn, id string, st *spb.Status, files ...*os.File) {
	r := NewReader(c)
	if ok, err := r.ReadPreface(); !ok {
		t.Errorf("preface: %v", err)
		return
	}
	rid, _, err := r.Read(wire.FrameRequest)
	if err != nil {
		t.Errorf("request: %v", err)
		return
	}
	if id == "=" {
		id = rid
	}
	msg, _ := proto.Marshal(st)
	b, _ := AppendMessage([]byte(Preface), wire.FrameResponse, id, msg)
	var oob []byte
	for _, f := range files {
		oob = append(oob, unix.UnixRights(int(f.Fd()))...)
	}
	if _, _, err := c.WriteMsgUnix(b, oob, nil); err != nil {
		t.Error(err)
	}
}

var req = &apiv1.CallRequest{Target: &apiv1.Target{Pid: 1}, Type: "procfs.read"}

func call(t *testing.T, addr string) (*apiv1.CallResponse, []*os.File, error) {
	t.Helper()
	c, err := Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.Call(context.Background(), req)
}

// A daemon that answers with other bytes (gRPC's server speaks first) or
// closes has not served the request: ErrNotSpoken.
func TestClientNotSpoken(t *testing.T) {
	for name, serve := range map[string]func(*net.UnixConn){
		"http2": func(c *net.UnixConn) {
			c.Write([]byte{0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 5, 0, 0, 64, 0})
			io.Copy(io.Discard, c)
		},
		"close": func(c *net.UnixConn) {},
	} {
		if _, _, err := call(t, fakeDaemon(t, serve)); !errors.Is(err, ErrNotSpoken) {
			t.Errorf("%s: %v, want ErrNotSpoken", name, err)
		}
	}
}

// A success carries the CallResponse and the files that came with it; a
// failure the Error detail as a *wire.Error, also when the daemon answers
// a breach of the protocol (empty id).
func TestClientReplies(t *testing.T) {
	ok, _ := anypb.New(&apiv1.CallResponse{Payload: []byte(`{"a":1}`)})
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	pw.Write([]byte("through the pipe"))
	pw.Close()
	addr := fakeDaemon(t, func(c *net.UnixConn) {
		reply(t, c, "=", &spb.Status{Details: []*anypb.Any{ok}}, pr)
		pr.Close() // the client has its own now
	})
	resp, files, err := call(t, addr)
	if err != nil || string(resp.Payload) != `{"a":1}` || len(files) != 1 {
		t.Fatalf("success: %v %v, %d files", resp, err, len(files))
	}
	data, _ := io.ReadAll(files[0])
	files[0].Close()
	if string(data) != "through the pipe" {
		t.Errorf("the file handed back reads %q", data)
	}

	detail, _ := anypb.New(&apiv1.Error{Errno: int32(syscall.EINVAL), ErrnoName: "EINVAL", Message: "nsplug fast path: request: a frame of 9 bytes"})
	for _, id := range []string{"=", ""} {
		addr := fakeDaemon(t, func(c *net.UnixConn) {
			reply(t, c, id, &spb.Status{Code: 3, Message: "x", Details: []*anypb.Any{detail}})
		})
		_, _, err := call(t, addr)
		if e, ok := err.(*wire.Error); !ok || e.Errno != syscall.EINVAL || e.Message != "nsplug fast path: request: a frame of 9 bytes" {
			t.Errorf("failure (id %q): %#v", id, err)
		}
	}
	addr = fakeDaemon(t, func(c *net.UnixConn) { reply(t, c, "other", &spb.Status{Details: []*anypb.Any{ok}}) })
	if _, _, err := call(t, addr); !errorsIsErrno(err, syscall.EPROTO) {
		t.Errorf("a reply for another request: %v", err)
	}
}

func errorsIsErrno(err error, errno syscall.Errno) bool {
	e, ok := err.(*wire.Error)
	return ok && e.Errno == errno
}

// A real gRPC server, which does not speak the fast path, is told apart
// at once, not after its handshake timeout.
func TestClientNotSpokenByGRPC(t *testing.T) {
	path := filepath.Join(t.TempDir(), "grpc.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	go srv.Serve(l)
	defer srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial("unix://" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, err := c.Call(ctx, req); !errors.Is(err, ErrNotSpoken) {
		t.Errorf("a gRPC server: %v, want ErrNotSpoken", err)
	}
}
