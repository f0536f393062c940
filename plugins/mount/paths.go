package mount

import (
	"errors"
	"fmt"
	"os"
	"path"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sdk/handler"
)

// Paths are resolved by the plugin, never by a path-taking mount syscall:
// openat2 without following any symbolic or magic link, then the fd is
// handed to the fd-based syscalls (open_tree, move_mount, mount_setattr).
// mount(2) and umount2(2) only take paths; they get a relative name on a
// thread whose working directory is such an fd (see inDir). So a target
// cannot turn a component into a symlink between the check and the use
// and have a mount land outside the allowed roots.
const resolveNoLinks = unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// location is a checked path opened as its parent directory and itself.
type location struct {
	path   string
	parent *os.File // O_PATH of the parent directory
	base   string   // last component
	file   *os.File // O_PATH of the path itself (nil for a location to unmount)
}

func (l *location) close() {
	if l.parent != nil {
		l.parent.Close()
	}
	if l.file != nil {
		l.file.Close()
	}
}

// openO opens p (absolute and clean) as an O_PATH fd, refusing links.
func openO(p string) (*os.File, error) {
	fd, err := unix.Openat2(unix.AT_FDCWD, p, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: resolveNoLinks,
	})
	if err != nil {
		return nil, linkHint(err)
	}
	return os.NewFile(uintptr(fd), p), nil
}

// linkHint explains ELOOP, which openat2 returns for any link on the way.
func linkHint(err error) error {
	if errors.Is(err, unix.ELOOP) {
		return fmt.Errorf("%w (paths may not contain symbolic links; name the real path)", err)
	}
	return err
}

// locate opens the parent of p and, when self, p itself beneath it.
func locate(p string, self bool) (*location, error) {
	if p == "/" {
		return nil, handler.Errorf(syscall.EINVAL, "the root directory cannot be mounted over or unmounted here")
	}
	l := &location{path: p, base: path.Base(p)}
	var err error
	if l.parent, err = openO(path.Dir(p)); err != nil {
		return nil, err
	}
	if self {
		fd, err := unix.Openat2(int(l.parent.Fd()), l.base, &unix.OpenHow{
			Flags:   unix.O_PATH | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_BENEATH | resolveNoLinks,
		})
		if err != nil {
			l.close()
			return nil, linkHint(err)
		}
		l.file = os.NewFile(uintptr(fd), p)
	}
	return l, nil
}

func isDir(f *os.File) bool {
	var st unix.Stat_t
	return unix.Fstat(int(f.Fd()), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR
}

// mountID is the id (as in mountinfo) of the mount f is on.
func mountID(f *os.File) (int, error) {
	var stx unix.Statx_t
	if err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx); err != nil {
		return 0, err
	}
	return int(stx.Mnt_id), nil
}

// mountIDAt is the id of the topmost mount at name in dir.
func mountIDAt(dir *os.File, name string) (int, error) {
	var stx unix.Statx_t
	if err := unix.Statx(int(dir.Fd()), name, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_MNT_ID, &stx); err != nil {
		return 0, err
	}
	return int(stx.Mnt_id), nil
}

// inDir runs fn on a throwaway OS thread whose working directory is dir,
// so that mount(2) and umount2(2) can be given "." or a single name
// relative to an fd the plugin resolved itself. The thread first unshares
// its fs_struct (cwd and root), so the rest of the process keeps "/"; it
// stays locked and exits with the goroutine, never to be reused.
func inDir(dir *os.File, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			done <- fmt.Errorf("unshare(CLONE_FS): %w", err)
			return
		}
		if err := unix.Fchdir(int(dir.Fd())); err != nil {
			done <- fmt.Errorf("fchdir: %w", err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// unmountOurs detaches the mount with the given id from the top of
// location l, after checking it is still the one there: a rollback must not
// unmount what someone else mounted since.
func unmountOurs(l *location, id int) error {
	cur, err := mountIDAt(l.parent, l.base)
	if err != nil {
		return fmt.Errorf("checking %s: %w", l.path, err)
	}
	if cur != id {
		return handler.Errorf(syscall.EBUSY, "mount %d is no longer on top of %s (mount %d is); left in place", id, l.path, cur)
	}
	return inDir(l.parent, func() error {
		if err := unix.Unmount(l.base, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
			return fmt.Errorf("umount2 %s: %w", l.path, err)
		}
		return nil
	})
}
