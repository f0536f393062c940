package server

import (
	"context"
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/wire"
)

// The one mapping between errnos and gRPC codes, both ways, as containerd's
// errdefs maps its errors at its API boundary. A failed call's status has
// the code below and one apiv1.Error detail with the errno itself, so a
// client that reads the detail (ErrorFromStatus, nsplug's CLI) sees
// exactly the *wire.Error an in-process caller gets; a client that reads
// only the code still gets the right class of failure.
//
// Each errno is in the class that says what the caller can do about it:
var errnoCodes = map[syscall.Errno]codes.Code{
	// The target, the file or the entry named does not exist (ESRCH: the
	// target process is gone, or its pid now names another process).
	unix.ENOENT: codes.NotFound,
	unix.ESRCH:  codes.NotFound,
	unix.ENXIO:  codes.NotFound,
	unix.ENODEV: codes.NotFound,
	// Not allowed: by the daemon's rules (EACCES), by the kernel inside
	// the target, or by nsplug's refusal to change the host (EPERM).
	unix.EACCES: codes.PermissionDenied,
	unix.EPERM:  codes.PermissionDenied,
	// The request itself is wrong, whatever the state: a malformed payload,
	// a bad namespace name, a path too long.
	unix.EINVAL:       codes.InvalidArgument,
	unix.E2BIG:        codes.InvalidArgument,
	unix.ENAMETOOLONG: codes.InvalidArgument,
	unix.EDOM:         codes.InvalidArgument,
	// A value past what the request can have back.
	unix.ERANGE:    codes.OutOfRange,
	unix.EOVERFLOW: codes.OutOfRange,
	unix.EFBIG:     codes.OutOfRange,
	unix.EEXIST:    codes.AlreadyExists,
	// The system is not in the state the request needs, and retrying will
	// not change that: gRPC's own examples are rmdir of a non-empty
	// directory or of a non-directory. EXDEV is also what the daemon
	// answers for a response holding open files (see Call).
	unix.ENOTEMPTY: codes.FailedPrecondition,
	unix.ENOTDIR:   codes.FailedPrecondition,
	unix.EISDIR:    codes.FailedPrecondition,
	unix.ELOOP:     codes.FailedPrecondition,
	unix.EROFS:     codes.FailedPrecondition,
	unix.EXDEV:     codes.FailedPrecondition,
	// Ran out of time: the call's deadline, its timeout field or the
	// plugin's request_timeout.
	unix.ETIMEDOUT: codes.DeadlineExceeded,
	unix.ECANCELED: codes.Canceled,
	// Try again later: every instance busy (max_instances), a target in
	// start backoff, the daemon shutting down.
	unix.EAGAIN:    codes.Unavailable,
	unix.EBUSY:     codes.Unavailable,
	unix.EINTR:     codes.Unavailable,
	unix.ESHUTDOWN: codes.Unavailable,
	// Nobody answers (gRPC's own Unavailable comes back as this errno).
	unix.ECONNREFUSED: codes.Unavailable,
	// Out of a resource the kernel counts.
	unix.ENOSPC: codes.ResourceExhausted,
	unix.EDQUOT: codes.ResourceExhausted,
	unix.ENOMEM: codes.ResourceExhausted,
	unix.EMFILE: codes.ResourceExhausted,
	unix.ENFILE: codes.ResourceExhausted,
	// Not served here: an unknown message type (EOPNOTSUPP, which is also
	// ENOTSUP), a type whose plugin failed to load (ENOPKG, with the load
	// error), an operation the target's kernel lacks.
	unix.EOPNOTSUPP: codes.Unimplemented,
	unix.ENOPKG:     codes.Unimplemented,
	unix.ENOSYS:     codes.Unimplemented,
	// Broken on nsplug's side of the request: an I/O error, a plugin that
	// died (EPIPE) or answered something malformed (EPROTO, EBADMSG).
	unix.EIO:        codes.Internal,
	unix.EPIPE:      codes.Internal,
	unix.EPROTO:     codes.Internal,
	unix.EBADMSG:    codes.Internal,
	unix.ECONNRESET: codes.Internal,
}

// Any other errno, and an error with none, is codes.Unknown.

// codeErrnos is the other way, for a status without an apiv1.Error
// detail: one from gRPC itself (no daemon listening, a deadline passed on
// the client's side, a message too large) or from another server. Each
// code gets the errno a program would most likely see for it.
var codeErrnos = map[codes.Code]syscall.Errno{
	codes.Canceled:           unix.ECANCELED,
	codes.InvalidArgument:    unix.EINVAL,
	codes.DeadlineExceeded:   unix.ETIMEDOUT,
	codes.NotFound:           unix.ENOENT,
	codes.AlreadyExists:      unix.EEXIST,
	codes.PermissionDenied:   unix.EACCES,
	codes.Unauthenticated:    unix.EACCES,
	codes.ResourceExhausted:  unix.ENOSPC,
	codes.FailedPrecondition: unix.EXDEV,
	codes.OutOfRange:         unix.ERANGE,
	codes.Unimplemented:      unix.EOPNOTSUPP,
	codes.Internal:           unix.EIO,
	codes.Unavailable:        unix.ECONNREFUSED,
	codes.DataLoss:           unix.EIO,
	codes.Unknown:            unix.EIO,
	codes.Aborted:            unix.EAGAIN,
}

// CodeOf is the gRPC code of errno.
func CodeOf(errno syscall.Errno) codes.Code {
	if c, ok := errnoCodes[errno]; ok {
		return c
	}
	return codes.Unknown
}

// Status is err as the API returns it: the code of its errno and an
// apiv1.Error detail. A nil err is nil.
func Status(err error) error {
	if err == nil {
		return nil
	}
	e, ok := err.(*wire.Error)
	if !ok { // keep the whole message of a wrapped or joined error
		e = &wire.Error{Message: err.Error()}
		errors.As(err, &e.Errno)
	}
	if errors.Is(err, context.Canceled) && e.Errno == 0 {
		e = &wire.Error{Errno: unix.ECANCELED, Message: e.Message}
	}
	if errors.Is(err, context.DeadlineExceeded) && e.Errno == 0 {
		e = &wire.Error{Errno: unix.ETIMEDOUT, Message: e.Message}
	}
	detail := &apiv1.Error{Errno: int32(e.Errno), Message: wire.ProtoText(e.Message)}
	if e.Errno != 0 {
		detail.ErrnoName = wire.ErrnoName(e.Errno)
	}
	st, werr := status.New(CodeOf(e.Errno), wire.ProtoText(e.Error())).WithDetails(detail)
	if werr != nil {
		return status.Error(CodeOf(e.Errno), wire.ProtoText(e.Error()))
	}
	return st.Err()
}

// ErrorFromStatus turns an error a client got from the API back into the
// *wire.Error the daemon's core returned: its errno and message from the
// status's apiv1.Error detail, so that it prints as the in-process error
// would ("open /x: no such file or directory (ENOENT)"). A status without
// that detail (gRPC's own: no daemon listening, a deadline passed on the
// client's side) gets its code's errno (codeErrnos) and gRPC's message. A
// nil err is nil; an error that is no status is returned as it is.
func ErrorFromStatus(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, d := range st.Details() {
		if e, ok := d.(*apiv1.Error); ok {
			return &wire.Error{Errno: syscall.Errno(e.Errno), Message: e.Message}
		}
	}
	errno, ok := codeErrnos[st.Code()]
	if !ok {
		errno = unix.EIO
	}
	return wire.Errorf(errno, "nsplug daemon: %s", st.Message())
}
