// Package safefile checks that a file nsplug acts on with root's
// privilege, a plugin executable it runs in every target or a
// configuration it obeys, could not have been written or replaced by
// anyone but root or nsplug's own user: whoever could would run their
// code as root, or give themselves any rule.
package safefile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Check returns nil when path is a regular file that it, and every
// directory above it, is owned by root or by this process's user, and
// writable by nobody else: the file not by group or others, a directory
// not unless it is sticky (there others may add files, but not rename or
// remove one they do not own). With follow, a symbolic link is followed
// and the directories of both the link and what it names are checked (a
// Kubernetes ConfigMap's files are links); without it, a link is refused.
func Check(path string, follow bool) error {
	path, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	st, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if st.Mode()&fs.ModeSymlink != 0 && follow {
		if err := dirs(filepath.Dir(path)); err != nil {
			return err
		}
		if path, err = filepath.EvalSymlinks(path); err != nil {
			return err
		}
		if st, err = os.Lstat(path); err != nil {
			return err
		}
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("it is not a regular file (%s)", Kind(st.Mode()))
	}
	if err := owned(path, st, false); err != nil {
		return err
	}
	return dirs(filepath.Dir(path))
}

// dirs checks dir and every directory above it.
func dirs(dir string) error {
	for {
		st, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if err := owned(dir, st, true); err != nil {
			return err
		}
		up := filepath.Dir(dir)
		if up == dir {
			return nil
		}
		dir = up
	}
}

func owned(path string, st fs.FileInfo, dir bool) error {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return errors.New("no owner known for " + path)
	}
	if sys.Uid != 0 && int(sys.Uid) != os.Geteuid() {
		return &UnsafeError{fmt.Sprintf("%s is owned by uid %d, neither root nor this process's user", path, sys.Uid)}
	}
	if st.Mode().Perm()&0o022 != 0 && !(dir && st.Mode()&fs.ModeSticky != 0) {
		return &UnsafeError{fmt.Sprintf("%s is writable by group or others (mode %v)", path, st.Mode().Perm())}
	}
	return nil
}

// An UnsafeError is Check's error for a file, or a directory above it,
// that someone else owns or may write; its other errors are the file's
// own (missing, not a regular file).
type UnsafeError struct{ msg string }

func (e *UnsafeError) Error() string { return e.msg }

// Kind names what a file that is not a regular one is, for errors.
func Kind(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m.IsDir():
		return "a directory"
	}
	return "mode " + m.String()
}
