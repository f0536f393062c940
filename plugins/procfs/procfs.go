// Package procfs is the built-in plugin that reads and writes files as a
// target sees them: /proc and /sys above all, but any path in the target's
// mount namespace (within the configured allowed roots).
//
// It is written with the public sdk only, as a third-party plugin would be.
//
// Paths under /proc and /sys are resolved in fresh procfs/sysfs mounts of
// the target's pid and net namespaces when the plugin is configured with
// fresh_mounts (so reads work against targets without a /proc of their own,
// and a target cannot redirect them by mounting over its /proc); other
// paths, and all paths without fresh mounts, are resolved in the target's
// own mount namespace. Either way resolution stays inside the allowed root
// a path names and never follows a magic link (handler.Env.Open).
//
// procfs.write of a file of procfs, sysfs or another kernel filesystem
// is refused when it would change the host's state: see hostwrite.go.
package procfs

import (
	"context"
	"errors"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/plugins/internal/sysctlns"
	"github.com/nsplug/nsplug/sdk/handler"
)

// DefaultMaxReadBytes bounds one read unless options.max_read_bytes says otherwise.
const DefaultMaxReadBytes = 1 << 20

// Options are the plugin's [plugin.options], checked when it is loaded.
type Options struct {
	MaxReadBytes int64 `json:"max_read_bytes"`
	// AllowHostWrites are files of procfs, sysfs and the other kernel
	// filesystems that procfs.write may write even though the write
	// changes the host's state (see hostwrite.go): each an absolute path
	// as if the filesystem were mounted at its usual place
	// ("/proc/sys/vm/overcommit_memory", "/proc/sysrq-trigger",
	// "/sys/kernel/mm"), allowing that file and everything beneath it.
	AllowHostWrites []string `json:"allow_host_writes"`
}

func checkOptions(o *Options) error {
	if o.MaxReadBytes <= 0 || o.MaxReadBytes > handler.MaxMessageBytes/2 {
		// Base64 makes the response a third larger than the data.
		return handler.OptionErrorf("max_read_bytes", "must be between 1 and %d, got %d", handler.MaxMessageBytes/2, o.MaxReadBytes)
	}
	for i, a := range o.AllowHostWrites {
		key := "allow_host_writes[" + strconv.Itoa(i) + "]"
		if err := handler.CheckPathSyntax(a); err != nil {
			return handler.OptionErrorf(key, "%s", handler.AsError(err).Message)
		}
		if a != "/" && a != "/proc" && a != "/sys" && !strings.HasPrefix(a, "/proc/") && !strings.HasPrefix(a, "/sys/") {
			return handler.OptionErrorf(key, "%q is not under /proc or /sys", a)
		}
	}
	return nil
}

// Plugin returns the procfs plugin.
func Plugin() *handler.Plugin {
	return &handler.Plugin{
		Name:      "procfs",
		Configure: handler.TypedOptions(Options{MaxReadBytes: DefaultMaxReadBytes}, checkOptions),
		Handlers: []handler.Handler{
			handler.Handle("procfs.stat", "lstat a path: type, mode, size, owner, inode, times", stat),
			handler.Handle("procfs.read", "read a file (path, offset, len; len 0 = whole file up to max_read_bytes)", read),
			handler.Handle("procfs.write", "write data to a file at an offset (no create, no truncate)", write).Changes("mnt").MayChange(sysctlns.Namespaces()...),
			handler.Handle("procfs.readdir", "list a directory: name, type, inode", readdir),
			handler.Handle("procfs.readlink", "read a symbolic link", readlink),
		},
	}
}

// PathRequest names one path. Paths, names and link targets are
// handler.Name: bytes, a plain JSON string when UTF-8, {"base64": "..."} when not.
type PathRequest struct {
	Path handler.Name `json:"path"`
}

// StatResponse is the lstat of a path.
type StatResponse struct {
	Path  handler.Name `json:"path"`
	Type  string       `json:"type"` // file, dir, symlink, char, block, fifo, socket
	Mode  uint32       `json:"mode"` // permission bits and setuid/setgid/sticky
	Size  int64        `json:"size"`
	UID   uint32       `json:"uid"`
	GID   uint32       `json:"gid"`
	Nlink uint64       `json:"nlink"`
	Inode uint64       `json:"inode"`
	Dev   uint64       `json:"dev"`
	Rdev  uint64       `json:"rdev,omitempty"`
	Atime int64        `json:"atime_ns"`
	Mtime int64        `json:"mtime_ns"`
	Ctime int64        `json:"ctime_ns"`
}

// ReadRequest reads Len bytes at Offset; Len 0 reads to the end. Offset 0
// reads with read(2), so a FIFO or another file that cannot seek works.
type ReadRequest struct {
	Path   handler.Name `json:"path"`
	Offset int64        `json:"offset"`
	Len    int64        `json:"len"`
}

// ReadResponse carries the bytes read (base64 in JSON).
type ReadResponse struct {
	Data []byte `json:"data"`
}

// WriteRequest writes Data at Offset of an existing file.
type WriteRequest struct {
	Path   handler.Name `json:"path"`
	Offset int64        `json:"offset"`
	Data   []byte       `json:"data"`
}

// WriteResponse says how many bytes were written.
type WriteResponse struct {
	Written int `json:"written"`
}

// DirEntry is one directory entry.
type DirEntry struct {
	Name  handler.Name `json:"name"`
	Type  string       `json:"type"`
	Inode uint64       `json:"inode"`
}

// ReaddirResponse lists a directory, sorted by name.
type ReaddirResponse struct {
	Entries []DirEntry `json:"entries"`
}

// ReadlinkResponse is a link's target.
type ReadlinkResponse struct {
	Target handler.Name `json:"target"`
}

// open opens path as the target sees it, through the sdk: inside the
// allowed root it lies in, never through a magic link, and under /proc and
// /sys beneath the fresh mounts when the plugin has them.
func open(ctx context.Context, path handler.Name, flags int) (*os.File, error) {
	return handler.EnvFrom(ctx).Open(string(path), flags)
}

func stat(ctx context.Context, req PathRequest) (StatResponse, error) {
	f, err := open(ctx, req.Path, unix.O_PATH|unix.O_NOFOLLOW)
	if err != nil {
		return StatResponse{}, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return StatResponse{}, &os.PathError{Op: "stat", Path: string(req.Path), Err: err}
	}
	return StatResponse{
		Path: req.Path, Type: fileType(st.Mode), Mode: st.Mode & 0o7777, Size: st.Size,
		UID: st.Uid, GID: st.Gid, Nlink: st.Nlink, Inode: st.Ino, Dev: st.Dev, Rdev: st.Rdev,
		Atime: st.Atim.Nano(), Mtime: st.Mtim.Nano(), Ctime: st.Ctim.Nano(),
	}, nil
}

func fileType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFCHR:
		return "char"
	case unix.S_IFBLK:
		return "block"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	}
	return "unknown"
}

func read(ctx context.Context, req ReadRequest) (ReadResponse, error) {
	limit := handler.OptionsFrom[Options](ctx).MaxReadBytes
	if req.Offset < 0 || req.Len < 0 {
		return ReadResponse{}, handler.Errorf(syscall.EINVAL, "offset and len must not be negative")
	}
	if req.Len > limit {
		return ReadResponse{}, handler.Errorf(syscall.EINVAL, "len %d exceeds max_read_bytes (%d)", req.Len, limit)
	}
	n := req.Len
	if n == 0 {
		n = limit + 1 // one more, to tell a file that is too large
	}
	// A sysctl, the most read of files, without waking the Go runtime
	// (Env.ReadProcSys). Any failure is left to the read below, which
	// fails the same way and says so in procfs.read's words.
	env := handler.EnvFrom(ctx)
	if rel, ok := strings.CutPrefix(string(req.Path), "/proc/sys/"); ok && req.Offset == 0 {
		if data, err := env.ReadProcSys(rel, int(min(n, limit))); err == nil {
			return ReadResponse{Data: data}, nil
		}
	}
	f, err := open(ctx, req.Path, unix.O_RDONLY)
	if err != nil {
		return ReadResponse{}, err
	}
	defer f.Close()
	// procfs files report size 0: read until EOF, never trust Stat.
	// Start small: most procfs files are a few bytes, and zeroing a large
	// buffer per request was a third of a warm read's cost.
	buf := make([]byte, 0, min(n, 512))
	// Offset 0 reads with read(2): a FIFO, a socket or a character
	// device cannot seek, and pread(2) of one is ESPIPE.
	var r io.Reader = io.LimitReader(f, n)
	if req.Offset > 0 {
		r = io.NewSectionReader(f, req.Offset, n)
	}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		m, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return ReadResponse{}, err
		}
	}
	if req.Len == 0 && int64(len(buf)) > limit {
		return ReadResponse{}, handler.Errorf(syscall.EFBIG, "%s is larger than max_read_bytes (%d); read it in parts with offset and len", req.Path, limit)
	}
	return ReadResponse{Data: buf}, nil
}

func write(ctx context.Context, req WriteRequest) (WriteResponse, error) {
	if req.Offset < 0 {
		return WriteResponse{}, handler.Errorf(syscall.EINVAL, "offset must not be negative")
	}
	f, err := open(ctx, req.Path, unix.O_WRONLY)
	if err != nil {
		return WriteResponse{}, err
	}
	defer f.Close()
	if err := checkHostWrite(ctx, f, req.Path); err != nil {
		return WriteResponse{}, err
	}
	// One write call: /proc/sys files take the value from a single write.
	// Offset 0 uses write(2): many /proc files refuse pwrite (ESPIPE).
	var n int
	if req.Offset == 0 {
		n, err = f.Write(req.Data)
	} else {
		n, err = f.WriteAt(req.Data, req.Offset)
	}
	if err != nil {
		return WriteResponse{Written: n}, err
	}
	return WriteResponse{Written: n}, nil
}

func readdir(ctx context.Context, req PathRequest) (ReaddirResponse, error) {
	f, err := open(ctx, req.Path, unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return ReaddirResponse{}, err
	}
	defer f.Close()
	ents, err := f.ReadDir(-1)
	if err != nil {
		return ReaddirResponse{}, err
	}
	out := ReaddirResponse{Entries: make([]DirEntry, 0, len(ents))}
	for _, e := range ents {
		de := DirEntry{Name: handler.Name(e.Name()), Type: fileType(uint32(fileModeToUnix(e.Type())))}
		var st unix.Stat_t
		if unix.Fstatat(int(f.Fd()), e.Name(), &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
			de.Inode = st.Ino
		}
		out.Entries = append(out.Entries, de)
	}
	sort.Slice(out.Entries, func(i, j int) bool { return out.Entries[i].Name < out.Entries[j].Name })
	return out, nil
}

func fileModeToUnix(m os.FileMode) uint32 {
	switch {
	case m&os.ModeDir != 0:
		return unix.S_IFDIR
	case m&os.ModeSymlink != 0:
		return unix.S_IFLNK
	case m&os.ModeCharDevice != 0:
		return unix.S_IFCHR
	case m&os.ModeDevice != 0:
		return unix.S_IFBLK
	case m&os.ModeNamedPipe != 0:
		return unix.S_IFIFO
	case m&os.ModeSocket != 0:
		return unix.S_IFSOCK
	}
	return unix.S_IFREG
}

func readlink(ctx context.Context, req PathRequest) (ReadlinkResponse, error) {
	f, err := open(ctx, req.Path, unix.O_PATH|unix.O_NOFOLLOW)
	if err != nil {
		return ReadlinkResponse{}, err
	}
	defer f.Close()
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(int(f.Fd()), "", buf)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			err = unix.EINVAL // readlink(2) of a non-link
		}
		return ReadlinkResponse{}, &os.PathError{Op: "readlink", Path: string(req.Path), Err: err}
	}
	return ReadlinkResponse{Target: handler.Name(buf[:n])}, nil
}
