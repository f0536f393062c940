package core

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/internal/safefile"
)

// sealedExecutable is what a plugin's processes are started from, never
// the path: an executable that no process in a target can modify or
// replace, and that /proc/PID/exe of a plugin names without naming a
// host file a process in the target might reach (the runc CVE-2019-5736
// class of bug). It takes one of two forms:
//
//   - a sealed memfd copy (sealExecutable): the sha256 in the
//     configuration is checked on the very bytes that get executed (no
//     window between check and use). Third-party plugins always run from
//     one. The copy costs a read and a write of the whole file.
//   - the file itself, opened through a read-only overlayfs mount that is
//     attached nowhere (overlayExecutable): nothing is copied. The
//     built-ins run from one of the core's own executable, which the
//     kernel keeps from being written while the core runs it; where the
//     kernel or the core's privileges allow no such mount, from a copy.
type sealedExecutable struct {
	file    *os.File
	sumOnce sync.Once
	sha256  string // of the copy at once; of the overlay's file when first asked (see sum)
}

// sealExecutable copies path into a sealed memfd. When want is not empty,
// the copy's sha256 must equal it. The file must be a regular, executable
// file of at most max bytes: it is opened without blocking (a FIFO or a
// device at path cannot stall the core) and its type and size are checked
// on the opened descriptor, before anything is read.
func sealExecutable(name, path, want string, max int64) (*sealedExecutable, error) {
	src, _, err := openExecutable(name, path, max)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	fd, err := unix.MemfdCreate("nsplug-"+name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_EXEC)
	if err == unix.EINVAL { // kernels before 6.3 do not know MFD_EXEC
		fd, err = unix.MemfdCreate("nsplug-"+name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return nil, fmt.Errorf("plugin %s: memfd_create: %w", name, err)
	}
	mem, err := highFile(fd, "memfd:nsplug-"+name)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: %w", name, err)
	}
	h := sha256.New()
	// The file may grow between fstat and the copy: copy at most one
	// byte more than allowed, to tell.
	n, err := io.Copy(io.MultiWriter(mem, h), io.LimitReader(src, max+1))
	if err == nil && n > max {
		err = fmt.Errorf("it grew beyond max_plugin_bytes (%d)", max)
	}
	if err != nil {
		mem.Close()
		return nil, fmt.Errorf("plugin %s: copying %s: %w", name, path, err)
	}
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(mem.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		mem.Close()
		return nil, fmt.Errorf("plugin %s: sealing: %w", name, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if want != "" && sum != want {
		mem.Close()
		return nil, checksumError{fmt.Errorf("plugin %s: sha256 of %s is %s, the configuration wants %s", name, path, sum, want)}
	}
	return &sealedExecutable{file: mem, sha256: sum}, nil
}

// overlayExecutable opens path through a read-only overlayfs mount of
// its directory made with fsopen/fsmount and never attached (runc 1.2
// protects its own binary this way):
//
//   - the mount is read-only, and so is its superblock, which has no
//     upper layer: no bind mount or remount of it is writable, and an open
//     for writing of the file, through /proc/PID/exe or a descriptor,
//     fails with EROFS;
//   - it is attached to no directory in any mount namespace: the file
//     has no path anyone can open or replace (/proc/PID/exe reads
//     "/NAME"), and no rename over path changes what the descriptor names.
//
// Nothing is copied. The file opened must be the one checked at path
// (same inode, size and times), else this fails and the caller copies.
// below is a directory only root may write to: an overlay without an
// upper layer needs two lower ones, and path's directory goes above it.
// Where the kernel has no overlayfs or the new mount API, or the core may
// not mount (no CAP_SYS_ADMIN), this fails at once.
func overlayExecutable(name, path, below string, max int64) (*sealedExecutable, error) {
	dir, base := filepath.Split(path)
	// The lowerdir list is split at ':' (escaped below); kernels that
	// hand fsconfig strings to the legacy option parser split at ','.
	if strings.ContainsRune(path+below, ',') {
		return nil, fmt.Errorf("plugin %s: %s: a comma in the path", name, path)
	}
	src, want, err := openExecutable(name, path, max)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: fsopen overlay: %w", name, err)
	}
	defer unix.Close(fsfd)
	// The executable's directory on top: a file of its name below
	// cannot mask it.
	lower := escapeLowerDir(dir) + ":" + escapeLowerDir(below)
	if err := unix.FsconfigSetString(fsfd, "lowerdir", lower); err != nil {
		return nil, fmt.Errorf("plugin %s: overlay lowerdir=%s: %w", name, lower, err)
	}
	// Inode numbers stay the lower file's (compared below), and no
	// warning about xino lands in the kernel log; older kernels lack it.
	_ = unix.FsconfigSetString(fsfd, "xino", "off")
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return nil, fmt.Errorf("plugin %s: overlay of %s: %w", name, dir, err)
	}
	mnt, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOSUID)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: fsmount overlay: %w", name, err)
	}
	// The descriptor of the file keeps the mount alive; nothing else does.
	fd, err := unix.Openat(mnt, base, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	unix.Close(mnt)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: opening %s on the overlay: %w", name, base, err)
	}
	f, err := highFile(fd, path)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: %w", name, err)
	}
	var got unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &got); err != nil || !sameFile(&got, want) {
		f.Close()
		return nil, fmt.Errorf("plugin %s: %s changed while it was opened", name, path)
	}
	return &sealedExecutable{file: f}, nil
}

// openExecutable opens path, which must be a regular, executable file of
// at most max bytes, without blocking (a FIFO or a device at path cannot
// stall the core), and checks it on the opened descriptor.
func openExecutable(name, path string, max int64) (*os.File, *unix.Stat_t, error) {
	srcFD, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("plugin %s: %w", name, &os.PathError{Op: "open", Path: path, Err: err})
	}
	src := os.NewFile(uintptr(srcFD), path)
	var raw unix.Stat_t
	st, err := src.Stat()
	if err == nil {
		err = unix.Fstat(srcFD, &raw)
	}
	switch {
	case err != nil:
		err = fmt.Errorf("plugin %s: %w", name, err)
	case !st.Mode().IsRegular():
		err = fmt.Errorf("plugin %s: %s is not a regular file (%s)", name, path, safefile.Kind(st.Mode()))
	case st.Mode().Perm()&0o111 == 0:
		err = fmt.Errorf("plugin %s: %s is not executable (mode %v)", name, path, st.Mode().Perm())
	case st.Size() > max:
		err = fmt.Errorf("plugin %s: %s is %d bytes, more than max_plugin_bytes (%d)", name, path, st.Size(), max)
	}
	if err != nil {
		src.Close()
		return nil, nil, err
	}
	return src, &raw, nil
}

// sameFile reports whether two stats (one through the overlay, whose
// device is its own) are of one file, unchanged.
func sameFile(a, b *unix.Stat_t) bool {
	return a.Ino == b.Ino && a.Mode == b.Mode && a.Size == b.Size && a.Mtim == b.Mtim && a.Ctim == b.Ctim
}

// escapeLowerDir escapes the separators of overlayfs's lowerdir list.
func escapeLowerDir(path string) string {
	return strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace(path)
}

// highFile moves fd above the fds os/exec places a child's extra files
// at (3..5 and up) before exec: the executable, named by
// /proc/self/fd/N, must not be overwritten by one of them.
func highFile(fd int, name string) (*os.File, error) {
	high, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 16)
	unix.Close(fd)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(high), name), nil
}

// path names the copy for execve in a child of this process.
func (e *sealedExecutable) path() string {
	return "/proc/self/fd/" + strconv.Itoa(int(e.file.Fd()))
}

// sum is the sha256 of the executable: for an overlay's file, read
// through the descriptor the first time it is asked for (not at every
// start of the core: hashing 20 MiB would cost more than the copy saves).
// "" if it cannot be read.
func (e *sealedExecutable) sum() string {
	e.sumOnce.Do(func() {
		if e.sha256 != "" {
			return
		}
		f, err := os.Open(e.path()) // opens the O_PATH descriptor's file for reading
		if err != nil {
			return
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err == nil {
			e.sha256 = hex.EncodeToString(h.Sum(nil))
		}
	})
	return e.sha256
}

func (e *sealedExecutable) close() { e.file.Close() }

// checksumError is a sealed copy whose sha256 is not the configured one:
// a problem of the sha256 key, where others are of the path.
type checksumError struct{ error }

// HandlerExecutable is the name of the lean binary that serves nsplug's
// built-ins (cmd/nsplug-handler: the built-ins, the sdk's frame server and
// the nsexec preamble, without the core, gRPC or go-plugin), which `make`
// installs next to bin/nsplug. Found next to the core's own executable, it
// is what built-in processes start from (see Options.Executable): a
// fraction of the core binary's size, and of its start time and memory in
// every instance. It is opened as the core's own executable would be
// (overlayExecutable, or a sealed copy), so no process in a target can
// reach or replace it.
const HandlerExecutable = "nsplug-handler"

// handlerNextTo returns the HandlerExecutable in exe's directory, or ""
// when there is none. One that someone other than root or this process's
// user could have put there or replaced (it, or its directory, owned by
// another user or writable by group or others; not a regular file) is an
// error: the core would run it in every target.
func handlerNextTo(exe string) (string, error) {
	path := filepath.Join(filepath.Dir(exe), HandlerExecutable)
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err := safefile.Check(path, false); err != nil {
		return "", fmt.Errorf("built-ins: refusing %s: %w", path, err)
	}
	return path, nil
}
