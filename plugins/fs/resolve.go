package fs

import (
	"errors"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sdk/handler"
)

// maxSymlinks is the kernel's limit on symbolic links followed while
// resolving one path (MAXSYMLINKS); past it the error is ELOOP, as from
// the kernel.
const maxSymlinks = 40

// node is a resolved path: a directory (an O_PATH descriptor) and the
// name of the final component inside it, to be used with *at system calls
// and AT_SYMLINK_NOFOLLOW. A name of "." means the directory itself.
type node struct {
	dir  int
	name string
	path string // as the request named it, for messages
}

func (n *node) close() { unix.Close(n.dir) }

// resolve validates a request path and resolves it as the target sees it.
//
// Every directory on the way is opened with openat2(RESOLVE_NO_MAGICLINKS),
// and a final symbolic link (unless nofollow) is read and followed here,
// not by the kernel. The operation itself then acts on (dir, name) with
// AT_SYMLINK_NOFOLLOW. So no part of the path, whatever the target plants
// and whenever it swaps it, is resolved through a /proc magic link such as
// /proc/1/root or /proc/self/fd/N: those could lead out of the target's
// root into the host's when the handler is more privileged than the
// target's root (the user namespace not joined, say). Ordinary symbolic
// links, absolute ones included, resolve inside the target's root, which
// is this process's root.
func resolve(env *handler.Env, path string, nofollow bool) (*node, error) {
	path, err := env.CheckPath(path)
	if err != nil {
		return nil, err
	}
	start, rest := unix.AT_FDCWD, path
	var n *node
	for hops := 0; ; hops++ {
		dir, name, err := openParent(start, rest)
		if n != nil {
			n.close() // the directory a relative link was resolved from
		}
		if err != nil {
			return nil, handler.Errorf(errnoOf(err), "resolving %s: %v%s", path, err, magicHint(err))
		}
		n = &node{dir: dir, name: name, path: path}
		if nofollow || name == "." {
			return n, nil
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil || st.Mode&unix.S_IFMT != unix.S_IFLNK {
			// Not a link (or missing: the operation reports that).
			return n, nil
		}
		if hops == maxSymlinks {
			n.close()
			return nil, handler.Errorf(unix.ELOOP, "resolving %s: more than %d symbolic links", path, maxSymlinks)
		}
		// A magic link reads as a path too ("/" for /proc/1/root), which
		// would be followed as text. Refuse it as the kernel's own
		// RESOLVE_NO_MAGICLINKS would: openat2 of the link does that.
		if fd, err := unix.Openat2(dir, name, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_NO_MAGICLINKS,
		}); err == nil {
			unix.Close(fd)
		} else if errors.Is(err, unix.ELOOP) {
			n.close()
			return nil, handler.Errorf(unix.ELOOP, "resolving %s: %v%s", path, err, magicHint(err))
		}
		target, err := readlinkat(dir, name)
		if err != nil {
			n.close()
			return nil, handler.Errorf(errnoOf(err), "resolving %s: readlink: %v", path, err)
		}
		if target == "" {
			n.close()
			return nil, handler.Errorf(unix.ENOENT, "resolving %s: empty symbolic link", path)
		}
		start, rest = dir, target
		if strings.HasPrefix(target, "/") {
			start = unix.AT_FDCWD
		}
		// n stays open until the target has been resolved from it.
	}
}

// openParent opens the directory holding the last component of p
// (relative to start unless absolute) and returns it with that component.
// A path whose last component is "." or "..", or that ends in "/", names
// a directory: it is opened itself and the component is ".".
func openParent(start int, p string) (int, string, error) {
	dirPath, name := ".", p
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		dirPath, name = p[:i], p[i+1:]
		if dirPath == "" {
			dirPath = "/"
		}
	}
	if name == "" || name == "." || name == ".." {
		dirPath, name = p, "."
	}
	fd, err := unix.Openat2(start, dirPath, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, "", err
	}
	return fd, name, nil
}

func readlinkat(dir int, name string) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(dir, name, buf)
	if err != nil {
		return "", err
	}
	if n == len(buf) {
		return "", unix.ENAMETOOLONG
	}
	return string(buf[:n]), nil
}

func errnoOf(err error) unix.Errno {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return unix.EIO
}

func magicHint(err error) string {
	if errors.Is(err, unix.ELOOP) {
		return " (a symbolic link loop, or a /proc magic link, which is never followed)"
	}
	return ""
}
