package wire

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// Error is a failure with the errno a caller should see: what a handler
// returns (sdk.Error), what travels in HandleResponse.error, and what the
// core's Dispatch returns (core.Error); all three are this type, so an
// errno crosses every boundary intact. errors.Is(err, syscall.ENOENT)
// works on it.
type Error struct {
	// Errno is what a caller should see (ENOENT, EACCES, ...); 0 when
	// the failure has none.
	Errno syscall.Errno
	// Message says what failed, naming the path or field involved.
	Message string
}

// Error returns the message followed by the errno's name in
// parentheses: "open /etc/x: no such file or directory (ENOENT)".
func (e *Error) Error() string {
	if e.Errno == 0 || strings.HasSuffix(e.Message, errnoSuffix(e.Errno)) {
		return e.Message // it already names its errno (a message built from Error())
	}
	return e.Message + errnoSuffix(e.Errno)
}

func errnoSuffix(e syscall.Errno) string { return " (" + ErrnoName(e) + ")" }

// Unwrap exposes the errno to errors.Is and errors.As.
func (e *Error) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

// Errorf returns an Error with the given errno and a formatted message.
// An error among args that ends in that same errno's name ("... (EIO)",
// as an *Error prints) is formatted without it, so that wrapping an error
// never prints its errno twice: Errorf(EIO, "plugin x: %v", err) reads
// "plugin x: malformed response (EIO)".
func Errorf(errno syscall.Errno, format string, args ...any) *Error {
	copied := false
	for i, a := range args {
		if err, ok := a.(error); ok && err != nil && errno != 0 {
			if text := err.Error(); strings.HasSuffix(text, errnoSuffix(errno)) {
				if !copied { // the caller's slice, when it passed args...
					args, copied = slices.Clone(args), true
				}
				args[i] = strings.TrimSuffix(text, errnoSuffix(errno))
			}
		}
	}
	return &Error{Errno: errno, Message: fmt.Sprintf(format, args...)}
}

// AsError turns any error into an Error, keeping the errno found in its
// chain (an *os.PathError from a failed open carries one).
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var errno syscall.Errno
	errors.As(err, &errno)
	return &Error{Errno: errno, Message: err.Error()}
}

// ErrorResponse is the HandleResponse that carries e: its errno, and its
// message as protobuf can carry it (see ProtoText).
func ErrorResponse(e *Error) *HandleResponse {
	return &HandleResponse{Error: &HandlerError{Errno: int32(e.Errno), Message: ProtoText(e.Message)}}
}

// ProtoText is s as a protobuf string field can carry it (it must be
// UTF-8): a message naming a path that is not UTF-8 ("open /a\xffb: ...")
// keeps every other byte, and shows each byte that is not UTF-8 as \xNN,
// as %q would, instead of failing the whole response.
func ProtoText(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			fmt.Fprintf(&b, `\x%02x`, s[i])
		} else {
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// ErrnoName returns the symbolic name of an errno ("ENOENT"), or
// "errno N" for one without a name.
func ErrnoName(e syscall.Errno) string {
	if name := unix.ErrnoName(e); name != "" {
		return name
	}
	return fmt.Sprintf("errno %d", int(e))
}
