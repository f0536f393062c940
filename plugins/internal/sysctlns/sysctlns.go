// Package sysctlns knows which namespace owns each sysctl, for the
// built-in plugins that write /proc/sys (sysctl.set, procfs.write): one
// table, so both refuse the same host changes.
package sysctlns

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sdk/handler"
)

// The sysctls a namespace owns on Linux 6.x: a write through /proc/sys
// changes the value for that namespace only. Everything else under
// /proc/sys (vm.*, fs.* but fs.mqueue.*, most of kernel.*, dev.*, abi.*,
// debug.*) is one value for the whole machine.
//
// net.* is whole: in a network namespace other than the initial one the
// kernel only shows per-namespace entries, or read-only views of global
// ones (net.netfilter.nf_conntrack_max, net.core.rmem_max, ...) that it
// refuses to write.
var (
	namespacedPrefixes = map[string]string{
		"net.":       "net",  // every net.* entry of a non-initial netns
		"fs.mqueue.": "ipc",  // POSIX message queue limits
		"user.":      "user", // user.max_*_namespaces, inotify/fanotify limits
	}
	namespacedNames = map[string]string{
		"kernel.hostname":   "uts",
		"kernel.domainname": "uts",

		"kernel.msgmax":          "ipc",
		"kernel.msgmnb":          "ipc",
		"kernel.msgmni":          "ipc",
		"kernel.msg_next_id":     "ipc",
		"kernel.auto_msgmni":     "ipc", // obsolete, kept by the kernel as a no-op
		"kernel.sem":             "ipc",
		"kernel.sem_next_id":     "ipc",
		"kernel.shmall":          "ipc",
		"kernel.shmmax":          "ipc",
		"kernel.shmmni":          "ipc",
		"kernel.shm_rmid_forced": "ipc",
		"kernel.shm_next_id":     "ipc",

		"kernel.ns_last_pid": "pid",
		"kernel.pid_max":     "pid", // per pid namespace since Linux 6.14
	}
)

// Of returns the namespace that owns sysctl n (canonical dotted form, as
// sysctl(8) prints it: a literal '.' in a component written '/'), or ""
// for a machine-wide one.
func Of(n string) string {
	if n == "kernel.pid_max" && !pidMaxPerNamespace() {
		return ""
	}
	if ns, ok := namespacedNames[n]; ok {
		return ns
	}
	for p, ns := range namespacedPrefixes {
		if strings.HasPrefix(n, p) {
			return ns
		}
	}
	return ""
}

// Dotted is the canonical dotted name of the sysctl whose file is
// components under /proc/sys: '.' joins them, and a literal '.' in a
// component (a VLAN interface "eth0.100") is written '/'.
func Dotted(components []string) string {
	parts := make([]string, len(components))
	for i, c := range components {
		parts[i] = strings.ReplaceAll(c, ".", "/")
	}
	return strings.Join(parts, ".")
}

// Namespaces lists the namespaces that own sysctls, sorted: those a write
// under /proc/sys may change.
func Namespaces() []string {
	var out []string
	for _, m := range []map[string]string{namespacedPrefixes, namespacedNames} {
		for _, ns := range m {
			if !slices.Contains(out, ns) {
				out = append(out, ns)
			}
		}
	}
	slices.Sort(out)
	return out
}

// pidMaxPerNamespace reports whether the running kernel keeps pid_max
// per pid namespace (Linux 6.14 and later); before, it is machine-wide.
var pidMaxPerNamespace = sync.OnceValue(func() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major > 6 || (major == 6 && minor >= 14)
})

// initialInodes are the inode numbers the kernel gives its initial
// namespaces (include/linux/proc_ns.h). Linux 6.18 has fixed numbers for
// all of them; older kernels lack the net one, and then a handler in the
// initial net namespace is not recognised as such.
var initialInodes = map[string]uint64{
	"ipc":  0xEFFFFFFF,
	"uts":  0xEFFFFFFE,
	"user": 0xEFFFFFFD,
	"pid":  0xEFFFFFFC,
	"net":  0xEFFFFFF9,
}

// InInitial reports whether the calling thread is in the machine's
// initial namespace of kind ns: the target shares it with the host (or
// the request narrowed the namespaces joined), so a write there is a host
// write however namespaced the sysctl is. proc is a genuine procfs root
// (the handler's fresh one, or one checked as such).
func InInitial(proc *os.File, ns string) (bool, error) {
	want, ok := initialInodes[ns]
	if !ok {
		return false, nil
	}
	// No mount crossed on the way: a target could mount over its /proc's
	// entries of the handler.
	dir, err := unix.Openat2(int(proc.Fd()), "thread-self/ns", &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_XDEV | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return false, handler.Errorf(errnoOf(err), "reading the handler's %s namespace: %v", ns, err)
	}
	defer unix.Close(dir)
	// A readlink of the nsfs magic link ("net:[4026531833]") does not
	// follow it.
	buf := make([]byte, 64)
	n, err := unix.Readlinkat(dir, ns, buf)
	if err != nil {
		return false, handler.Errorf(errnoOf(err), "reading the handler's %s namespace: %v", ns, err)
	}
	link := string(buf[:n])
	open, close := strings.IndexByte(link, '['), strings.IndexByte(link, ']')
	if open < 0 || close < open {
		return false, handler.Errorf(syscall.EIO, "unexpected namespace link %q", link)
	}
	ino, err := strconv.ParseUint(link[open+1:close], 10, 64)
	if err != nil {
		return false, handler.Errorf(syscall.EIO, "unexpected namespace link %q", link)
	}
	return ino == want, nil
}

func errnoOf(err error) syscall.Errno {
	if e := handler.AsError(err); e.Errno != 0 {
		return e.Errno
	}
	return syscall.EIO
}
