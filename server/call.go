package server

import (
	"context"
	"fmt"
	"os"
	"syscall"

	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/wire"
)

// Call runs one request in a target's namespaces. Its steps, in order:
// read the request, authorize the caller, dispatch, and answer; audit and
// metrics see each outcome here.
//
// The request ends with the call: the client's cancellation, its
// disconnection (gRPC cancels the call's context), its deadline, or the
// request's own timeout field, whichever comes first (and the plugin's
// request_timeout).
func (s *Server) Call(ctx context.Context, in *apiv1.CallRequest) (*apiv1.CallResponse, error) {
	c := caller(ctx)
	req, err := coreRequest(in)
	if err != nil {
		return nil, Status(err)
	}
	if err := authorize(c, fmt.Sprintf("call %s in pid %d", req.Type, req.PID)); err != nil {
		return nil, Status(err)
	}
	if in.Timeout != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, in.Timeout.AsDuration())
		defer cancel()
	}
	payload, err := s.dispatch(ctx, req)
	if err != nil {
		return nil, Status(err)
	}
	return &apiv1.CallResponse{Payload: payload}, nil
}

// dispatch runs req on the dispatcher serving new calls. A response that
// holds open files is refused: descriptors cannot travel over gRPC, so
// they are closed here (none stays in the daemon) and the caller is told
// how to get them.
func (s *Server) dispatch(ctx context.Context, req core.Request) ([]byte, error) {
	g := s.acquire()
	defer s.release(g)
	resp, err := g.d.Call(ctx, req)
	if err != nil {
		return nil, err
	}
	if len(resp.Files) > 0 {
		closeAll(resp.Files)
		return nil, wire.Errorf(syscall.EXDEV, "%s: the response holds %d open file(s), which cannot cross the daemon's API; embed the core (core.Dispatcher.Call), or run `nsplug call` without --addr", req.Type, len(resp.Files))
	}
	return resp.Payload, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
