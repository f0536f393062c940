package core

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// sealedExecutable is an in-memory, sealed copy of a plugin executable.
//
// Plugins are started from the copy, never from the path: the sha256 in the
// configuration is checked on the very bytes that get executed (no window
// between check and use), and /proc/PID/exe of a plugin names an anonymous
// memfd rather than a host file a process in the target might reach (the
// runc CVE-2019-5736 class of bug).
type sealedExecutable struct {
	file   *os.File
	sha256 string
}

// sealExecutable copies path into a sealed memfd. When want is not empty,
// the copy's sha256 must equal it. The file must be a regular, executable
// file of at most max bytes: it is opened without blocking (a FIFO or a
// device at path cannot stall the core) and its type and size are checked
// on the opened descriptor, before anything is read.
func sealExecutable(name, path, want string, max int64) (*sealedExecutable, error) {
	srcFD, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: %w", name, &os.PathError{Op: "open", Path: path, Err: err})
	}
	src := os.NewFile(uintptr(srcFD), path)
	defer src.Close()
	st, err := src.Stat()
	switch {
	case err != nil:
		return nil, fmt.Errorf("plugin %s: %w", name, err)
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("plugin %s: %s is not a regular file (%s)", name, path, fileKind(st.Mode()))
	case st.Mode().Perm()&0o111 == 0:
		return nil, fmt.Errorf("plugin %s: %s is not executable (mode %v)", name, path, st.Mode().Perm())
	case st.Size() > max:
		return nil, fmt.Errorf("plugin %s: %s is %d bytes, more than max_plugin_bytes (%d)", name, path, st.Size(), max)
	}
	fd, err := unix.MemfdCreate("nsplug-"+name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_EXEC)
	if err == unix.EINVAL { // kernels before 6.3 do not know MFD_EXEC
		fd, err = unix.MemfdCreate("nsplug-"+name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return nil, fmt.Errorf("plugin %s: memfd_create: %w", name, err)
	}
	// os/exec places a child's extra files at fds 3..5 before exec, so the
	// memfd, named by /proc/self/fd/N, must sit above them.
	high, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 16)
	unix.Close(fd)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: %w", name, err)
	}
	mem := os.NewFile(uintptr(high), "memfd:nsplug-"+name)
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

// fileKind names the type of a file that is not a regular one.
func fileKind(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "a FIFO"
	case m&os.ModeSocket != 0:
		return "a socket"
	case m&os.ModeCharDevice != 0:
		return "a character device"
	case m&os.ModeDevice != 0:
		return "a block device"
	case m.IsDir():
		return "a directory"
	}
	return "mode " + m.String()
}

// path names the copy for execve in a child of this process.
func (e *sealedExecutable) path() string {
	return "/proc/self/fd/" + strconv.Itoa(int(e.file.Fd()))
}

func (e *sealedExecutable) close() { e.file.Close() }

// checksumError is a sealed copy whose sha256 is not the configured one:
// a problem of the sha256 key, where others are of the path.
type checksumError struct{ error }
