package nsexec

import "os"

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

// Self reports what the constructor did in this process.
func Self() State { return self }

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
