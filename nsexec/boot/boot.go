// Package boot is the bootstrap contract as the host side writes it: what
// a new process's nsexec constructor is to join, unshare, mount and take
// (Bootstrap), the descriptors it is handed and the environment that
// carries it. nsexec/nsexec.h is the contract's one definition; package
// nsexec, which links the constructor, checks at compile time that every
// constant here matches it. The core imports this package, not nsexec, so
// that a binary that only starts handlers links no cgo.
package boot

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/wire/ns"
)

// The bootstrap contract with nsexec.c, as nsexec.h defines it (package
// nsexec fails to compile if one of them differs from the header).
const (
	PidFD     = 3 // NSEXEC_PIDFD: a pidfd of the target
	SockDirFD = 4 // NSEXEC_SOCKDIR_FD: the instance's socket directory
	StatusFD  = 5 // NSEXEC_STATUS_FD: the status pipe: one line on failure
	FramesFD  = 6 // NSEXEC_FRAMES_FD: the frame channel (wire/README.md)

	FreshProc   = 1 // NSEXEC_FRESH_PROC
	FreshSys    = 2 // NSEXEC_FRESH_SYS
	FreshCgroup = 4 // NSEXEC_FRESH_CGROUP

	EnvName = "_NSPLUG_NSEXEC"      // NSEXEC_ENV: the bootstrap itself
	EnvRoot = "_NSPLUG_NSEXEC_ROOT" // NSEXEC_ROOT_ENV: the root to chroot to before the uid changes

	// EnvCwd is the Go side's alone (the constructor never reads it):
	// the cwd once the socket is bound.
	EnvCwd = "_NSPLUG_NSEXEC_CWD"
)

// The namespace kinds, as /proc/PID/ns names them, are the contract's
// (package wire/ns, their one list): message types declare them, the
// configuration names them, and the bootstrap joins them by flag.
type Namespace = ns.Namespace

// Namespaces lists every kind nsplug can join, in /proc/PID/ns naming.
var Namespaces = ns.Namespaces

// AllNamespaces has the flag of every kind in Namespaces.
const AllNamespaces = ns.AllNamespaces

// ParseNamespaces turns names ("net", "mnt", ...) into CLONE_NEW* flags.
func ParseNamespaces(names []string) (uintptr, error) { return ns.ParseNamespaces(names) }

// NamespaceNames lists the names of the namespaces set in flags.
func NamespaceNames(flags uintptr) []string { return ns.NamespaceNames(flags) }

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

// MaxGroups bounds Bootstrap.Groups.
const MaxGroups = 64 // NSEXEC_MAX_GROUPS

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
		fresh |= FreshProc
	}
	if b.FreshSys {
		fresh |= FreshSys
	}
	if b.FreshCgroup {
		fresh |= FreshCgroup
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
// socket in; frames is the plugin's end of the frame channel.
// The returned status pipe's read end yields the constructor's error
// message, if any; the caller closes the write end once the process
// started.
func (b Bootstrap) Apply(cmd *exec.Cmd, pidfd, sockDir, frames *os.File) (statusR, statusW *os.File, err error) {
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
	cmd.ExtraFiles = []*os.File{pidfd, sockDir, statusW, frames}
	return statusR, statusW, nil
}

// preambleLinked is set when package nsexec's constructor is in the
// binary (built with cgo). Only such a binary may be executed to serve in
// a target: one without it would run the plugin in the core's namespaces.
var preambleLinked atomic.Bool

// MarkPreambleLinked records that the constructor is linked; package
// nsexec calls it from init in a cgo build.
func MarkPreambleLinked() { preambleLinked.Store(true) }

// PreambleLinked reports whether this binary holds the nsexec constructor,
// so that it can be re-executed to serve built-ins.
func PreambleLinked() bool { return preambleLinked.Load() }
