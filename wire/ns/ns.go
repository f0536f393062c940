// Package ns names the namespace kinds of the contract, as /proc/PID/ns
// names them: message types declare them (changes, may_change),
// wire.PluginConfig.AllowHostChanges and the configuration name them, and
// nsexec joins them by flag. This is their one list. It is a leaf package
// (no cgo, no gRPC): nsexec and sandbox import it without linking the rest
// of the contract, and wire imports it without linking the preamble.
package ns

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
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
