//go:build cgo

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

	"github.com/nsplug/nsplug/nsexec/boot"
)

func init() {
	boot.MarkPreambleLinked()
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
