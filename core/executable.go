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
// the copy's sha256 must equal it.
func sealExecutable(name, path, want string) (*sealedExecutable, error) {
	src, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("plugin %s: %w", name, err)
	}
	defer src.Close()
	if st, err := src.Stat(); err != nil {
		return nil, fmt.Errorf("plugin %s: %w", name, err)
	} else if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return nil, fmt.Errorf("plugin %s: %s is not an executable file", name, path)
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
	if _, err := io.Copy(io.MultiWriter(mem, h), src); err != nil {
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
		return nil, fmt.Errorf("plugin %s: sha256 of %s is %s, the configuration wants %s", name, path, sum, want)
	}
	return &sealedExecutable{file: mem, sha256: sum}, nil
}

// path names the copy for execve in a child of this process.
func (e *sealedExecutable) path() string {
	return "/proc/self/fd/" + strconv.Itoa(int(e.file.Fd()))
}

func (e *sealedExecutable) close() { e.file.Close() }
