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
	PidFD     = 3
	SockDirFD = 4
	StatusFD  = 5

	freshProc = 1
	freshSys  = 2
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
	// belonging to the target's pid and net namespaces.
	FreshProc, FreshSys bool
}

// Validate rejects bootstraps the constructor cannot carry out.
func (b Bootstrap) Validate() error {
	if bad := b.Unshare & (unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWTIME); bad != 0 {
		return fmt.Errorf("cannot unshare %s after joining (only mnt, net, ipc, uts, cgroup)", strings.Join(NamespaceNames(bad), ","))
	}
	return nil
}

// Forks reports whether the constructor forks: the process the core
// starts then stays outside as a waiter, and its only child serves.
func (b Bootstrap) Forks() bool {
	return b.Join&(unix.CLONE_NEWPID|unix.CLONE_NEWTIME) != 0 || b.FreshProc || b.FreshSys
}

func (b Bootstrap) env() string {
	fresh := 0
	if b.FreshProc {
		fresh |= freshProc
	}
	if b.FreshSys {
		fresh |= freshSys
	}
	uid, gid := b.UID, b.GID
	if b.Join&unix.CLONE_NEWUSER == 0 {
		uid, gid = -1, -1
	}
	s := fmt.Sprintf("join=%#x,unshare=%#x,fresh=%d", b.Join, b.Unshare, fresh)
	if uid >= 0 {
		s += fmt.Sprintf(",uid=%d", uid)
	}
	if gid >= 0 {
		s += fmt.Sprintf(",gid=%d", gid)
	}
	return EnvName + "=" + s
}

// Apply arranges for cmd to run the bootstrap: it sets the environment
// and the fds the constructor expects. cmd must not use ExtraFiles.
// pidfd pins the target; sockDir is the directory the plugin binds its
// socket in. The returned status pipe's read end yields the constructor's
// error message, if any; the caller closes the write end once the
// process started.
func (b Bootstrap) Apply(cmd *exec.Cmd, pidfd, sockDir *os.File) (statusR, statusW *os.File, err error) {
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
	cmd.ExtraFiles = []*os.File{pidfd, sockDir, statusW}
	return statusR, statusW, nil
}
