package core

import (
	"errors"
	"syscall"

	"github.com/nsplug/nsplug/wire"
)

// Error is every error Dispatch returns: a message and, when there is one,
// the errno a caller should see (ENOENT from a handler, ESRCH for a dead
// target, ETIMEDOUT for a request that ran out of time, ...). It is the
// contract's error type (wire.Error, which is also sdk.Error), so handler
// errors cross the wire unchanged.
// errors.Is(err, syscall.ENOENT) works.
type Error = wire.Error

// errorf is wire.Errorf: one rule for messages, so that no error prints
// its errno twice.
func errorf(errno syscall.Errno, format string, args ...any) *Error {
	return wire.Errorf(errno, format, args...)
}

func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.EIO
}
