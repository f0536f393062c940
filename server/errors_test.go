package server

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/wire"
)

// Every errno of the mapping: its code on the way out, and the very same
// *wire.Error (errno, message, text) on the way back.
func TestErrnoStatusRoundTrip(t *testing.T) {
	want := map[syscall.Errno]codes.Code{
		unix.ENOENT: codes.NotFound, unix.ESRCH: codes.NotFound,
		unix.EACCES: codes.PermissionDenied, unix.EPERM: codes.PermissionDenied,
		unix.EINVAL: codes.InvalidArgument, unix.ETIMEDOUT: codes.DeadlineExceeded,
		unix.ECANCELED: codes.Canceled, unix.EEXIST: codes.AlreadyExists,
		unix.EAGAIN: codes.Unavailable, unix.EBUSY: codes.Unavailable, unix.ESHUTDOWN: codes.Unavailable,
		unix.ENOSPC: codes.ResourceExhausted, unix.EMFILE: codes.ResourceExhausted,
		unix.EOPNOTSUPP: codes.Unimplemented, unix.ENOPKG: codes.Unimplemented, unix.ENOSYS: codes.Unimplemented,
		unix.EXDEV: codes.FailedPrecondition, unix.ENOTEMPTY: codes.FailedPrecondition,
		unix.EIO: codes.Internal, unix.EPIPE: codes.Internal,
		unix.ERANGE: codes.OutOfRange, unix.EFBIG: codes.OutOfRange,
		unix.EHOSTDOWN: codes.Unknown, // not in the mapping
	}
	for errno := range errnoCodes {
		if _, ok := want[errno]; !ok {
			want[errno] = errnoCodes[errno]
		}
	}
	for errno, code := range want {
		in := wire.Errorf(errno, "open /x: %v", errno)
		err := Status(in)
		st := status.Convert(err)
		if st.Code() != code {
			t.Errorf("%s: code %v, want %v", wire.ErrnoName(errno), st.Code(), code)
		}
		if st.Message() != in.Error() {
			t.Errorf("%s: status message %q, want %q", wire.ErrnoName(errno), st.Message(), in.Error())
		}
		var detail *apiv1.Error
		for _, d := range st.Details() {
			detail, _ = d.(*apiv1.Error)
		}
		if detail == nil || detail.Errno != int32(errno) || detail.ErrnoName != wire.ErrnoName(errno) || detail.Message != in.Message {
			t.Errorf("%s: detail %v", wire.ErrnoName(errno), detail)
		}
		back := ErrorFromStatus(err)
		var e *wire.Error
		if !errors.As(back, &e) || *e != *in || back.Error() != in.Error() || !errors.Is(back, errno) {
			t.Errorf("%s: back as %#v (%v), want %#v", wire.ErrnoName(errno), back, back, in)
		}
	}
}

func TestStatusOfOtherErrors(t *testing.T) {
	if Status(nil) != nil || ErrorFromStatus(nil) != nil {
		t.Error("nil is not nil")
	}
	// No errno at all.
	st := status.Convert(Status(errors.New("plain")))
	if st.Code() != codes.Unknown || st.Message() != "plain" {
		t.Errorf("plain error: %v", st)
	}
	// A wrapped or joined error keeps its whole message and its errno.
	joined := errors.Join(wire.Errorf(unix.EAGAIN, "a"), wire.Errorf(unix.EAGAIN, "b"))
	back := ErrorFromStatus(Status(joined)).(*wire.Error)
	if back.Errno != unix.EAGAIN || back.Error() != "a (EAGAIN)\nb (EAGAIN)" {
		t.Errorf("joined: %#v", back)
	}
	wrapped := fmt.Errorf("prepare: %w", wire.Errorf(unix.ESRCH, "gone"))
	if st := status.Convert(Status(wrapped)); st.Code() != codes.NotFound || st.Message() != "prepare: gone (ESRCH)" {
		t.Errorf("wrapped: %v", st)
	}
	// Context errors without an errno.
	if st := status.Convert(Status(context.DeadlineExceeded)); st.Code() != codes.DeadlineExceeded {
		t.Errorf("deadline: %v", st)
	}
	// A message that is not UTF-8 (a path of such bytes) still travels.
	st = status.Convert(Status(wire.Errorf(unix.ENOENT, "open /a\xffb: no such file")))
	if st.Code() != codes.NotFound || st.Message() != `open /a\xffb: no such file (ENOENT)` {
		t.Errorf("not UTF-8: %v", st)
	}
}

// A status without the detail (gRPC's own, or another server's) gets the
// errno of its code, and its message.
func TestErrorFromStatusWithoutDetail(t *testing.T) {
	for code, errno := range map[codes.Code]syscall.Errno{
		codes.Unavailable: unix.ECONNREFUSED, codes.DeadlineExceeded: unix.ETIMEDOUT,
		codes.Canceled: unix.ECANCELED, codes.PermissionDenied: unix.EACCES, codes.Unauthenticated: unix.EACCES,
		codes.NotFound: unix.ENOENT, codes.ResourceExhausted: unix.ENOSPC, codes.Internal: unix.EIO,
	} {
		e, ok := ErrorFromStatus(status.Error(code, "went wrong")).(*wire.Error)
		if !ok || e.Errno != errno || e.Message != "nsplug daemon: went wrong" {
			t.Errorf("%v: %#v", code, e)
		}
	}
	plain := errors.New("not a status")
	if ErrorFromStatus(plain) != plain {
		t.Error("an error that is no status changed")
	}
	// Every code maps both ways: a code's errno maps back to that code,
	// except where the code is gRPC's alone.
	for code, errno := range codeErrnos {
		if got := CodeOf(errno); got != code && code != codes.Unauthenticated && code != codes.DataLoss && code != codes.Unknown && code != codes.Aborted {
			t.Errorf("%v: errno %s maps back to %v", code, wire.ErrnoName(errno), got)
		}
	}
}
