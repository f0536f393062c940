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
	"google.golang.org/grpc/tap"
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
	viaChannel // a direct channel's requests, which the daemon does not see (channels.go)
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
	end, err := s.userCalls.beginUnlessCounted(ctx, c, s.Config().Server.MaxCallsPerUser)
	if err == nil {
		resp, err = s.dispatch(ctx, c, in, t)
		end()
	}
	done(err)
	return resp, err
}

// MaxUserCalls bounds the calls in flight of all uids but root together,
// over both protocols: each may hold a request of up to
// server.max_user_request_bytes, and a user's subordinate uids are uids
// of their own, each with a max_calls_per_user.
const MaxUserCalls = 1024

// userCalls counts the calls in flight of each uid other than root. A
// gRPC call of theirs counts from the moment its stream opens (tap), so
// that requests still being read count too: before, only calls whose
// request had been read did, and one uid's 32 connections of 16 streams
// could each hold a request being read.
type userCalls struct {
	mu    sync.Mutex
	byUID map[uint32]int
	total int
}

// begin counts one more call of c's, and refuses it (EAGAIN) past max,
// or past MaxUserCalls for all; end uncounts it. Root is not counted.
func (u *userCalls) begin(c Caller, max int) (end func(), err error) {
	if c.Root() {
		return func() {}, nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if n := u.byUID[c.UID]; n >= max {
		return nil, wire.Errorf(syscall.EAGAIN, "uid %d has %d calls in flight, the most a user may (server.max_calls_per_user); one must end first", c.UID, n)
	}
	if u.total >= MaxUserCalls {
		return nil, wire.Errorf(syscall.EAGAIN, "users other than root have %d calls in flight, the most they may together (server.MaxUserCalls); try again", u.total)
	}
	if u.byUID == nil {
		u.byUID = make(map[uint32]int)
	}
	u.byUID[c.UID]++
	u.total++
	return sync.OnceFunc(func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		u.total--
		if u.byUID[c.UID]--; u.byUID[c.UID] <= 0 {
			delete(u.byUID, c.UID)
		}
	}), nil
}

// countedKey marks the context of a gRPC call that tap counted.
type countedKey struct{}

// tap counts a user's gRPC call as its stream opens (grpc.InTapHandle of
// the users' server), and uncounts it when the stream ends; past the
// bounds the stream is refused before its request is read.
func (u *userCalls) tap(max func() int) func(ctx context.Context, _ *tap.Info) (context.Context, error) {
	return func(ctx context.Context, _ *tap.Info) (context.Context, error) {
		ctx, err := callerContext(ctx)
		if err != nil {
			return nil, err
		}
		end, err := u.begin(caller(ctx), max())
		if err != nil {
			return nil, Status(err)
		}
		context.AfterFunc(ctx, end) // the stream's context ends with it
		return context.WithValue(ctx, countedKey{}, true), nil
	}
}

// beginUnlessCounted is begin, for a call tap has not counted already.
func (u *userCalls) beginUnlessCounted(ctx context.Context, c Caller, max int) (end func(), err error) {
	if counted, _ := ctx.Value(countedKey{}).(bool); counted {
		return func() {}, nil
	}
	return u.begin(c, max)
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
