package server

import (
	"context"
	"os"
	"syscall"

	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/wire"
)

// Call runs one request in a target's namespaces. Its steps, in order:
// metrics start counting; the request is read; the Gate authorizes it (by
// type, then, from the core's hook, on the pinned target), runs it on the
// dispatcher serving new calls and audits it; files are refused; metrics
// record the outcome.
//
// The request ends with the call: the client's cancellation, its
// disconnection (gRPC cancels the call's context), its deadline, or the
// request's own timeout field, whichever comes first (and the plugin's
// request_timeout).
func (s *Server) Call(ctx context.Context, in *apiv1.CallRequest) (*apiv1.CallResponse, error) {
	c := caller(ctx)
	done := s.metrics.StartCall(in.GetType())
	payload, err := s.call(ctx, c, in)
	done(err)
	if err != nil {
		return nil, Status(err)
	}
	return &apiv1.CallResponse{Payload: payload}, nil
}

func (s *Server) call(ctx context.Context, c Caller, in *apiv1.CallRequest) ([]byte, error) {
	req, err := coreRequest(in)
	if err != nil {
		return nil, err
	}
	if in.Timeout != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, in.Timeout.AsDuration())
		defer cancel()
	}
	g := s.acquire()
	defer s.release(g)
	resp, denied, err := s.gate(g).Call(c, req, func(r core.Request) (*core.Response, error) { return g.d.Call(ctx, r) })
	if denied != "" {
		s.metrics.Denied(denied)
	}
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
