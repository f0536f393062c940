package wire

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
)

// No error prints its errno twice, however it was wrapped.
func TestErrnoIsPrintedOnce(t *testing.T) {
	inner := Errorf(syscall.EIO, "malformed response frame for request 7")
	for _, err := range []error{
		Errorf(syscall.EIO, "plugin x (pid 1): procfs.read: %v", inner),
		Errorf(syscall.EIO, "%s", inner), // %s of an error is its Error() too
		Errorf(syscall.EIO, "outer: %v", fmt.Errorf("middle: %w", inner)),
		&Error{Errno: syscall.EIO, Message: inner.Error()}, // a message built from Error()
		TooLarge("response", 70<<20),
	} {
		if n := strings.Count(err.Error(), "(EIO)"); n != 1 {
			t.Errorf("%q names EIO %d times", err, n)
		}
	}
	// Another errno inside stays: it says something.
	err := Errorf(syscall.EIO, "starting: %v", Errorf(syscall.ENOENT, "open /x"))
	if err.Error() != "starting: open /x (ENOENT) (EIO)" {
		t.Errorf("%q", err)
	}
	// The caller's argument slice is left alone.
	args := []any{inner}
	Errorf(syscall.EIO, "%v", args...)
	if args[0] != inner {
		t.Errorf("Errorf changed its caller's arguments")
	}
	if got := TooLarge("response", 70<<20).Error(); got != "response of 73400320 bytes exceeds the 64 MiB limit of one message (wire.MaxMessageBytes); page large data (EIO)" {
		t.Errorf("%q", got)
	}
}
