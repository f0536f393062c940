package procfs

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/plugins/internal/sysctlns"
	"github.com/nsplug/nsplug/sdk/handler"
)

// A write to a file of a kernel filesystem changes kernel state, not data:
// a sysctl, a process's settings, a device's. Which state is decided by
// the file the kernel opened, not by the request's path: the target
// controls its own /proc and /sys, and can bind /proc/sys/vm over
// /mnt/x or a /proc/sys/kernel file over another. So procfs.write opens
// the file first and asks the kernel what it is (fstatfs for the
// filesystem; the descriptor's link, its mount id and that mount's root
// for the path inside it, read from a procfs known to be genuine), and
// applies the rule of sysctl.set to it:
//
//   - /proc/sys/<sysctl> of a namespace (package sysctlns): that namespace
//     must be joined and not the machine's initial one;
//   - /proc/<pid>/...: a process of the pid namespace the procfs shows,
//     which must be the handler's, and that namespace joined (and net too
//     for /proc/<pid>/net/...);
//   - anything else of procfs, sysfs, debugfs, tracefs, securityfs,
//     efivarfs, configfs, pstore, bpffs: one state for the whole machine.
//
// A write that would change the host is refused with EPERM unless the
// allow_host_writes option names the file (or a directory above it), or,
// for a namespaced one, allow_host_changes names its namespace. When the
// kernel's answer cannot be had (no genuine procfs, a mount in the way),
// the file is taken to be any file of its filesystem: only an
// allow_host_writes entry covering the whole filesystem allows it.

// kernelFS maps the filesystems whose files are kernel state to the
// directory where they are usually mounted: a file's identity is that
// directory joined with its path inside the filesystem.
var kernelFS = map[int64]string{
	unix.PROC_SUPER_MAGIC: "/proc",
	unix.SYSFS_MAGIC:      "/sys",
	unix.DEBUGFS_MAGIC:    "/sys/kernel/debug",
	unix.TRACEFS_MAGIC:    "/sys/kernel/tracing",
	unix.SECURITYFS_MAGIC: "/sys/kernel/security",
	unix.EFIVARFS_MAGIC:   "/sys/firmware/efi/efivars",
	configfsMagic:         "/sys/kernel/config",
	unix.PSTOREFS_MAGIC:   "/sys/fs/pstore",
	unix.BPF_FS_MAGIC:     "/sys/fs/bpf",
}

const configfsMagic = 0x62656570 // include/uapi/linux/magic.h

// procRootIno is the inode of a procfs's root directory (PROC_ROOT_INO).
const procRootIno = 1

// beneath resolves inside a genuine procfs: no mount crossed (a target
// may mount over /proc/PID/... of the handler), no magic link followed.
const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_MAGICLINKS

// checkHostWrite decides whether the write to f (opened for writing from
// the request's path p) may go ahead.
func checkHostWrite(ctx context.Context, f *os.File, p handler.Name) error {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil {
		return &os.PathError{Op: "statfs", Path: string(p), Err: err}
	}
	fsDir, ok := kernelFS[int64(sfs.Type)]
	if !ok {
		return nil // an ordinary file: the sdk has applied the mnt rule
	}
	var st unix.Stat_t
	if sfs.Type == unix.PROC_SUPER_MAGIC && unix.Fstat(int(f.Fd()), &st) == nil && st.Mode&0o222 == 0 {
		// Nobody may write it (procfs allows no chmod): the kernel
		// refuses the write with its own errno, as it would by hand.
		return nil
	}
	env := handler.EnvFrom(ctx)
	allow := handler.OptionsFrom[Options](ctx).AllowHostWrites
	proc, err := genuineProc(env)
	var id string
	if err == nil {
		defer proc.Close()
		id, err = identify(proc, f, fsDir)
	}
	if err != nil {
		if allowedWrite(allow, fsDir) {
			return nil
		}
		return handler.Errorf(syscall.EPERM, "procfs.write of %s: it is a file of the kernel's %s, and which one cannot be told (%s): "+
			"it may be one whose state is the whole machine's; allow_host_writes = [%q] in the procfs plugin's options allows it",
			p, fsDir, handler.AsError(err).Message, fsDir)
	}
	if allowedWrite(allow, id) {
		return nil
	}
	what := string(p)
	if id != what {
		what += " (which is " + id + ")"
	}
	namespaces, err := scopeOf(proc, f, id)
	if err != nil {
		return handler.Errorf(syscall.EPERM, "procfs.write of %s: %s; allow_host_writes = [%q] in the procfs plugin's options allows it",
			what, handler.AsError(err).Message, id)
	}
	if namespaces == nil {
		return handler.Errorf(syscall.EPERM, "procfs.write of %s: its state is the whole machine's, not a namespace's: writing it would change the host; "+
			"allow_host_writes = [%q] in the procfs plugin's options allows it", what, id)
	}
	for _, ns := range namespaces {
		if err := env.RequireJoined(ns); err != nil {
			return handler.Errorf(syscall.EPERM, "procfs.write of %s, a file of the %s namespace: %s, as does allow_host_writes = [%q] in its options",
				what, ns, handler.AsError(err).Message, id)
		}
		if env.HostChangesAllowed(ns) {
			continue
		}
		initial, err := sysctlns.InInitial(proc, ns)
		if err != nil {
			return err
		}
		if initial {
			return handler.Errorf(syscall.EPERM, "procfs.write of %s, a file of the %s namespace: the handler is in the host's initial one "+
				"(the target shares it): writing it would change the host; allow_host_changes = [%q] or allow_host_writes = [%q] allows it",
				what, ns, ns, id)
		}
	}
	return nil
}

// allowedWrite reports whether an allow_host_writes entry covers id.
func allowedWrite(allow []string, id string) bool {
	for _, a := range allow {
		if a == "/" || a == id || strings.HasPrefix(id, a+"/") {
			return true
		}
	}
	return false
}

// genuineProc returns a procfs root the target cannot have forged: the
// plugin's fresh one, or the target's /proc if it is the root of a real
// procfs (its filesystem magic and root inode say so; a bind mount of a
// directory, a tmpfs or a FUSE file system are not).
func genuineProc(env *handler.Env) (*os.File, error) {
	if env.Proc != nil {
		fd, err := unix.Openat2(int(env.Proc.Fd()), ".", &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC})
		if err != nil {
			return nil, handler.Errorf(syscall.EIO, "reopening the fresh procfs: %v", err)
		}
		return os.NewFile(uintptr(fd), "/proc"), nil
	}
	fd, err := unix.Openat2(unix.AT_FDCWD, "/proc", &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, handler.Errorf(syscall.EIO, "the target's /proc: %v", err)
	}
	f := os.NewFile(uintptr(fd), "/proc")
	var sfs unix.Statfs_t
	var st unix.Stat_t
	if unix.Fstatfs(fd, &sfs) != nil || sfs.Type != unix.PROC_SUPER_MAGIC || unix.Fstat(fd, &st) != nil || st.Ino != procRootIno {
		f.Close()
		return nil, handler.Errorf(syscall.EIO, "the target's /proc is not the root of a procfs")
	}
	return f, nil
}

// openIn opens rel beneath dir without crossing a mount.
func openIn(dir *os.File, rel string, flags int) (*os.File, error) {
	fd, err := unix.Openat2(int(dir.Fd()), rel, &unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: beneath})
	if err != nil {
		return nil, handler.Errorf(syscall.EIO, "/proc/%s: %v", rel, err)
	}
	return os.NewFile(uintptr(fd), rel), nil
}

func readIn(dir *os.File, rel string) ([]byte, error) {
	f, err := openIn(dir, rel, unix.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, handler.Errorf(syscall.EIO, "/proc/%s: %v", rel, err)
	}
	return buf.Bytes(), nil
}

func readlinkIn(dir *os.File, rel string) (string, error) {
	parent, base := path.Split(rel)
	d, err := openIn(dir, strings.TrimSuffix(parent, "/"), unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return "", err
	}
	defer d.Close()
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(int(d.Fd()), base, buf)
	if err != nil {
		return "", handler.Errorf(syscall.EIO, "/proc/%s: %v", rel, err)
	}
	return string(buf[:n]), nil
}

// identify returns the path of f as if its filesystem were mounted whole
// at fsDir: "/proc/sys/kernel/hostname" for the hostname file however the
// target reached it. It reads the handler's own entries of proc: the
// descriptor's link (its path from the process's root), its mount id, and
// that mount's root inside the filesystem and mount point.
func identify(proc, f *os.File, fsDir string) (string, error) {
	fd := strconv.Itoa(int(f.Fd()))
	link, err := readlinkIn(proc, "thread-self/fd/"+fd)
	if err != nil {
		return "", err
	}
	info, err := readIn(proc, "thread-self/fdinfo/"+fd)
	if err != nil {
		return "", err
	}
	mntID := ""
	for _, l := range strings.Split(string(info), "\n") {
		if v, ok := strings.CutPrefix(l, "mnt_id:"); ok {
			mntID = strings.TrimSpace(v)
		}
	}
	mounts, err := readIn(proc, "thread-self/mountinfo")
	if err != nil {
		return "", err
	}
	sc := bufio.NewScanner(bytes.NewReader(mounts))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		// id parent major:minor root mount-point ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || fields[0] != mntID {
			continue
		}
		root, mp := unescape(fields[3]), unescape(fields[4])
		var rel string
		switch {
		case mp == "/":
			rel = link
		case link == mp || strings.HasPrefix(link, mp+"/"):
			rel = link[len(mp):]
		default:
			return "", handler.Errorf(syscall.EIO, "its path %q is not under its mount point %q", link, mp)
		}
		if !strings.HasPrefix(root, "/") || (rel != "" && !strings.HasPrefix(rel, "/")) {
			return "", handler.Errorf(syscall.EIO, "unexpected path %q in mount %q", link, root)
		}
		in := path.Clean(root + rel)
		if in == "/" {
			return fsDir, nil
		}
		return fsDir + in, nil
	}
	return "", handler.Errorf(syscall.EIO, "its mount (id %q) is not in the mount table", mntID)
}

// unescape undoes mountinfo's octal escapes (\040 for a space, ...).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// scopeOf returns the namespaces whose state a write to file id (f, on
// the filesystem id names) changes, or nil for the whole machine's.
func scopeOf(proc, f *os.File, id string) ([]string, error) {
	rest, ok := strings.CutPrefix(id, "/proc/")
	if !ok {
		return nil, nil // sysfs and the others
	}
	parts := strings.Split(rest, "/")
	if parts[0] == "sys" && len(parts) > 1 {
		if ns := sysctlns.Of(sysctlns.Dotted(parts[1:])); ns != "" {
			return []string{ns}, nil
		}
		return nil, nil
	}
	if _, err := strconv.ParseUint(parts[0], 10, 32); err != nil {
		return nil, nil // /proc/sysrq-trigger, /proc/irq/..., ...
	}
	// A process's file: of the process the procfs numbers so, in the pid
	// namespace the procfs shows, which must be the handler's.
	if err := sameProcfs(proc, f); err != nil {
		return nil, err
	}
	if len(parts) > 3 && parts[1] == "task" {
		parts = parts[2:]
	}
	if len(parts) > 1 && parts[1] == "net" {
		return []string{"pid", "net"}, nil
	}
	return []string{"pid"}, nil
}

// sameProcfs checks that f is a file of the procfs proc, and that this
// procfs shows the handler's pid namespace: its process 1 is in the
// handler's.
func sameProcfs(proc, f *os.File) error {
	var a, b unix.Stat_t
	if unix.Fstat(int(proc.Fd()), &a) != nil || unix.Fstat(int(f.Fd()), &b) != nil || a.Dev != b.Dev {
		return handler.Errorf(syscall.EPERM, "it is a process's file of another procfs than the target's /proc, whose pid namespace cannot be told")
	}
	init, err := readlinkIn(proc, "1/ns/pid")
	if err == nil {
		var self string
		if self, err = readlinkIn(proc, "thread-self/ns/pid"); err == nil && init != self {
			return handler.Errorf(syscall.EPERM, "it is a process's file of a procfs of another pid namespace (%s) than the handler's (%s)", init, self)
		}
	}
	if err != nil {
		return handler.Errorf(syscall.EPERM, "it is a process's file of a procfs whose pid namespace cannot be told (%s)", handler.AsError(err).Message)
	}
	return nil
}
