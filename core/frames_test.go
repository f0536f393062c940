package core

import (
	"context"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/nsplug/nsplug/wire"
)

// A plugin that answers with more than wire.MaxMessageBytes on the frame
// channel gets an error naming the size and the limit, once, and no
// partial message is ever decoded. Over a plain socketpair: the plugin end
// is played by the test.
func TestFrameResponseOverTheLimit(t *testing.T) {
	c, end, err := newFrameConn()
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	conn, err := net.FileConn(end)
	end.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	plugin := conn.(*net.UnixConn)

	resp, _ := proto.Marshal(&wire.HandleResponse{RequestId: "1", Payload: make([]byte, wire.MaxMessageBytes+1)})
	go func() {
		buf := make([]byte, wire.MaxFrame)
		if _, err := plugin.Read(buf); err != nil { // the request
			return
		}
		parts := wire.Split(resp)
		for i, p := range parts {
			kind := wire.FrameResponsePart
			if i == len(parts)-1 {
				kind = wire.FrameResponse
			}
			frame, _ := wire.AppendFrame(nil, kind, "1", p)
			if _, err := plugin.Write(frame); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, _, err = c.roundTrip(ctx, &wire.HandleRequest{RequestId: "1", Type: "x.y"})
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
