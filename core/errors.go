package core

import (
	"errors"
	"syscall"

	"github.com/nsplug/nsplug/sdk"
)

// Error is every error Dispatch returns: a message and, when there is one,
// the errno a caller should see (ENOENT from a handler, ESRCH for a dead
// target, ETIMEDOUT for a request that ran out of time, ...). It is the
// sdk's error type, so handler errors cross the wire unchanged.
// errors.Is(err, syscall.ENOENT) works.
type Error = sdk.Error

// errorf is sdk.Errorf: one rule for messages, so that no error prints
// its errno twice.
func errorf(errno syscall.Errno, format string, args ...any) *Error {
	return sdk.Errorf(errno, format, args...)
}

func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.EIO
}
