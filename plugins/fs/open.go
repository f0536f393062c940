package fs

import (
	"context"
	"os"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sdk/handler"
)

// OpenRequest opens a file inside the target with openat2(2) semantics.
type OpenRequest struct {
	Path handler.Name `json:"path"`
	// Flags by name: rdonly (default), wronly, rdwr, append, creat, excl,
	// trunc, nofollow, directory, nonblock, noatime, path, tmpfile, sync,
	// dsync, noctty. The descriptor is always close-on-exec.
	Flags []string `json:"flags"`
	// Mode for creat and tmpfile (permission bits; umask applies).
	Mode uint32 `json:"mode"`
	// Resolve flags by name: in_root, beneath, no_magiclinks,
	// no_symlinks, no_xdev, cached. in_root and beneath resolve relative
	// to the target's root (the handler's root, or the credentials' one).
	Resolve []string `json:"resolve"`
}

// OpenResponse describes the descriptor handed back with the response.
type OpenResponse struct {
	// Flags are the file status flags of the open file (fcntl F_GETFL).
	Flags int `json:"flags"`
}

var openFlags = map[string]uint64{
	"rdonly": unix.O_RDONLY, "wronly": unix.O_WRONLY, "rdwr": unix.O_RDWR,
	"append": unix.O_APPEND, "creat": unix.O_CREAT, "excl": unix.O_EXCL,
	"trunc": unix.O_TRUNC, "nofollow": unix.O_NOFOLLOW, "directory": unix.O_DIRECTORY,
	"nonblock": unix.O_NONBLOCK, "noatime": unix.O_NOATIME, "path": unix.O_PATH,
	"tmpfile": unix.O_TMPFILE, "sync": unix.O_SYNC, "dsync": unix.O_DSYNC, "noctty": unix.O_NOCTTY,
}

var resolveFlags = map[string]uint64{
	"in_root": unix.RESOLVE_IN_ROOT, "beneath": unix.RESOLVE_BENEATH,
	"no_magiclinks": unix.RESOLVE_NO_MAGICLINKS, "no_symlinks": unix.RESOLVE_NO_SYMLINKS,
	"no_xdev": unix.RESOLVE_NO_XDEV, "cached": 0x20, // RESOLVE_CACHED (Linux 5.12), not in x/sys yet
}

func flagNames(m map[string]uint64) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func parseFlags(what string, names []string, table map[string]uint64) (uint64, error) {
	var v uint64
	for _, n := range names {
		f, ok := table[n]
		if !ok {
			return 0, handler.Errorf(syscall.EINVAL, "unknown %s flag %q (known: %s)", what, n, flagNames(table))
		}
		v |= f
	}
	return v, nil
}

// open opens a file in the target and hands the descriptor back to the
// caller of the core (sysbox-fs injects such descriptors into a trapped
// process with seccomp's ADDFD).
func open(ctx context.Context, req OpenRequest) (OpenResponse, error) {
	env := handler.EnvFrom(ctx)
	path, err := env.CheckPath(string(req.Path))
	if err != nil {
		return OpenResponse{}, err
	}
	flags, err := parseFlags("open", req.Flags, openFlags)
	if err != nil {
		return OpenResponse{}, err
	}
	resolve, err := parseFlags("resolve", req.Resolve, resolveFlags)
	if err != nil {
		return OpenResponse{}, err
	}
	if req.Mode&^0o7777 != 0 {
		return OpenResponse{}, handler.Errorf(syscall.EINVAL, "mode %#o has bits beyond 07777", req.Mode)
	}
	// A descriptor open for writing changes the file it names, and creat
	// and trunc change files at once (tmpfile needs wronly or rdwr): not
	// a host file. openat2 refuses path with any of them.
	if flags&(unix.O_WRONLY|unix.O_RDWR|unix.O_CREAT|unix.O_TRUNC) != 0 {
		if err := env.RequireJoined("mnt"); err != nil {
			return OpenResponse{}, err
		}
	}
	how := &unix.OpenHow{Flags: flags | unix.O_CLOEXEC, Resolve: resolve}
	if flags&unix.O_CREAT != 0 || flags&unix.O_TMPFILE == unix.O_TMPFILE {
		how.Mode = uint64(req.Mode)
	}
	dirfd, name := unix.AT_FDCWD, path
	if resolve&(unix.RESOLVE_IN_ROOT|unix.RESOLVE_BENEATH) != 0 {
		// Relative to the root: "/" is the target's (or the credentials')
		// root in this process.
		root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return OpenResponse{}, &os.PathError{Op: "open", Path: "/", Err: err}
		}
		defer unix.Close(root)
		dirfd, name = root, strings.TrimPrefix(path, "/")
		if name == "" {
			name = "."
		}
	}
	fd, err := unix.Openat2(dirfd, name, how)
	if err != nil {
		return OpenResponse{}, &os.PathError{Op: "openat2", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		f.Close()
		return OpenResponse{}, err
	}
	if err := env.ReturnFile(f); err != nil {
		f.Close()
		return OpenResponse{}, err
	}
	return OpenResponse{Flags: fl}, nil
}
