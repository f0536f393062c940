package fs

import (
	"errors"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The xattr system calls on (directory fd, name). Linux 6.13 has them as
// getxattrat(2) and friends; on older kernels (ENOSYS) the plain l*xattr
// calls run on a thread of their own whose cwd is the directory. Either way
// the final component is never followed (AT_SYMLINK_NOFOLLOW): resolve has
// already followed what may be followed.

// xattrArgs is the kernel's struct xattr_args.
type xattrArgs struct {
	Value uint64
	Size  uint32
	Flags uint32
}

// haveXattrat is cleared on the first ENOSYS. A variable so tests can
// exercise the fallback.
var haveXattrat atomic.Bool

func init() { haveXattrat.Store(true) }

func bufPtr(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

func getxattrAt(dir int, name, attr string, buf []byte) (int, error) {
	if haveXattrat.Load() {
		p, err := unix.BytePtrFromString(name)
		if err != nil {
			return 0, err
		}
		a, err := unix.BytePtrFromString(attr)
		if err != nil {
			return 0, err
		}
		args := xattrArgs{Value: bufPtr(buf), Size: uint32(len(buf))}
		r, _, e := unix.Syscall6(unix.SYS_GETXATTRAT, uintptr(dir), uintptr(unsafe.Pointer(p)),
			unix.AT_SYMLINK_NOFOLLOW, uintptr(unsafe.Pointer(a)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
		runtime.KeepAlive(buf)
		if e != unix.ENOSYS {
			return int(r), errnoErr(e)
		}
		haveXattrat.Store(false)
	}
	var n int
	err := inDir(dir, func() (err error) {
		n, err = unix.Lgetxattr(name, attr, buf)
		return err
	})
	return n, err
}

func setxattrAt(dir int, name, attr string, value []byte, flags int) error {
	if haveXattrat.Load() {
		p, err := unix.BytePtrFromString(name)
		if err != nil {
			return err
		}
		a, err := unix.BytePtrFromString(attr)
		if err != nil {
			return err
		}
		args := xattrArgs{Value: bufPtr(value), Size: uint32(len(value)), Flags: uint32(flags)}
		_, _, e := unix.Syscall6(unix.SYS_SETXATTRAT, uintptr(dir), uintptr(unsafe.Pointer(p)),
			unix.AT_SYMLINK_NOFOLLOW, uintptr(unsafe.Pointer(a)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
		runtime.KeepAlive(value)
		if e != unix.ENOSYS {
			return errnoErr(e)
		}
		haveXattrat.Store(false)
	}
	return inDir(dir, func() error { return unix.Lsetxattr(name, attr, value, flags) })
}

func listxattrAt(dir int, name string, buf []byte) (int, error) {
	if haveXattrat.Load() {
		p, err := unix.BytePtrFromString(name)
		if err != nil {
			return 0, err
		}
		r, _, e := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dir), uintptr(unsafe.Pointer(p)),
			unix.AT_SYMLINK_NOFOLLOW, uintptr(bufPtr(buf)), uintptr(len(buf)), 0)
		runtime.KeepAlive(buf)
		if e != unix.ENOSYS {
			return int(r), errnoErr(e)
		}
		haveXattrat.Store(false)
	}
	var n int
	err := inDir(dir, func() (err error) {
		n, err = unix.Llistxattr(name, buf)
		return err
	})
	return n, err
}

func removexattrAt(dir int, name, attr string) error {
	if haveXattrat.Load() {
		p, err := unix.BytePtrFromString(name)
		if err != nil {
			return err
		}
		a, err := unix.BytePtrFromString(attr)
		if err != nil {
			return err
		}
		_, _, e := unix.Syscall6(unix.SYS_REMOVEXATTRAT, uintptr(dir), uintptr(unsafe.Pointer(p)),
			unix.AT_SYMLINK_NOFOLLOW, uintptr(unsafe.Pointer(a)), 0, 0)
		if e != unix.ENOSYS {
			return errnoErr(e)
		}
		haveXattrat.Store(false)
	}
	return inDir(dir, func() error { return unix.Lremovexattr(name, attr) })
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// inDir runs fn on a fresh OS thread whose working directory (private to
// it: unshare(CLONE_FS)) is dir, so that fn can name the final component
// relative to it. The thread is never unlocked, so it exits with the
// goroutine and its cwd never serves anything else. Other handlers keep
// running concurrently on other threads.
func inDir(dir int, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			done <- err
			return
		}
		if err := unix.Fchdir(dir); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	err := <-done
	var errno unix.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}
