package nsexec

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
