// Package nsexec joins a target process's namespaces before the Go runtime
// starts.
//
// Importing the package links a small C constructor (nsexec.c) into the
// binary. The constructor does nothing unless the process was started with a
// bootstrap (see Bootstrap): then it joins the target's namespaces, forks into
// its pid namespace when needed, takes the target's root credentials and
// returns into the Go runtime, which starts already inside. Every nsplug plugin
// carries it through the sdk, as runc's init carries its nsenter package.
//
// The host side builds a Bootstrap and applies it to an exec.Cmd; the
// in-namespace side reads what happened with Self.
package nsexec

/*
#cgo CFLAGS: -Wall -Wextra -Werror -std=gnu11
#include "nsexec.h"
static int active(void) { return nsexec_active; }
static unsigned long joined(void) { return nsexec_joined; }
static int proc_fd(void) { return nsexec_proc_fd; }
static int sys_fd(void) { return nsexec_sys_fd; }
static int cgroup_fd(void) { return nsexec_cgroup_fd; }
*/
import "C"

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// State is what the constructor did in this process.
type State struct {
	// Active is true when the process was started with a bootstrap and
	// now runs inside the target's namespaces.
	Active bool
	// Joined are the namespaces joined (CLONE_NEW* flags): those where the
	// target differs from the core. The process shares the others with
	// the core.
	Joined uintptr
	// Proc and Sys are detached fresh procfs and sysfs mounts made for
	// this process (nil when not asked for). Resolve paths beneath them
	// with openat; they belong to the target's pid and network namespaces.
	Proc, Sys *os.File
	// Cgroup is a detached fresh cgroup2 mount rooted at the root of the
	// target's cgroup namespace (nil when not asked for).
	Cgroup *os.File
	// Cwd is where the process is to work once it has bound its socket
	// (the credentials' cwd); "/" by default.
	Cwd string
	// Frames is the frame channel to the core (fd 6; wire/README.md):
	// requests arrive and responses and handed-back files leave on it;
	// nil when the core gave none.
	Frames *os.File
}

var (
	self   State
	status *os.File
)

func init() {
	if C.active() == 0 {
		return
	}
	self.Active = true
	self.Joined = uintptr(C.joined())
	status = os.NewFile(StatusFD, "nsexec-status")
	if _, err := unix.FcntlInt(FramesFD, unix.F_SETFD, unix.FD_CLOEXEC); err == nil {
		self.Frames = os.NewFile(FramesFD, "nsexec-frames")
	}
	if fd := int(C.proc_fd()); fd >= 0 {
		self.Proc = os.NewFile(uintptr(fd), "fresh-procfs")
	}
	if fd := int(C.sys_fd()); fd >= 0 {
		self.Sys = os.NewFile(uintptr(fd), "fresh-sysfs")
	}
	if fd := int(C.cgroup_fd()); fd >= 0 {
		self.Cgroup = os.NewFile(uintptr(fd), "fresh-cgroup2")
	}
	self.Cwd = "/"
	if cwd := os.Getenv(EnvCwd); cwd != "" {
		self.Cwd = cwd
	}
	// Children of a plugin must not run the bootstrap again: fds 3-5
	// mean something else by then.
	os.Unsetenv(EnvName)
	os.Unsetenv(EnvRoot)
	os.Unsetenv(EnvCwd)
}

// Self reports what the constructor did in this process.
func Self() State { return self }

// EnterRoot moves the process into the target's filesystem: its root
// (or the credentials' root) becomes the process's root, and Cwd its working
// directory. Until then the constructor keeps the process's root and cwd in
// the host socket directory the core made for it, so that nothing the
// target planted in its own /proc or /sys is read while the Go runtime
// starts (see nsexec.c, stage 6). A plugin calls it once, after binding its
// socket by a relative name and before serving; the sdk does. Outside a
// bootstrap it does nothing.
func EnterRoot() error {
	if !self.Active {
		return nil
	}
	// Settle the local time zone first (UTC: the socket directory has no
	// /etc/localtime), or the first log line would load the target's.
	time.Now().Zone()
	if errno := syscall.Errno(C.nsexec_enter_root()); errno == syscall.ECHILD {
		return fmt.Errorf("entering the target's root: the keeper process holding it was killed (%w)", errno)
	} else if errno != 0 {
		return fmt.Errorf("entering the target's root: %w", errno)
	}
	if err := os.Chdir(self.Cwd); err != nil {
		return fmt.Errorf("entering the working directory %s: %w", self.Cwd, err)
	}
	return nil
}

// ReportFailure tells the core, over the status pipe, why this process
// cannot serve. The core shows the message as the start error.
func ReportFailure(msg string) {
	if status != nil {
		status.WriteString(msg + "\n")
	}
}

// CloseStatus closes the status pipe. Call it once the process is ready
// to serve: from then on the core learns of failures through the plugin
// protocol, and the process keeps no fd it does not need.
func CloseStatus() {
	if status != nil {
		status.Close()
		status = nil
	}
}
