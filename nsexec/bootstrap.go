package nsexec

import (
	"fmt"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"
)

// The bootstrap contract with nsexec.c (see nsexec.h).
const (
	EnvName   = "_NSPLUG_NSEXEC"
	EnvRoot   = "_NSPLUG_NSEXEC_ROOT" // chroot before the uid changes
	EnvCwd    = "_NSPLUG_NSEXEC_CWD"  // for the Go side: the cwd once the socket is bound
	PidFD     = 3
	SockDirFD = 4
	StatusFD  = 5
	FilesFD   = 6

	freshProc   = 1
	freshSys    = 2
	freshCgroup = 4
)

// Namespace names a namespace kind as /proc/PID/ns does.
type Namespace struct {
	Name string
	Flag uintptr // CLONE_NEW*
}

// Namespaces lists every kind nsplug can join, in /proc/PID/ns naming.
var Namespaces = []Namespace{
	{"user", unix.CLONE_NEWUSER},
	{"mnt", unix.CLONE_NEWNS},
	{"pid", unix.CLONE_NEWPID},
	{"net", unix.CLONE_NEWNET},
	{"ipc", unix.CLONE_NEWIPC},
	{"uts", unix.CLONE_NEWUTS},
	{"cgroup", unix.CLONE_NEWCGROUP},
	{"time", unix.CLONE_NEWTIME},
}

// AllNamespaces has the flag of every kind in Namespaces.
const AllNamespaces = unix.CLONE_NEWUSER | unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWNET |
	unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWTIME

// ParseNamespaces turns names ("net", "mnt", ...) into CLONE_NEW* flags.
func ParseNamespaces(names []string) (uintptr, error) {
	var flags uintptr
next:
	for _, n := range names {
		for _, ns := range Namespaces {
			if ns.Name == n {
				flags |= ns.Flag
				continue next
			}
		}
		return 0, fmt.Errorf("unknown namespace %q (known: %s)", n, strings.Join(NamespaceNames(AllNamespaces), ","))
	}
	return flags, nil
}

// NamespaceNames lists the names of the namespaces set in flags.
func NamespaceNames(flags uintptr) []string {
	var names []string
	for _, ns := range Namespaces {
		if flags&ns.Flag != 0 {
			names = append(names, ns.Name)
		}
	}
	return names
}

// Bootstrap says what the constructor does in a new process.
type Bootstrap struct {
	Join    uintptr // namespaces of the target to join
	Unshare uintptr // namespaces to unshare after joining (mnt, net, ipc, uts, cgroup)
	// UID and GID to take inside the target's user namespace, when it
	// is joined; -1 keeps the current ones.
	UID, GID int
	// FreshProc and FreshSys ask for detached procfs and sysfs mounts
	// belonging to the target's pid and net namespaces; FreshCgroup for
	// a detached cgroup2 mount whose root is the root of the target's
	// cgroup namespace (made after joining it).
	FreshProc, FreshSys, FreshCgroup bool
	// Groups are the supplementary groups to take (nil: none, or the
	// current ones where the user namespace denies setgroups).
	Groups []uint32
	// Caps, when set, are the effective, permitted and inheritable
	// capability sets to take after the uid change; otherwise the kernel's
	// rules apply (all for uid 0, none for others).
	Caps *[3]uint64
	// Root and Cwd are the root (chroot) and working directory, as paths
	// in the target's mount namespace; empty: its root.
	Root, Cwd string
}

// MaxGroups bounds Bootstrap.Groups (NSEXEC_MAX_GROUPS).
const MaxGroups = 64

// Validate rejects bootstraps the constructor cannot carry out.
func (b Bootstrap) Validate() error {
	if len(b.Groups) > MaxGroups {
		return fmt.Errorf("%d supplementary groups (at most %d)", len(b.Groups), MaxGroups)
	}
	for _, p := range []string{b.Root, b.Cwd} {
		if p != "" && (p[0] != '/' || strings.IndexByte(p, 0) >= 0) {
			return fmt.Errorf("root and cwd must be absolute paths, got %q", p)
		}
	}
	if bad := b.Unshare & (unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWTIME); bad != 0 {
		return fmt.Errorf("cannot unshare %s after joining (only mnt, net, ipc, uts, cgroup)", strings.Join(NamespaceNames(bad), ","))
	}
	return nil
}

// Forks reports whether the constructor forks: the process the core
// starts then stays outside as a waiter, and its child serves. Joining the
// mount namespace forks too: the waiter is also the parent of the root
// keeper (nsexec.c, stage 6).
func (b Bootstrap) Forks() bool {
	return b.Join&(unix.CLONE_NEWPID|unix.CLONE_NEWTIME|unix.CLONE_NEWNS) != 0 || b.FreshProc || b.FreshSys || b.FreshCgroup
}

func (b Bootstrap) env() string {
	fresh := 0
	if b.FreshProc {
		fresh |= freshProc
	}
	if b.FreshSys {
		fresh |= freshSys
	}
	if b.FreshCgroup {
		fresh |= freshCgroup
	}
	s := fmt.Sprintf("join=%#x,unshare=%#x,fresh=%d", b.Join, b.Unshare, fresh)
	if b.UID >= 0 {
		s += fmt.Sprintf(",uid=%d", b.UID)
	}
	if b.GID >= 0 {
		s += fmt.Sprintf(",gid=%d", b.GID)
	}
	if b.Groups != nil {
		s += ",groups="
		for i, g := range b.Groups {
			if i > 0 {
				s += ":"
			}
			s += fmt.Sprint(g)
		}
	}
	if b.Caps != nil {
		s += fmt.Sprintf(",caps=%#x:%#x:%#x", b.Caps[0], b.Caps[1], b.Caps[2])
	}
	return EnvName + "=" + s
}

// Apply arranges for cmd to run the bootstrap: it sets the environment
// and the fds the constructor expects. cmd must not use ExtraFiles.
// pidfd pins the target; sockDir is the directory the plugin binds its
// socket in; files is the plugin's end of the socket for handing fds back.
// The returned status pipe's read end yields the constructor's error
// message, if any; the caller closes the write end once the process
// started.
func (b Bootstrap) Apply(cmd *exec.Cmd, pidfd, sockDir, files *os.File) (statusR, statusW *os.File, err error) {
	if err := b.Validate(); err != nil {
		return nil, nil, err
	}
	if len(cmd.ExtraFiles) != 0 {
		return nil, nil, fmt.Errorf("nsexec: cmd already has extra files")
	}
	statusR, statusW, err = os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	cmd.Env = append(cmd.Env, b.env())
	if b.Root != "" {
		cmd.Env = append(cmd.Env, EnvRoot+"="+b.Root)
	}
	if b.Cwd != "" {
		cmd.Env = append(cmd.Env, EnvCwd+"="+b.Cwd)
	}
	cmd.ExtraFiles = []*os.File{pidfd, sockDir, statusW, files}
	return statusR, statusW, nil
}
