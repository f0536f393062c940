package wire

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/nsplug/nsplug/wire/ns"
)

// The limits and validators of the contract, defined here once: the core
// applies them to what it sends and receives, the sdk to what it serves.

// MaxMessageBytes bounds one message (a request or a response, on gRPC or
// the frame channel) in either direction.
const MaxMessageBytes = 64 << 20

// MaxFiles bounds the descriptors one response hands back.
const MaxFiles = 16

// MaxPathLen bounds request paths (the kernel's PATH_MAX).
const MaxPathLen = 4096

// MaxTypeName bounds a message type name, in bytes.
const MaxTypeName = 64

// TooLarge is the EIO error for a message of n bytes, over MaxMessageBytes:
// "response of 70000000 bytes exceeds the 64 MiB limit of one message".
func TooLarge(what string, n int) *Error {
	return Errorf(syscall.EIO, "%s of %d bytes exceeds the %d MiB limit of one message (wire.MaxMessageBytes); page large data", what, n, MaxMessageBytes>>20)
}

// CheckTypeName validates a message type name: "<plugin>.<verb>", each
// part lowercase letters, digits and '_', MaxTypeName bytes at most.
func CheckTypeName(name string) error {
	if len(name) == 0 || len(name) > MaxTypeName {
		return fmt.Errorf("message type %q: want 1 to %d bytes", name, MaxTypeName)
	}
	dot := 0
	for i, c := range []byte(name) {
		switch {
		case c == '.':
			if i == 0 || i == len(name)-1 || name[i-1] == '.' {
				return fmt.Errorf("message type %q: empty part", name)
			}
			dot++
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
		default:
			return fmt.Errorf("message type %q: only a-z, 0-9, '_' and '.' are allowed", name)
		}
	}
	if dot == 0 {
		return fmt.Errorf("message type %q: want <plugin>.<verb>", name)
	}
	if strings.HasPrefix(name, ReservedPrefix) {
		return fmt.Errorf("message type %q: the prefix %q is reserved for the frame channel's own requests", name, ReservedPrefix)
	}
	return nil
}

// CheckMessageType validates what a plugin describes of a type: its name
// (CheckTypeName) and the namespaces it declares it changes (changes,
// may_change), which must be known (ns.Namespaces), listed once, and
// in only one of the two lists.
func CheckMessageType(t *MessageType) error {
	if err := CheckTypeName(t.Name); err != nil {
		return err
	}
	for _, l := range []struct {
		what  string
		names []string
	}{{"changes", t.Changes}, {"may_change", t.MayChange}} {
		if _, err := ns.ParseNamespaces(l.names); err != nil {
			return fmt.Errorf("message type %s: %s: %w", t.Name, l.what, err)
		}
		for i, n := range l.names {
			if slices.Contains(l.names[:i], n) {
				return fmt.Errorf("message type %s: %s: namespace %q listed twice", t.Name, l.what, n)
			}
		}
	}
	for _, n := range t.MayChange {
		if slices.Contains(t.Changes, n) {
			return fmt.Errorf("message type %s: namespace %q is in both changes and may_change", t.Name, n)
		}
	}
	return nil
}

// CheckPathSyntax validates a path a request names: absolute, already
// clean (no "..", "//" or trailing "/"), free of NUL bytes and shorter
// than MaxPathLen. The error is EINVAL (ENAMETOOLONG for a long one).
func CheckPathSyntax(p string) error {
	switch {
	case p == "":
		return Errorf(syscall.EINVAL, "path is empty")
	case len(p) >= MaxPathLen:
		return Errorf(syscall.ENAMETOOLONG, "path is longer than %d bytes", MaxPathLen-1)
	case strings.IndexByte(p, 0) >= 0:
		return Errorf(syscall.EINVAL, "path contains a NUL byte")
	case !filepath.IsAbs(p):
		return Errorf(syscall.EINVAL, "path %q is not absolute", p)
	case filepath.Clean(p) != p:
		return Errorf(syscall.EINVAL, "path %q is not clean (want %q)", p, filepath.Clean(p))
	}
	return nil
}
