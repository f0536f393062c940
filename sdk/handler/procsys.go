package handler

import (
	"bytes"
	"encoding/binary"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ReadProcSys reads the /proc/sys file that rel names, relative to
// /proc/sys ("kernel/hostname"), as the target sees it: from offset 0
// until end of file, at most max bytes (EFBIG beyond). The path is checked
// as CheckPath checks "/proc/sys/"+rel. With a fresh procfs (Proc) the
// file is that procfs's; otherwise it is the one at /proc/sys in the
// target's mounts, and a file something is mounted on, or a /proc/sys
// that is not procfs's own (a FUSE file system emulating it, say), is not
// read here but refused with EXDEV: read it through Open, which follows
// the target's mounts.
//
// It is the fast way to read a sysctl, and the reason it exists is how
// the Go runtime wakes up. A process that waited for its next request has
// its sysmon thread in a deep sleep, and the first system call made
// through the runtime (every os and x/sys/unix call) wakes it: a futex
// wake, a thread that runs and naps in 20 µs steps while the request is
// served, and, on a machine whose idle CPUs halt, a CPU to wake. That was
// most of a warm read's cost, the more so the longer the process had
// waited (a process per target waits as long as the other targets take).
// ReadProcSys makes its system calls raw, unseen by the runtime, so that
// sysmon sleeps on. A raw system call that blocks holds the process's
// only P until it returns, which is why only these files are read so:
// the path is resolved beneath a /proc/sys directory known to be
// procfs's sysctl root, with no link and no mount crossed, and reading a
// sysctl is the kernel formatting a value it holds, never a wait on
// anything the target controls (no FUSE, no other process's memory).
//
// A caller that wants its own message for a failure can repeat the read
// through Open, which fails the same way.
func (e *Env) ReadProcSys(rel string, max int) ([]byte, error) {
	if max <= 0 {
		return nil, Errorf(syscall.EINVAL, "ReadProcSys %s: limit %d is not positive", rel, max)
	}
	if _, err := e.CheckPath("/proc/sys/" + rel); err != nil {
		return nil, err
	}
	under := rel // beneath the target's /proc/sys
	if e.Proc != nil {
		under = "sys/" + rel // beneath the fresh procfs
	}
	path, err := unix.BytePtrFromString(under)
	if err != nil {
		return nil, Errorf(syscall.EINVAL, "ReadProcSys %q: %v", rel, err)
	}
	how := unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_NOCTTY,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	}
	var fd uintptr
	var errno syscall.Errno
	if e.Proc != nil {
		// A fresh procfs has nothing mounted on it.
		fd, errno = rawOpenat2(int(e.Proc.Fd()), path, &how)
	} else {
		fd, errno = targetSys.open(path, &how)
	}
	if errno != 0 {
		return nil, Errorf(errno, "opening /proc/sys/%s: %v", rel, errno)
	}
	defer rawSyscall(unix.SYS_CLOSE, int(fd), nil, 0, 0)
	// Most sysctls are a few bytes: start small, grow to the limit.
	buf := make([]byte, 0, min(max+1, 512))
	for len(buf) <= max {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		room := buf[len(buf):min(cap(buf), max+1)]
		n, errno := rawSyscall(unix.SYS_READ, int(fd), unsafe.Pointer(&room[0]), uintptr(len(room)), 0)
		if errno != 0 {
			return nil, Errorf(errno, "reading /proc/sys/%s: %v", rel, errno)
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+int(n)]
	}
	return nil, Errorf(syscall.EFBIG, "/proc/sys/%s is larger than the %d-byte limit", rel, max)
}

// rawOpenat2 is openat2(2) as a raw system call, again while it is
// interrupted. Both pointers become uintptrs in the system call's own
// argument list, where the compiler keeps what they point to in place.
func rawOpenat2(dir int, path *byte, how *unix.OpenHow) (uintptr, syscall.Errno) {
	for {
		fd, _, errno := syscall.RawSyscall6(unix.SYS_OPENAT2, uintptr(dir), uintptr(unsafe.Pointer(path)), uintptr(unsafe.Pointer(how)), unsafe.Sizeof(*how), 0, 0)
		if errno != syscall.EINTR {
			return fd, errno
		}
	}
}

// targetSys is the process's /proc/sys as its target sees it.
var targetSys = &sysView{dir: -1, mounts: -1}

// A sysView holds a descriptor of the target's /proc/sys, to resolve
// sysctls beneath without walking the target's file system (whose root,
// a FUSE mount in rootless containers, may block a lookup) on every
// request. What it holds stays true while the mount table does: it
// watches its process's mounts file, which the kernel marks (POLLPRI)
// whenever a mount is made or removed in the namespace, and looks again
// after any change. It is only taken where no symbolic link leads to it,
// so a link on the target's root file system cannot redirect /proc/sys
// without a mount event.
type sysView struct {
	mu     sync.Mutex
	dir    int  // O_PATH descriptor of the sysctl root the target sees; -1: none
	mounts int  // the process's mounts file, polled for changes; -1: not open
	looked bool // a view was looked for since the last change (dir < 0: none found)
	// Without a watch (the target had no procfs at /proc when looked
	// at: it may mount one later), no change is seen: look again, at
	// most once a second.
	lookedAt time.Time
}

// open opens path beneath the view. Without a view it is EXDEV: the
// target's /proc/sys is not procfs's sysctl root, or cannot be known to be.
func (v *sysView) open(path *byte, how *unix.OpenHow) (uintptr, syscall.Errno) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.mounts >= 0 && v.changed() || v.mounts < 0 && time.Since(v.lookedAt) > time.Second {
		v.drop()
	}
	if !v.looked {
		v.look()
	}
	if v.dir < 0 {
		return 0, syscall.EXDEV
	}
	return rawOpenat2(v.dir, path, how)
}

// changed reports whether the mount table changed since the last poll
// (which clears the mark), without waiting.
func (v *sysView) changed() bool {
	fds := []unix.PollFd{{Fd: int32(v.mounts), Events: unix.POLLPRI}}
	var ts unix.Timespec
	for {
		_, _, errno := syscall.RawSyscall6(unix.SYS_PPOLL, uintptr(unsafe.Pointer(&fds[0])), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
		if errno == syscall.EINTR {
			continue
		}
		// An error, or a mark: look again.
		return errno != 0 || fds[0].Revents&(unix.POLLPRI|unix.POLLERR|unix.POLLNVAL) != 0
	}
}

func (v *sysView) drop() {
	if v.dir >= 0 {
		unix.Close(v.dir)
	}
	v.dir, v.looked = -1, false
}

// look finds the target's /proc/sys and keeps it if it is procfs's sysctl
// root. These system calls are ordinary ones: they run once, and again
// after a mount change.
func (v *sysView) look() {
	v.looked, v.lookedAt = true, time.Now()
	root, err := processRoot()
	if err != nil {
		return
	}
	proc, ok := openProcfs(root, "proc", unix.O_RDONLY|unix.O_DIRECTORY,
		unix.RESOLVE_IN_ROOT|unix.RESOLVE_NO_SYMLINKS|unix.RESOLVE_NO_MAGICLINKS, procRootIno)
	if !ok {
		return
	}
	defer unix.Close(proc)
	if v.mounts < 0 {
		// First the watch, then the walk: a change during the walk is
		// seen by the next poll. thread-self is procfs's own link; no mount
		// may be crossed on the way.
		m, ok := openProcfs(proc, "thread-self/mounts", unix.O_RDONLY,
			unix.RESOLVE_BENEATH|unix.RESOLVE_NO_MAGICLINKS|unix.RESOLVE_NO_XDEV, 0)
		if !ok {
			return
		}
		v.mounts = m
	}
	// The sysctl root's inode number, as procfs's root lists it
	// (readdir does not follow mounts), against what /proc/sys is now.
	want, ok := childIno(proc, "sys")
	if !ok {
		return
	}
	if sys, ok := openProcfs(proc, "sys", unix.O_PATH|unix.O_DIRECTORY,
		unix.RESOLVE_BENEATH|unix.RESOLVE_NO_SYMLINKS|unix.RESOLVE_NO_MAGICLINKS, want); ok {
		v.dir = sys
	}
}

// openProcfs opens path beneath dir and keeps it only if it is on a
// procfs, with inode number ino unless ino is 0.
func openProcfs(dir int, path string, flags int, resolve uint64, ino uint64) (int, bool) {
	fd, err := unix.Openat2(dir, path, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: resolve})
	if err != nil {
		return -1, false
	}
	if !isProcfs(fd, ino) {
		unix.Close(fd)
		return -1, false
	}
	return fd, true
}

// procRootIno is the inode number of every procfs's root (PROC_ROOT_INO).
const procRootIno = 1

// isProcfs reports whether fd is on a procfs, with inode number ino
// unless ino is 0.
func isProcfs(fd int, ino uint64) bool {
	var fs unix.Statfs_t
	if unix.Fstatfs(fd, &fs) != nil || fs.Type != unix.PROC_SUPER_MAGIC {
		return false
	}
	if ino == 0 {
		return true
	}
	var st unix.Stat_t
	return unix.Fstat(fd, &st) == nil && st.Ino == ino
}

// childIno returns the inode number of dir's entry name as dir lists it.
// procfs lists its own entries before the processes.
func childIno(dir int, name string) (uint64, bool) {
	buf := make([]byte, 8<<10)
	for {
		n, err := unix.Getdents(dir, buf)
		if err != nil || n <= 0 {
			return 0, false
		}
		for b := buf[:n]; len(b) >= 19; {
			// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name
			reclen := int(binary.NativeEndian.Uint16(b[16:]))
			if reclen < 19 || reclen > len(b) {
				return 0, false
			}
			ent := b[19:reclen]
			if i := bytes.IndexByte(ent, 0); i >= 0 {
				ent = ent[:i]
			}
			if string(ent) == name {
				return binary.NativeEndian.Uint64(b), true
			}
			b = b[reclen:]
		}
	}
}
