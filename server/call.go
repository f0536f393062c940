package server

import (
	"context"
	"os"
	"sync"
	"syscall"

	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/internal/apiconv"
	"github.com/nsplug/nsplug/wire"
)

// Call is the gRPC transport's Call (see call): a response holding files
// is refused, EXDEV, since gRPC cannot carry them.
//
// The request ends with the call: the client's cancellation, its
// disconnection (gRPC cancels the call's context), its deadline, or the
// request's own timeout field, whichever comes first (and the plugin's
// request_timeout).
func (s *Server) Call(ctx context.Context, in *apiv1.CallRequest) (*apiv1.CallResponse, error) {
	resp, err := s.call(ctx, caller(ctx), in, viaGRPC)
	if err != nil {
		return nil, Status(err)
	}
	return &apiv1.CallResponse{Payload: resp.Payload}, nil
}

// A transport is what a call came over: gRPC or the fast path (api/fast).
type transport int

const (
	viaGRPC transport = iota
	viaFast
)

// carriesFiles reports whether the transport can hand files to the
// client (the fast path, with SCM_RIGHTS).
func (t transport) carriesFiles() bool { return t == viaFast }

// call runs one request in a target's namespaces, for every transport
// alike. Its steps, in order: metrics start counting; the request is
// read; the Gate authorizes it (by type, then, from the core's hook, on
// the pinned target), runs it on the dispatcher serving new calls and
// audits it; files are refused unless the transport carries them;
// metrics record the outcome. The files of the response returned are the
// caller's to hand on and close.
func (s *Server) call(ctx context.Context, c Caller, in *apiv1.CallRequest, t transport) (*core.Response, error) {
	done := s.metrics.StartCall(in.GetType())
	s.metrics.Over(t)
	var resp *core.Response
	end, err := s.userCalls.begin(c, s.Config().Server.MaxCallsPerUser)
	if err == nil {
		resp, err = s.dispatch(ctx, c, in, t)
		end()
	}
	done(err)
	return resp, err
}

// userCalls counts the calls in flight of each uid other than root.
type userCalls struct {
	mu    sync.Mutex
	byUID map[uint32]int
}

// begin counts one more call of c's, and refuses it (EAGAIN) past max;
// end uncounts it. Root is not counted.
func (u *userCalls) begin(c Caller, max int) (end func(), err error) {
	if c.Root() {
		return func() {}, nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if n := u.byUID[c.UID]; n >= max {
		return nil, wire.Errorf(syscall.EAGAIN, "uid %d has %d calls in flight, the most a user may (server.max_calls_per_user); one must end first", c.UID, n)
	}
	if u.byUID == nil {
		u.byUID = make(map[uint32]int)
	}
	u.byUID[c.UID]++
	return func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		if u.byUID[c.UID]--; u.byUID[c.UID] <= 0 {
			delete(u.byUID, c.UID)
		}
	}, nil
}

func (s *Server) dispatch(ctx context.Context, c Caller, in *apiv1.CallRequest, t transport) (*core.Response, error) {
	req, err := apiconv.CoreRequest(in)
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
	if len(resp.Files) > 0 && !t.carriesFiles() {
		closeAll(resp.Files)
		return nil, wire.Errorf(syscall.EXDEV, "%s: the response holds %d open file(s), which cannot cross the daemon's gRPC API; its fast path (api/fast, which nsplug call --addr uses) hands them over", req.Type, len(resp.Files))
	}
	return resp, nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
