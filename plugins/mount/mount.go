// Package mount is the built-in plugin that changes and inspects a
// target's mount table from inside its mount namespace: tmpfs, proc and
// sysfs mounts, bind mounts, moves, remounts, propagation changes and
// unmounts, as the target's root would make them, visible to the target's
// processes and never to the host.
//
// It is written with the public sdk only, as a third-party plugin would be.
//
// A batch of mounts is applied in order and is all or nothing: when an
// entry fails, the entries before it are undone in reverse order (new
// mounts unmounted, moves moved back, remounts and propagation changes
// restored from what mountinfo said before the change), and the error,
// which keeps the errno of the failing system call, names the entry.
//
// Paths are resolved by the plugin without following symbolic links and
// handed to the kernel as file descriptors (see paths.go), so a target
// cannot redirect a mount outside the allowed roots by swapping a path
// component for a link. The mount table is read from the plugin's own
// fresh procfs, so a FROM-scratch target without /proc works.
package mount

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sdk/handler"
)

// Plugin returns the mount plugin.
func Plugin() *handler.Plugin {
	return &handler.Plugin{
		Name:        "mount",
		FreshMounts: []string{"proc"},
		Handlers: []handler.Handler{
			handler.Handle("mount.mount", "apply a batch of mounts in the target's mount namespace, all or nothing", mountBatch).Changes("mnt"),
			handler.Handle("mount.umount", "unmount a list of mount points in order", umountBatch).Changes("mnt"),
			handler.Handle("mount.info", "the target's mount table, parsed from mountinfo (raw: the text too)", info),
			handler.Handle("mount.inode", "inode, device and mount id of paths (mount points)", inode),
		},
	}
}

// Entry is one mount of a batch. Which operation it is follows from its
// flags, as for mount(2): remount, bind, move, a propagation type, or else
// a new file system.
type Entry struct {
	Source handler.Name `json:"source"`
	Target handler.Name `json:"target"`
	FSType string       `json:"fstype"` // letters, digits, '.', '_', '-'
	Flags  []Flag       `json:"flags"`
	Data   handler.Name `json:"data"` // may name paths (overlay's lowerdir=...)
}

// MountRequest is a batch of mounts.
type MountRequest struct {
	Mounts []Entry `json:"mounts"`
}

// MountResult is the mount an entry made or changed.
type MountResult struct {
	Target  handler.Name `json:"target"`
	MountID int          `json:"mount_id"`
}

// MountResponse lists the results in entry order.
type MountResponse struct {
	Mounts []MountResult `json:"mounts"`
}

// Unmount is one unmount.
type Unmount struct {
	Target handler.Name `json:"target"`
	Flags  []Flag       `json:"flags"`
}

// UmountRequest is a list of unmounts, done in order.
type UmountRequest struct {
	Unmounts []Unmount `json:"unmounts"`
}

// UmountResponse lists the targets unmounted.
type UmountResponse struct {
	Unmounted []handler.Name `json:"unmounted"`
}

// InfoRequest asks for the mount table; Raw adds mountinfo's text.
type InfoRequest struct {
	Raw bool `json:"raw"`
}

// InfoResponse is the mount table in mountinfo order.
type InfoResponse struct {
	Mounts []MountInfo  `json:"mounts"`
	Raw    handler.Name `json:"raw,omitempty"` // bytes: it holds the mount points
}

// InodeRequest names paths, typically mount points.
type InodeRequest struct {
	Paths []handler.Name `json:"paths"`
}

// Inode describes what a path resolves to: for a mount point, the root
// of the topmost mount there.
type Inode struct {
	Path      handler.Name `json:"path"`
	Inode     uint64       `json:"inode"`
	Major     uint32       `json:"major"`
	Minor     uint32       `json:"minor"`
	MountID   int          `json:"mount_id"`
	MountRoot bool         `json:"mount_root"` // the path is a mount point
}

// InodeResponse lists the paths in request order.
type InodeResponse struct {
	Inodes []Inode `json:"inodes"`
}

// mu serialises mount.mount and mount.umount in a plugin process, so a
// batch and its rollback see no other batch's changes half-way.
var mu sync.Mutex

func errnoOf(err error) syscall.Errno {
	if e := handler.AsError(err); e.Errno != 0 {
		return e.Errno
	}
	return syscall.EIO
}

func mountBatch(ctx context.Context, req MountRequest) (MountResponse, error) {
	env := handler.EnvFrom(ctx)
	if len(req.Mounts) == 0 {
		return MountResponse{}, handler.Errorf(syscall.EINVAL, "mount.mount: no mounts given")
	}
	if len(req.Mounts) > MaxBatch {
		return MountResponse{}, handler.Errorf(syscall.EINVAL, "mount.mount: %d mounts, at most %d in a batch", len(req.Mounts), MaxBatch)
	}
	if env.Proc == nil {
		return MountResponse{}, handler.Errorf(syscall.ENOTSUP, "mount.mount: no fresh procfs (is the plugin run by an nsplug core?)")
	}
	steps := make([]*step, len(req.Mounts))
	for i, e := range req.Mounts {
		s, err := plan(env, i, len(req.Mounts), e)
		if err != nil {
			return MountResponse{}, err
		}
		steps[i] = s
	}
	mu.Lock()
	defer mu.Unlock()
	var undos []undo
	resp := MountResponse{Mounts: []MountResult{}}
	for _, s := range steps {
		u, id, err := s.apply(env.Proc)
		if err != nil {
			msg := fmt.Sprintf("mount.mount: %s failed: %s", s, handler.AsError(err).Message)
			if rb := rollback(undos); rb != "" {
				msg += "; " + rb
			}
			env.Log.Warn("mount batch failed", "entry", s.index, "error", msg)
			return MountResponse{}, handler.Errorf(errnoOf(err), "%s", msg)
		}
		undos = append(undos, u)
		resp.Mounts = append(resp.Mounts, MountResult{Target: handler.Name(s.e.Target), MountID: id})
		env.Log.Info("mounted", "entry", s.String(), "mount_id", id)
	}
	for _, u := range undos {
		u.release()
	}
	return resp, nil
}

// rollback undoes applied steps in reverse order and says how it went.
func rollback(undos []undo) string {
	if len(undos) == 0 {
		return ""
	}
	var failed []string
	for i := len(undos) - 1; i >= 0; i-- {
		if err := undos[i].run(); err != nil {
			e := handler.AsError(err)
			failed = append(failed, fmt.Sprintf("undoing entry %d failed: %s", i, e.Error()))
		}
	}
	done := fmt.Sprintf("entries 0 to %d were undone", len(undos)-1)
	if len(undos) == 1 {
		done = "entry 0 was undone"
	}
	if len(failed) > 0 {
		return "rollback incomplete: " + strings.Join(failed, "; ")
	}
	return done
}

func umountBatch(ctx context.Context, req UmountRequest) (UmountResponse, error) {
	env := handler.EnvFrom(ctx)
	if len(req.Unmounts) == 0 {
		return UmountResponse{}, handler.Errorf(syscall.EINVAL, "mount.umount: no unmounts given")
	}
	if len(req.Unmounts) > MaxBatch {
		return UmountResponse{}, handler.Errorf(syscall.EINVAL, "mount.umount: %d unmounts, at most %d at once", len(req.Unmounts), MaxBatch)
	}
	bits := make([]uint64, len(req.Unmounts))
	for i, u := range req.Unmounts {
		what := fmt.Sprintf("entry %d of %d (%q, flags %s)", i, len(req.Unmounts), u.Target, flagList(u.Flags))
		var err error
		if bits[i], err = parseUmountFlags(u.Flags); err != nil {
			return UmountResponse{}, handler.Errorf(syscall.EINVAL, "mount.umount: %s: %v", what, err)
		}
		if _, err := env.CheckPath(string(u.Target)); err != nil {
			e := handler.AsError(err)
			return UmountResponse{}, handler.Errorf(e.Errno, "mount.umount: %s: %s", what, e.Message)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	resp := UmountResponse{Unmounted: []handler.Name{}}
	for i, u := range req.Unmounts {
		err := unmountOne(string(u.Target), bits[i])
		if err != nil {
			msg := fmt.Sprintf("mount.umount: entry %d of %d (%q, flags %s) failed: %s", i, len(req.Unmounts), u.Target, flagList(u.Flags), handler.AsError(err).Message)
			if i > 0 {
				msg += fmt.Sprintf("; entries 0 to %d stay unmounted", i-1)
			}
			return UmountResponse{}, handler.Errorf(errnoOf(err), "%s", msg)
		}
		resp.Unmounted = append(resp.Unmounted, u.Target)
		env.Log.Info("unmounted", "target", u.Target, "flags", flagList(u.Flags))
	}
	return resp, nil
}

// unmountOne unmounts the topmost mount at target: umount2(2) of the last
// component, relative to the parent directory the plugin opened, never
// following a link there (UMOUNT_NOFOLLOW is always added).
func unmountOne(target string, bits uint64) error {
	l, err := locate(target, false)
	if err != nil {
		return fmt.Errorf("opening the parent directory: %w", err)
	}
	defer l.close()
	return inDir(l.parent, func() error {
		if err := unix.Unmount(l.base, int(bits|unix.UMOUNT_NOFOLLOW)); err != nil {
			return fmt.Errorf("umount2(2): %w", err)
		}
		return nil
	})
}

func info(ctx context.Context, req InfoRequest) (InfoResponse, error) {
	env := handler.EnvFrom(ctx)
	if env.Proc == nil {
		return InfoResponse{}, handler.Errorf(syscall.ENOTSUP, "mount.info: no fresh procfs (is the plugin run by an nsplug core?)")
	}
	raw, mounts, err := readMountinfo(env.Proc)
	if err != nil {
		return InfoResponse{}, handler.Errorf(errnoOf(err), "mount.info: %v", err)
	}
	resp := InfoResponse{Mounts: mounts}
	if req.Raw {
		resp.Raw = handler.Name(raw)
	}
	return resp, nil
}

func inode(ctx context.Context, req InodeRequest) (InodeResponse, error) {
	env := handler.EnvFrom(ctx)
	if len(req.Paths) == 0 {
		return InodeResponse{}, handler.Errorf(syscall.EINVAL, "mount.inode: no paths given")
	}
	if len(req.Paths) > MaxPaths {
		return InodeResponse{}, handler.Errorf(syscall.EINVAL, "mount.inode: %d paths, at most %d", len(req.Paths), MaxPaths)
	}
	resp := InodeResponse{Inodes: make([]Inode, 0, len(req.Paths))}
	for i, name := range req.Paths {
		p := string(name)
		if _, err := env.CheckPath(p); err != nil {
			e := handler.AsError(err)
			return InodeResponse{}, handler.Errorf(e.Errno, "mount.inode: path %d: %s", i, e.Message)
		}
		f, err := openO(p)
		if err != nil {
			return InodeResponse{}, handler.Errorf(errnoOf(err), "mount.inode: path %d %q: %v", i, p, err)
		}
		var stx unix.Statx_t
		err = unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_INO|unix.STATX_MNT_ID, &stx)
		f.Close()
		if err != nil {
			return InodeResponse{}, handler.Errorf(errnoOf(err), "mount.inode: path %d %q: statx: %v", i, p, err)
		}
		resp.Inodes = append(resp.Inodes, Inode{
			Path: name, Inode: stx.Ino, Major: stx.Dev_major, Minor: stx.Dev_minor, MountID: int(stx.Mnt_id),
			MountRoot: stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0,
		})
	}
	return resp, nil
}
