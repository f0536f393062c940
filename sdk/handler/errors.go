package handler

import (
	"syscall"

	"github.com/nsplug/nsplug/wire"
)

// Error is a handler failure with the errno a caller should see.
// errors.Is(err, syscall.ENOENT) works on it.
//
// A handler returns one (Errorf) or any error whose chain holds an errno
// (AsError finds it); the core hands it to its caller as a *core.Error.
// All three names are wire.Error, so the errno crosses every boundary
// intact.
type Error = wire.Error

// Errorf returns an Error with the given errno and a formatted message.
// An error among args that ends in that same errno's name ("... (EIO)",
// as an *Error prints) is formatted without it, so that wrapping an error
// never prints its errno twice.
func Errorf(errno syscall.Errno, format string, args ...any) *Error {
	return wire.Errorf(errno, format, args...)
}

// AsError turns any error into an Error, keeping the errno found in its
// chain (an *os.PathError from a failed open carries one).
func AsError(err error) *Error { return wire.AsError(err) }

// ErrnoName returns the symbolic name of an errno ("ENOENT"), or
// "errno N" for one without a name.
func ErrnoName(e syscall.Errno) string { return wire.ErrnoName(e) }

// MaxMessageBytes bounds one message, a request or a response: a handler
// whose response would be larger gets an EIO error instead. Page large
// data.
const MaxMessageBytes = wire.MaxMessageBytes

// MaxFiles bounds the files one response hands back (Env.ReturnFile).
const MaxFiles = wire.MaxFiles
