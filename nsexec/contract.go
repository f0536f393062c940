package nsexec

// #include "nsexec.h"
import "C"

import (
	"github.com/nsplug/nsplug/nsexec/boot"
	"github.com/nsplug/nsplug/wire/ns"
)

// The bootstrap contract, written by the host side (package boot) and read
// by the constructor (nsexec.h). Re-exported here for code that has
// imported nsexec for it.
const (
	PidFD     = boot.PidFD
	SockDirFD = boot.SockDirFD
	StatusFD  = boot.StatusFD
	FramesFD  = boot.FramesFD
	EnvName   = boot.EnvName
	EnvRoot   = boot.EnvRoot
	EnvCwd    = boot.EnvCwd
	MaxGroups = boot.MaxGroups
)

// Bootstrap says what the constructor does in a new process (boot.Bootstrap).
type Bootstrap = boot.Bootstrap

// Namespace is a namespace kind as /proc/PID/ns names it (package wire/ns).
type Namespace = ns.Namespace

// Namespaces lists every kind nsplug can join, in /proc/PID/ns naming.
var Namespaces = ns.Namespaces

// AllNamespaces has the flag of every kind in Namespaces.
const AllNamespaces = ns.AllNamespaces

// ParseNamespaces turns names ("net", "mnt", ...) into CLONE_NEW* flags.
func ParseNamespaces(names []string) (uintptr, error) { return ns.ParseNamespaces(names) }

// NamespaceNames lists the names of the namespaces set in flags.
func NamespaceNames(flags uintptr) []string { return ns.NamespaceNames(flags) }

// Package boot's copies of nsexec.h's definitions, checked at compile
// time: a map literal may not repeat a constant key, so each of these fails
// to compile when the comparison is false.
var (
	_ = map[bool]int{false: 0, C.NSEXEC_PIDFD == boot.PidFD: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_SOCKDIR_FD == boot.SockDirFD: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_STATUS_FD == boot.StatusFD: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_FRAMES_FD == boot.FramesFD: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_FRESH_PROC == boot.FreshProc: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_FRESH_SYS == boot.FreshSys: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_FRESH_CGROUP == boot.FreshCgroup: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_MAX_GROUPS == boot.MaxGroups: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_ENV == boot.EnvName: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_ROOT_ENV == boot.EnvRoot: 1}
)
