package mount

import (
	"fmt"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sdk/handler"
)

// Limits on a request.
const (
	MaxBatch    = 64   // entries of one mount.mount or mount.umount
	MaxPaths    = 256  // paths of one mount.inode
	MaxDataLen  = 4095 // mount(2) copies one page of data, NUL included
	MaxFSType   = 64
	MaxSourceLn = 4095
)

// kind is what a mount.mount entry does, decided from its flags as
// mount(2) decides it.
type kind int

const (
	kindNew         kind = iota // a new file system: source, fstype, data
	kindBind                    // bind (rec: recursive) source on target
	kindMove                    // move the mount at source to target
	kindRemount                 // remount: superblock and per-mount flags
	kindRemountBind             // remount,bind: per-mount flags only
	kindPropagation             // shared, private, slave, unbindable (rec)
)

func (k kind) String() string {
	return [...]string{"mount", "bind mount", "move", "remount", "bind remount", "propagation change"}[k]
}

// superblockBits are mount(2) flags that act on the file system, not on
// the mount.
const superblockBits = unix.MS_SYNCHRONOUS | unix.MS_MANDLOCK | unix.MS_DIRSYNC | unix.MS_LAZYTIME

// step is a validated entry of a batch.
type step struct {
	index, of int
	e         entry
	bits      uint64
	kind      kind
	decided   bool // kind is known (the flags parsed)
}

func (s *step) String() string {
	var what string
	switch {
	case !s.decided:
		what = fmt.Sprintf("source %q, target %q, fstype %q", s.e.Source, s.e.Target, s.e.FSType)
	default:
		what = s.what()
	}
	return fmt.Sprintf("entry %d of %d (%s, flags %s)", s.index, s.of, what, flagList(s.e.Flags))
}

func (s *step) what() string {
	switch s.kind {
	case kindNew:
		return fmt.Sprintf("mount of %s %q on %q", s.e.FSType, s.e.Source, s.e.Target)
	case kindBind, kindMove:
		return fmt.Sprintf("%s of %q on %q", s.kind, s.e.Source, s.e.Target)
	default:
		return fmt.Sprintf("%s of %q", s.kind, s.e.Target)
	}
}

// entry is an Entry with its names as the strings system calls take.
type entry struct {
	Source, Target, FSType, Data string
	Flags                        []Flag
}

// plan validates an entry completely before anything is applied.
func plan(env *handler.Env, i, n int, in Entry) (*step, error) {
	e := entry{Source: string(in.Source), Target: string(in.Target), FSType: in.FSType, Data: string(in.Data), Flags: in.Flags}
	s := &step{index: i, of: n, e: e}
	bad := func(format string, args ...any) error {
		return handler.Errorf(syscall.EINVAL, "mount.mount: %s: %s", s, fmt.Sprintf(format, args...))
	}
	var err error
	if s.bits, err = parseMountFlags(e.Flags); err != nil {
		return nil, bad("%v", err)
	}
	if _, err := env.CheckPath(e.Target); err != nil {
		return nil, handler.Errorf(handler.AsError(err).Errno, "mount.mount: %s: target: %s", s, handler.AsError(err).Message)
	}
	if len(e.Data) > MaxDataLen || strings.IndexByte(e.Data, 0) >= 0 {
		return nil, bad("data must be at most %d bytes, without NUL", MaxDataLen)
	}
	b := s.bits
	prop := b & propagationBits
	switch {
	case b&unix.MS_REMOUNT != 0:
		if b&(unix.MS_MOVE|propagationBits|unix.MS_REC) != 0 {
			return nil, bad("remount does not combine with move, rec or propagation flags")
		}
		s.kind = kindRemount
		if b&unix.MS_BIND != 0 {
			s.kind = kindRemountBind
			if b&superblockBits != 0 || e.Data != "" {
				return nil, bad("a bind remount changes per-mount flags only (ro, nosuid, nodev, noexec, nosymfollow, atime); drop bind to change the file system")
			}
		}
	case prop != 0:
		if prop&(prop-1) != 0 {
			return nil, bad("give one propagation type (shared, private, slave or unbindable)")
		}
		if b&^(propagationBits|unix.MS_REC|unix.MS_SILENT) != 0 || e.Data != "" {
			return nil, bad("a propagation change takes no other flag than rec, and no data")
		}
		s.kind = kindPropagation
	case b&unix.MS_MOVE != 0:
		if b&^(unix.MS_MOVE|unix.MS_SILENT) != 0 || e.Data != "" {
			return nil, bad("move takes no other flag and no data")
		}
		s.kind = kindMove
	case b&unix.MS_BIND != 0:
		if b&superblockBits != 0 || e.Data != "" {
			return nil, bad("a bind mount takes per-mount flags only and no data")
		}
		s.kind = kindBind
	default:
		if b&unix.MS_REC != 0 {
			return nil, bad("rec goes with bind or a propagation flag")
		}
		s.kind = kindNew
	}
	s.decided = true
	switch s.kind {
	case kindNew:
		if e.FSType == "" {
			return nil, bad("fstype is required for a new mount")
		}
		if len(e.FSType) > MaxFSType || strings.Trim(e.FSType, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" {
			return nil, bad("fstype %q: at most %d letters, digits, '.', '_' or '-'", e.FSType, MaxFSType)
		}
		if len(e.Source) > MaxSourceLn || strings.IndexByte(e.Source, 0) >= 0 {
			return nil, bad("source must be at most %d bytes, without NUL", MaxSourceLn)
		}
		if strings.HasPrefix(e.Source, "/") {
			if _, err := env.CheckPath(e.Source); err != nil {
				return nil, handler.Errorf(handler.AsError(err).Errno, "mount.mount: %s: source: %s", s, handler.AsError(err).Message)
			}
		}
	case kindBind, kindMove:
		if e.FSType != "" {
			return nil, bad("fstype is meaningless for a %s", s.kind)
		}
		if _, err := env.CheckPath(e.Source); err != nil {
			return nil, handler.Errorf(handler.AsError(err).Errno, "mount.mount: %s: source: %s", s, handler.AsError(err).Message)
		}
	default:
		if e.FSType != "" || e.Source != "" {
			return nil, bad("source and fstype are meaningless for a %s", s.kind)
		}
	}
	return s, nil
}

// undo reverses an applied step. It holds fds opened for the step (an
// O_PATH fd can keep a mount busy), so it is released after a successful
// batch, and by running it.
type undo struct {
	run     func() error
	release func()
}

// apply performs the step and returns how to undo it and the id of the
// mount it made or changed.
func (s *step) apply(proc *os.File) (undo, int, error) {
	switch s.kind {
	case kindNew:
		return s.mountNew()
	case kindBind:
		return s.bind()
	case kindMove:
		return s.move()
	case kindRemount, kindRemountBind:
		return s.remount(proc)
	default:
		return s.propagate(proc)
	}
}

func (s *step) mountNew() (undo, int, error) {
	l, err := locate(s.e.Target, true)
	if err != nil {
		return undo{}, 0, fmt.Errorf("opening target: %w", err)
	}
	if !isDir(l.file) {
		l.close()
		return undo{}, 0, fmt.Errorf("target: %w", unix.ENOTDIR)
	}
	err = inDir(l.file, func() error {
		return unix.Mount(s.e.Source, ".", s.e.FSType, uintptr(s.bits), s.e.Data)
	})
	if err != nil {
		l.close()
		return undo{}, 0, fmt.Errorf("mount(2): %w", err)
	}
	id, err := mountIDAt(l.parent, l.base)
	if err != nil {
		l.close()
		return undo{}, 0, fmt.Errorf("mounted, but reading the new mount's id: %w", err)
	}
	return undo{func() error { defer l.close(); return unmountOurs(l, id) }, l.close}, id, nil
}

func (s *step) bind() (undo, int, error) {
	src, err := openO(s.e.Source)
	if err != nil {
		return undo{}, 0, fmt.Errorf("opening source: %w", err)
	}
	defer src.Close()
	flags := uint(unix.OPEN_TREE_CLONE | unix.O_CLOEXEC | unix.AT_EMPTY_PATH)
	rec := s.bits&unix.MS_REC != 0
	if rec {
		flags |= unix.AT_RECURSIVE
	}
	cfd, err := unix.OpenTree(int(src.Fd()), "", flags)
	if err != nil {
		return undo{}, 0, fmt.Errorf("open_tree(2) of the source: %w", err)
	}
	clone := os.NewFile(uintptr(cfd), "clone")
	defer clone.Close()
	// mount(2) ignores ro and friends on a bind; the detached copy takes
	// them before it is attached, so it never shows writable.
	if attrs := addAttrs(s.bits); attrs != 0 || s.bits&atimeBits != 0 {
		a := &unix.MountAttr{Attr_set: attrs}
		if s.bits&atimeBits != 0 {
			a.Attr_clr = unix.MOUNT_ATTR__ATIME | unix.MOUNT_ATTR_NODIRATIME
		}
		setFlags := uint(unix.AT_EMPTY_PATH)
		if rec {
			setFlags |= unix.AT_RECURSIVE
		}
		if err := unix.MountSetattr(int(clone.Fd()), "", setFlags, a); err != nil {
			return undo{}, 0, fmt.Errorf("mount_setattr(2) of the copy: %w", err)
		}
	}
	l, err := locate(s.e.Target, true)
	if err != nil {
		return undo{}, 0, fmt.Errorf("opening target: %w", err)
	}
	if err := unix.MoveMount(int(clone.Fd()), "", int(l.file.Fd()), "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		l.close()
		return undo{}, 0, fmt.Errorf("move_mount(2) onto the target: %w", err)
	}
	id, err := mountID(clone)
	if err != nil {
		l.close()
		return undo{}, 0, fmt.Errorf("mounted, but reading the new mount's id: %w", err)
	}
	return undo{func() error { defer l.close(); return unmountOurs(l, id) }, l.close}, id, nil
}

func (s *step) move() (undo, int, error) {
	from, err := locate(s.e.Source, true)
	if err != nil {
		return undo{}, 0, fmt.Errorf("opening source: %w", err)
	}
	to, err := locate(s.e.Target, true)
	if err != nil {
		from.close()
		return undo{}, 0, fmt.Errorf("opening target: %w", err)
	}
	closeAll := func() { from.close(); to.close() }
	if err := unix.MoveMount(int(from.file.Fd()), "", int(to.file.Fd()), "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		closeAll()
		return undo{}, 0, fmt.Errorf("move_mount(2): %w", err)
	}
	id, err := mountID(from.file)
	if err != nil {
		closeAll()
		return undo{}, 0, fmt.Errorf("moved, but reading the mount's id: %w", err)
	}
	return undo{func() error {
		defer closeAll()
		if cur, err := mountIDAt(to.parent, to.base); err != nil || cur != id {
			return handler.Errorf(syscall.EBUSY, "mount %d is no longer on top of %s; not moved back", id, s.e.Target)
		}
		back, err := locate(s.e.Source, true)
		if err != nil {
			return fmt.Errorf("reopening %s: %w", s.e.Source, err)
		}
		defer back.close()
		if err := unix.MoveMount(int(from.file.Fd()), "", int(back.file.Fd()), "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
			return fmt.Errorf("moving %s back to %s: %w", s.e.Target, s.e.Source, err)
		}
		return nil
	}, closeAll}, id, nil
}

// remount changes flags of the mount at the target. What it changes is
// read from mountinfo first, to be put back on rollback.
func (s *step) remount(proc *os.File) (undo, int, error) {
	t, err := openO(s.e.Target)
	if err != nil {
		return undo{}, 0, fmt.Errorf("opening target: %w", err)
	}
	id, old, err := currentMount(proc, t)
	if err != nil {
		t.Close()
		return undo{}, 0, err
	}
	if s.kind == kindRemountBind {
		if err := unix.MountSetattr(int(t.Fd()), "", unix.AT_EMPTY_PATH, mountAttrs(s.bits)); err != nil {
			t.Close()
			return undo{}, 0, fmt.Errorf("mount_setattr(2): %w", err)
		}
	} else {
		if !isDir(t) {
			t.Close()
			return undo{}, 0, fmt.Errorf("a file system remount needs a directory (add bind to change the flags of a file's mount): %w", unix.ENOTDIR)
		}
		err := inDir(t, func() error { return unix.Mount("", ".", "", uintptr(s.bits), s.e.Data) })
		if err != nil {
			t.Close()
			return undo{}, 0, fmt.Errorf("mount(2): %w", err)
		}
	}
	return undo{func() error { defer t.Close(); return s.restore(t, old) }, func() { t.Close() }}, id, nil
}

// restore puts back the flags a remount changed: for a file system
// remount, first the superblock's read-only state and the options the
// entry's data named (with their old values), then, for both kinds, the
// exact per-mount flags.
func (s *step) restore(t *os.File, old *MountInfo) error {
	var problems []string
	if s.kind == kindRemount {
		var data []string
		for _, o := range strings.Split(s.e.Data, ",") {
			key, _, _ := strings.Cut(o, "=")
			if key == "" || key == "ro" || key == "rw" {
				continue
			}
			if was, ok := old.superOption(key); ok {
				data = append(data, was)
			} else {
				problems = append(problems, fmt.Sprintf("option %q had no value to go back to", key))
			}
		}
		bits := uint64(unix.MS_REMOUNT) | old.perMountBits()&^unix.MS_RDONLY
		if old.superReadOnly() {
			bits |= unix.MS_RDONLY
		}
		err := inDir(t, func() error { return unix.Mount("", ".", "", uintptr(bits), strings.Join(data, ",")) })
		if err != nil {
			return fmt.Errorf("remounting with the old options %q: %w", strings.Join(data, ","), err)
		}
	}
	if err := unix.MountSetattr(int(t.Fd()), "", unix.AT_EMPTY_PATH, mountAttrs(old.perMountBits())); err != nil {
		return fmt.Errorf("restoring flags %q: %w", old.Options, err)
	}
	if len(problems) > 0 {
		return handler.Errorf(syscall.EINVAL, "%s", strings.Join(problems, "; "))
	}
	return nil
}

// currentMount finds the mountinfo line of the mount f is the root of.
func currentMount(proc *os.File, f *os.File) (int, *MountInfo, error) {
	id, err := mountID(f)
	if err != nil {
		return 0, nil, fmt.Errorf("reading the mount id: %w", err)
	}
	_, mounts, err := readMountinfo(proc)
	if err != nil {
		return 0, nil, err
	}
	m := findMount(mounts, id)
	if m == nil {
		return 0, nil, handler.Errorf(syscall.ENOENT, "mount %d is not in mountinfo", id)
	}
	return id, m, nil
}

func (s *step) propagate(proc *os.File) (undo, int, error) {
	t, err := openO(s.e.Target)
	if err != nil {
		return undo{}, 0, fmt.Errorf("opening target: %w", err)
	}
	id, err := mountID(t)
	if err != nil {
		t.Close()
		return undo{}, 0, fmt.Errorf("reading the mount id: %w", err)
	}
	_, mounts, err := readMountinfo(proc)
	if err != nil {
		t.Close()
		return undo{}, 0, err
	}
	// The mounts that change: the target's, and with rec its subtree
	// (parents come before children in mountinfo order is not
	// guaranteed, so the tree is walked by parent id).
	affected := []MountInfo{}
	if m := findMount(mounts, id); m != nil {
		affected = append(affected, *m)
	}
	rec := s.bits&unix.MS_REC != 0
	if rec {
		for i := 0; i < len(affected); i++ {
			for _, m := range mounts {
				if m.Parent == affected[i].ID && m.ID != affected[i].ID {
					affected = append(affected, m)
				}
			}
		}
	}
	flags := uint(unix.AT_EMPTY_PATH)
	if rec {
		flags |= unix.AT_RECURSIVE
	}
	if err := unix.MountSetattr(int(t.Fd()), "", flags, &unix.MountAttr{Propagation: s.bits & propagationBits}); err != nil {
		t.Close()
		return undo{}, 0, fmt.Errorf("mount_setattr(2): %w", err)
	}
	return undo{func() error {
		defer t.Close()
		var problems []string
		for i, m := range affected {
			f := t
			if i > 0 {
				var err error
				if f, err = openO(string(m.Mountpoint)); err != nil {
					problems = append(problems, fmt.Sprintf("%s: %v", m.Mountpoint, err))
					continue
				}
				if cur, _ := mountID(f); cur != m.ID {
					f.Close()
					problems = append(problems, fmt.Sprintf("%s: mount %d is no longer reachable there", m.Mountpoint, m.ID))
					continue
				}
			}
			if err := restorePropagation(f, &m); err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", m.Mountpoint, err))
			}
			if i > 0 {
				f.Close()
			}
		}
		if len(problems) > 0 {
			return handler.Errorf(syscall.EIO, "restoring propagation: %s", strings.Join(problems, "; "))
		}
		return nil
	}, func() { t.Close() }}, id, nil
}

// restorePropagation gives a mount back its old propagation type. Peer
// groups and masters the change dissolved cannot be rejoined: a mount
// that was shared becomes shared in a new peer group.
func restorePropagation(f *os.File, m *MountInfo) error {
	shared, slave, unbindable := m.propagation()
	var steps []uint64
	switch {
	case unbindable:
		steps = []uint64{unix.MS_UNBINDABLE}
	case shared && slave:
		steps = []uint64{unix.MS_SLAVE, unix.MS_SHARED}
	case slave:
		steps = []uint64{unix.MS_SLAVE}
	case shared:
		steps = []uint64{unix.MS_SHARED}
	default:
		steps = []uint64{unix.MS_PRIVATE}
	}
	for _, p := range steps {
		if err := unix.MountSetattr(int(f.Fd()), "", unix.AT_EMPTY_PATH, &unix.MountAttr{Propagation: p}); err != nil {
			return err
		}
	}
	return nil
}
