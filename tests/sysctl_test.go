package tests

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/sdk"
)

type sysctlValue struct {
	Name  string  `json:"name"`
	Value *string `json:"value"`
}

type sysctlList struct {
	Entries []struct {
		Name  string  `json:"name"`
		Value *string `json:"value"`
		Error string  `json:"error"`
	} `json:"entries"`
}

// sysctlHost reads /proc/sys/<path> of the test process: the host's value.
func sysctlHost(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/" + path)
	if err != nil {
		t.Fatalf("host %s: %v", path, err)
	}
	return strings.TrimSuffix(string(b), "\n")
}

// sysctlNsenter runs a command from the host's filesystem in the given
// namespaces of pid (nsenter flags such as "-n", "-a") and returns its
// trimmed output.
func sysctlNsenter(t *testing.T, pid int, args ...string) string {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(pid)}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter %v: %v: %s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// sysctlDirectErrno writes value to /proc/sys/<path> from a thread of the
// test process that has joined namespace ns of pid: the errno root gets
// doing it by hand. The thread is thrown away afterwards.
func sysctlDirectErrno(t *testing.T, pid int, ns, path, value string) syscall.Errno {
	t.Helper()
	type result struct {
		errno syscall.Errno
		err   error
	}
	done := make(chan result)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/%s", pid, ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, 0); err != nil {
			done <- result{err: err}
			return
		}
		f, err := os.OpenFile("/proc/sys/"+path, os.O_WRONLY, 0)
		if err == nil {
			_, err = f.Write([]byte(value))
			f.Close()
		}
		var errno syscall.Errno
		if err != nil && !errors.As(err, &errno) {
			done <- result{err: err}
			return
		}
		done <- result{errno: errno}
	}()
	r := <-done
	if r.err != nil {
		t.Fatalf("direct write of %s in %s namespace of %d: %v", path, ns, pid, r.err)
	}
	return r.errno
}

// sysctlOther returns a value of an integer sysctl different from both
// given ones.
func sysctlOther(base int, avoid ...string) string {
	for v := base; ; v++ {
		s := strconv.Itoa(v)
		clash := false
		for _, a := range avoid {
			clash = clash || a == s
		}
		if !clash {
			return s
		}
	}
}

func sysctlSet(t *testing.T, d *core.Dispatcher, pid int, name, value string) sysctlValue {
	t.Helper()
	var r sysctlValue
	mustCall(t, d, pid, "sysctl.set", fmt.Sprintf(`{"name":%q,"value":%q}`, name, value), &r)
	return r
}

func sysctlGet(t *testing.T, d *core.Dispatcher, pid int, name string) string {
	t.Helper()
	var r sysctlValue
	mustCall(t, d, pid, "sysctl.get", fmt.Sprintf(`{"name":%q}`, name), &r)
	if r.Value == nil {
		t.Fatalf("sysctl.get %s: no value", name)
	}
	return *r.Value
}

// sysctlRoundTrip sets name (a file under /proc/sys given by path) to a
// value that differs from the target's and the host's, and checks the
// response, nsenter's view in the target (flags name its namespace) and
// that the host kept its value.
func sysctlRoundTrip(t *testing.T, d *core.Dispatcher, pid int, name, path, nsFlag string, base int) {
	t.Helper()
	host := sysctlHost(t, path)
	before := sysctlGet(t, d, pid, name)
	if seen := sysctlNsenter(t, pid, nsFlag, "cat", "/proc/sys/"+path); seen != before {
		t.Errorf("%s: sysctl.get %q, nsenter %s cat %q", name, before, nsFlag, seen)
	}
	want := sysctlOther(base, host, before)
	r := sysctlSet(t, d, pid, name, want)
	if r.Name != name || r.Value == nil || *r.Value != want {
		t.Errorf("sysctl.set %s=%s answered %+v", name, want, r)
	}
	if got := sysctlGet(t, d, pid, name); got != want {
		t.Errorf("%s after set: get %q, want %q", name, got, want)
	}
	if seen := sysctlNsenter(t, pid, nsFlag, "cat", "/proc/sys/"+path); seen != want {
		t.Errorf("%s after set: the target sees %q, want %q", name, seen, want)
	}
	if now := sysctlHost(t, path); now != host {
		t.Errorf("%s: the host's value changed from %q to %q", name, host, now)
	}
}

// A container-like target: net.*, uts and ipc sysctls are read and
// written as the target sees them, and the host's values stay.
func TestSysctlRootful(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Hostname: "sysctl-rootful", MountProc: true})
	d, _ := newDispatcher(t, "")
	pid := target.PID()

	// ip_forward: 0/1 only, so flip it away from the host's value.
	host := sysctlHost(t, "net/ipv4/ip_forward")
	flip := map[string]string{"0": "1", "1": "0"}[host]
	r := sysctlSet(t, d, pid, "net/ipv4/ip_forward", flip) // slash form
	if r.Name != "net.ipv4.ip_forward" || r.Value == nil || *r.Value != flip {
		t.Errorf("set ip_forward: %+v", r)
	}
	if seen := sysctlNsenter(t, pid, "-n", "sysctl", "-n", "net.ipv4.ip_forward"); seen != flip {
		t.Errorf("nsenter sysctl -n net.ipv4.ip_forward = %q, want %q", seen, flip)
	}
	if now := sysctlHost(t, "net/ipv4/ip_forward"); now != host {
		t.Errorf("host ip_forward changed from %s to %s", host, now)
	}

	sysctlRoundTrip(t, d, pid, "net.core.somaxconn", "net/core/somaxconn", "-n", 1234)
	sysctlRoundTrip(t, d, pid, "kernel.shmmax", "kernel/shmmax", "-i", 77777777)
	sysctlRoundTrip(t, d, pid, "fs.mqueue.queues_max", "fs/mqueue/queues_max", "-i", 321)

	// uts: the hostname changes in the target only.
	hostName, _ := os.Hostname()
	if got := sysctlGet(t, d, pid, "kernel.hostname"); got != "sysctl-rootful" {
		t.Errorf("kernel.hostname = %q", got)
	}
	r = sysctlSet(t, d, pid, "kernel.hostname", "renamed-by-sysctl")
	if r.Value == nil || *r.Value != "renamed-by-sysctl" {
		t.Errorf("set kernel.hostname: %+v", r)
	}
	if seen := sysctlNsenter(t, pid, "-u", "hostname"); seen != "renamed-by-sysctl" {
		t.Errorf("the target's hostname is %q", seen)
	}
	sysctlSet(t, d, pid, "kernel.domainname", "example.test")
	if seen := sysctlNsenter(t, pid, "-a", "cat", "/proc/sys/kernel/domainname"); seen != "example.test" {
		t.Errorf("the target's domainname is %q", seen)
	}
	if now, _ := os.Hostname(); now != hostName {
		t.Errorf("the host's hostname changed from %q to %q", hostName, now)
	}

	// Per pid namespace since Linux 6.14.
	if kernelAtLeast(t, 6, 14) {
		sysctlRoundTrip(t, d, pid, "kernel.pid_max", "kernel/pid_max", "-p", 31000)
	}
}

func kernelAtLeast(t *testing.T, major, minor int) bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var ma, mi int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &ma, &mi)
	return ma > major || (ma == major && mi >= minor)
}

// What the kernel refuses is refused with the errno a direct write in the
// target gets; names, prefixes and listings behave.
func TestSysctlErrorsAndListing(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d, _ := newDispatcher(t, "")
	pid := target.PID()

	// Kernel refusals, compared with the same write done by hand.
	for _, c := range []struct{ name, path, value string }{
		{"net.ipv4.ip_forward", "net/ipv4/ip_forward", "not-a-number"},
		{"net.ipv4.conf.all.mc_forwarding", "net/ipv4/conf/all/mc_forwarding", "1"}, // mode 0444
		{"net.ipv4.tcp_nosuch", "net/ipv4/tcp_nosuch", "1"},
		{"net.core.somaxconn", "net/core/somaxconn", "-5"},
	} {
		direct := sysctlDirectErrno(t, pid, "net", c.path, c.value)
		if direct == 0 {
			t.Fatalf("writing %q to %s directly succeeded", c.value, c.path)
		}
		err := call(t, d, pid, "sysctl.set", fmt.Sprintf(`{"name":%q,"value":%q}`, c.name, c.value), nil)
		wantErrno(t, err, direct, c.name)
	}
	wantErrno(t, call(t, d, pid, "sysctl.get", `{"name":"net.ipv4.tcp_nosuch"}`, nil), syscall.ENOENT, "net.ipv4.tcp_nosuch", "no such sysctl")
	wantErrno(t, call(t, d, pid, "sysctl.get", `{"name":"net.ipv4"}`, nil), syscall.EISDIR, "sysctl.list")

	// A write-only entry: set answers without a value; get is EACCES.
	var r sysctlValue
	mustCall(t, d, pid, "sysctl.set", `{"name":"net.ipv4.route.flush","value":"1"}`, &r)
	if r.Name != "net.ipv4.route.flush" || r.Value != nil {
		t.Errorf("set of a write-only sysctl answered %+v", r)
	}
	wantErrno(t, call(t, d, pid, "sysctl.get", `{"name":"net.ipv4.route.flush"}`, nil), syscall.EACCES, "net.ipv4.route.flush")

	// A listing is the subtree, sorted, with values as nsenter sees
	// them, and write-only entries flagged rather than dropped.
	var l sysctlList
	mustCall(t, d, pid, "sysctl.list", `{"prefix":"net.ipv4.conf.lo"}`, &l)
	files := strings.Fields(sysctlNsenter(t, pid, "-n", "sh", "-c", "cd /proc/sys/net/ipv4/conf/lo && LC_ALL=C ls"))
	if len(l.Entries) != len(files) || len(files) < 10 {
		t.Fatalf("list net.ipv4.conf.lo: %d entries, the target has %d files", len(l.Entries), len(files))
	}
	for i, e := range l.Entries {
		if e.Name != "net.ipv4.conf.lo."+files[i] {
			t.Errorf("entry %d is %s, want net.ipv4.conf.lo.%s", i, e.Name, files[i])
		}
	}
	var forwarding string
	for _, e := range l.Entries {
		if e.Name == "net.ipv4.conf.lo.forwarding" && e.Value != nil {
			forwarding = *e.Value
		}
	}
	if seen := sysctlNsenter(t, pid, "-n", "cat", "/proc/sys/net/ipv4/conf/lo/forwarding"); forwarding != seen {
		t.Errorf("list says lo forwarding %q, the target %q", forwarding, seen)
	}
	l = sysctlList{}
	mustCall(t, d, pid, "sysctl.list", `{"prefix":"net/ipv4/route"}`, &l)
	var flush bool
	for _, e := range l.Entries {
		if e.Name == "net.ipv4.route.flush" {
			flush = e.Error == "EACCES" && e.Value == nil
		} else if e.Error != "" || e.Value == nil {
			t.Errorf("route entry %+v", e)
		}
	}
	if !flush {
		t.Errorf("net.ipv4.route.flush is not listed as EACCES: %+v", l.Entries)
	}
	// A prefix naming a file lists just it; the whole tree is bounded.
	l = sysctlList{}
	mustCall(t, d, pid, "sysctl.list", `{"prefix":"net.core.somaxconn"}`, &l)
	if len(l.Entries) != 1 || l.Entries[0].Name != "net.core.somaxconn" || l.Entries[0].Value == nil {
		t.Errorf("list of one sysctl: %+v", l.Entries)
	}
	l = sysctlList{}
	mustCall(t, d, pid, "sysctl.list", `{}`, &l)
	if len(l.Entries) < 500 {
		t.Errorf("the whole tree has only %d entries", len(l.Entries))
	}
	wantErrno(t, call(t, d, pid, "sysctl.list", `{"prefix":"net.nosuch"}`, nil), syscall.ENOENT, "net.nosuch")

	// Malformed names and values are EINVAL naming the problem.
	for _, c := range []struct{ payload, why string }{
		{`{"name":""}`, "name is empty"},
		{`{"name":"net..ipv4.ip_forward"}`, "empty component"},
		{`{"name":"net/../../etc/passwd"}`, "must sit between"},
		{`{"name":"../kernel/hostname"}`, "empty component"},
		{`{"name":"net.ipv4.ip_forward/"}`, "must sit between"},
		{`{"name":"net.ipv4.*"}`, "'*' is not allowed"},
		{`{"name":"net.ipv4.ip forward"}`, "' ' is not allowed"},
		{`{"name":"` + strings.Repeat("a.", 200) + `a"}`, "at most 256"},
		{`{"name":"kernel.hostname","value":"x"}`, "unknown field"},
	} {
		wantErrno(t, call(t, d, pid, "sysctl.get", c.payload, nil), syscall.EINVAL, c.why)
	}
	for _, c := range []struct{ value, why string }{
		{"", "value is empty"},
		{"1\n", "control character"},
		{strings.Repeat("1", 5000), "at most 4096"},
	} {
		err := call(t, d, pid, "sysctl.set", fmt.Sprintf(`{"name":"net.core.somaxconn","value":%q}`, c.value), nil)
		wantErrno(t, err, syscall.EINVAL, "net.core.somaxconn", c.why)
	}
	wantErrno(t, call(t, d, pid, "sysctl.list", `{"prefix":"net..x"}`, nil), syscall.EINVAL, "prefix", "empty component")
}

// A rootless target: its root writes the sysctls its namespaces own
// (the hostname through sethostname(2), which /proc/sys refuses to
// anyone but the host's root).
func TestSysctlRootless(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, Hostname: "sysctl-rootless", MountProc: true})
	d, _ := newDispatcher(t, "")
	pid := target.PID()

	sysctlRoundTrip(t, d, pid, "net.core.somaxconn", "net/core/somaxconn", "-n", 2345)
	sysctlRoundTrip(t, d, pid, "kernel.shmmni", "kernel/shmmni", "-i", 1111)
	sysctlRoundTrip(t, d, pid, "user.max_net_namespaces", "user/max_net_namespaces", "-U", 999)
	hostName, _ := os.Hostname()
	r := sysctlSet(t, d, pid, "kernel.hostname", "rootless-renamed")
	if r.Value == nil || *r.Value != "rootless-renamed" {
		t.Errorf("set hostname: %+v", r)
	}
	if seen := sysctlNsenter(t, pid, "-u", "hostname"); seen != "rootless-renamed" {
		t.Errorf("the target's hostname is %q", seen)
	}
	if now, _ := os.Hostname(); now != hostName {
		t.Errorf("the host's hostname changed to %q", now)
	}
	// The target's root cannot write machine-wide entries even when
	// allowed: the kernel says EACCES as it would to the target. (One
	// core at a time: each checks at Close that no plugin is left.)
	d.Close()
	d2, _ := newDispatcher(t, `
[[plugin]]
name = "sysctl"
[plugin.options]
allow_host_sysctls = ["vm.overcommit_memory"]
`)
	host := sysctlHost(t, "vm/overcommit_memory")
	err := call(t, d2, pid, "sysctl.set", fmt.Sprintf(`{"name":"vm.overcommit_memory","value":%q}`, host), nil)
	wantErrno(t, err, syscall.EACCES, "vm.overcommit_memory")
}

// A FROM-scratch target has no /proc at all: the plugin's fresh procfs
// serves it.
func TestSysctlScratch(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, Scratch: true, Hostname: "sysctl-scratch"})
	d, _ := newDispatcher(t, "")
	pid := target.PID()
	if _, err := os.Stat(target.Root() + "/proc"); !os.IsNotExist(err) {
		t.Fatalf("the scratch target has a /proc: %v", err)
	}
	if got := sysctlGet(t, d, pid, "kernel.hostname"); got != "sysctl-scratch" {
		t.Errorf("hostname %q", got)
	}
	// nsenter without -m reads the host's /proc with the target's
	// namespaces: what the target would see.
	sysctlRoundTrip(t, d, pid, "net.ipv4.ip_default_ttl", "net/ipv4/ip_default_ttl", "-n", 42)
	sysctlRoundTrip(t, d, pid, "fs.mqueue.msg_max", "fs/mqueue/msg_max", "-i", 17)
	sysctlSet(t, d, pid, "kernel.hostname", "scratch-renamed")
	if seen := sysctlNsenter(t, pid, "-u", "cat", "/proc/sys/kernel/hostname"); seen != "scratch-renamed" {
		t.Errorf("hostname in the target: %q", seen)
	}
	var l sysctlList
	mustCall(t, d, pid, "sysctl.list", `{"prefix":"fs.mqueue"}`, &l)
	if len(l.Entries) != 5 {
		t.Errorf("fs.mqueue lists %+v", l.Entries)
	}
}

// A target that bind-mounts one /proc/sys file over another in its own
// mount namespace fools whoever writes through its /proc, not the plugin.
func TestSysctlBindMountOverProcSysDoesNotRedirect(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d, _ := newDispatcher(t, "")
	pid := target.PID()

	somaxconn := sysctlNsenter(t, pid, "-n", "cat", "/proc/sys/net/core/somaxconn")
	sysctlNsenter(t, pid, "-a", "mount", "--bind", "/proc/sys/net/core/somaxconn", "/proc/sys/net/ipv4/ip_default_ttl")
	// Through the target's /proc, ip_default_ttl now is somaxconn.
	if seen := sysctlNsenter(t, pid, "-a", "cat", "/proc/sys/net/ipv4/ip_default_ttl"); seen != somaxconn {
		t.Fatalf("the bind mount did not take: ip_default_ttl reads %q in the target", seen)
	}
	r := sysctlSet(t, d, pid, "net.ipv4.ip_default_ttl", "33")
	if r.Value == nil || *r.Value != "33" {
		t.Errorf("set answered %+v", r)
	}
	// The real entries, seen without the target's mounts.
	if ttl := sysctlNsenter(t, pid, "-n", "cat", "/proc/sys/net/ipv4/ip_default_ttl"); ttl != "33" {
		t.Errorf("the target's ip_default_ttl is %s, want 33", ttl)
	}
	if now := sysctlNsenter(t, pid, "-n", "cat", "/proc/sys/net/core/somaxconn"); now != somaxconn {
		t.Errorf("the write went to somaxconn: %s, was %s", now, somaxconn)
	}
	if got := sysctlGet(t, d, pid, "net.ipv4.ip_default_ttl"); got != "33" {
		t.Errorf("get reads %s through the bind mount", got)
	}
}

// Machine-wide sysctls are refused unless the configuration allows them
// by name, and so are namespaced ones when the target shares the host's
// namespace.
func TestSysctlRefusesHostSysctls(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	// Allowed by name, in slash form.
	d, _ := newDispatcher(t, `
[[plugin]]
name = "sysctl"
[plugin.options]
allow_host_sysctls = ["vm/overcommit_memory"]
`)
	pid := target.PID()

	swappiness := sysctlHost(t, "vm/swappiness")
	for _, n := range []string{"vm.swappiness", "kernel.core_pattern", "fs.file-max", "kernel.ostype", "fs.mqueue"} {
		err := call(t, d, pid, "sysctl.set", fmt.Sprintf(`{"name":%q,"value":"0"}`, n), nil)
		wantErrno(t, err, syscall.EPERM, n, "not namespaced", "allow_host_sysctls")
	}
	if now := sysctlHost(t, "vm/swappiness"); now != swappiness {
		t.Errorf("host vm.swappiness changed to %s", now)
	}
	// Reading is fine: it is the value the target sees.
	if got := sysctlGet(t, d, pid, "vm.swappiness"); got != swappiness {
		t.Errorf("get vm.swappiness = %q, host %q", got, swappiness)
	}
	// The allowed one is written, with the value it already has so that
	// the host is left as it was.
	host := sysctlHost(t, "vm/overcommit_memory")
	r := sysctlSet(t, d, pid, "vm.overcommit_memory", host)
	if r.Name != "vm.overcommit_memory" || r.Value == nil || *r.Value != host {
		t.Errorf("allowed set answered %+v", r)
	}

	// A target in the host's network namespace: net.* is the host's.
	shared := newTarget(t, sandbox.Options{Namespaces: []string{"mnt", "pid", "uts", "ipc"}, MountProc: true})
	err := call(t, d, shared.PID(), "sysctl.set", `{"name":"net.core.somaxconn","value":"1000"}`, nil)
	wantErrno(t, err, syscall.EPERM, "net.core.somaxconn", "net namespace", "shares with the core")
	if got := sysctlGet(t, d, shared.PID(), "net.core.somaxconn"); got != sysctlHost(t, "net/core/somaxconn") {
		t.Errorf("get in the host's netns: %s", got)
	}
	// ... but its own ipc namespace is fine.
	sysctlRoundTrip(t, d, shared.PID(), "kernel.msgmax", "kernel/msgmax", "-i", 4321)
	d.Close() // one core at a time: each checks at Close that no plugin is left

	// Bad options fail the plugin's load, naming the option's line.
	d, _ = newDispatcher(t, `
[[plugin]]
name = "sysctl"
[plugin.options]
max_list_entries = 5
allow_host_sysctls = ["vm.swappiness",
  "vm..x"]
`)
	wantErrno(t, call(t, d, pid, "sysctl.set", `{"name":"vm.swappiness","value":"60"}`, nil), syscall.ENOPKG, "test.toml:8:", "allow_host_sysctls", "vm..x")
	d.Close()
	d, _ = newDispatcher(t, `
[[plugin]]
name = "sysctl"
[plugin.options]
allow_host = ["vm.swappiness"]
`)
	wantErrno(t, call(t, d, pid, "sysctl.list", `{}`, nil), syscall.ENOPKG, "test.toml:6:", "allow_host", "unknown option")
	d.Close()
	d, _ = newDispatcher(t, `
[[plugin]]
name = "sysctl"
[plugin.options]
max_list_entries = 5
`)
	wantErrno(t, call(t, d, pid, "sysctl.list", `{"prefix":"net.ipv4"}`, nil), syscall.E2BIG, "more than 5")
	d.Close()

	// allowed_roots narrow the plugin to /proc/sys subtrees.
	d, _ = newDispatcher(t, `
[[plugin]]
name = "sysctl"
allowed_roots = ["/proc/sys/net"]
`)
	sysctlGet(t, d, pid, "net.core.somaxconn")
	wantErrno(t, call(t, d, pid, "sysctl.get", `{"name":"kernel.hostname"}`, nil), syscall.EACCES, "kernel.hostname", "allowed roots")
	wantErrno(t, call(t, d, pid, "sysctl.set", `{"name":"kernel.hostname","value":"x"}`, nil), syscall.EACCES, "allowed roots")
	wantErrno(t, call(t, d, pid, "sysctl.list", `{}`, nil), syscall.EACCES, "allowed roots")
	var l sysctlList
	mustCall(t, d, pid, "sysctl.list", `{"prefix":"net.ipv4.route.flush"}`, &l)
	if len(l.Entries) != 1 || l.Entries[0].Error != "EACCES" {
		t.Errorf("list of a write-only entry: %+v", l.Entries)
	}
}

// sysctl names are bytes: an interface whose name is not UTF-8 is listed
// under its own name, in the {"base64": ...} form, and can be read and
// written by that name.
func TestSysctlNamesAreBytes(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	pid := target.PID()
	const ifname = "a\xffb"
	sysctlNsenter(t, pid, "-n", "ip", "link", "add", "name", ifname, "type", "veth", "peer", "name", "p0")
	if seen := sysctlNsenter(t, pid, "-n", "cat", "/proc/sys/net/ipv4/conf/"+ifname+"/forwarding"); seen != "0" {
		t.Fatalf("the target's %q forwarding is %q", ifname, seen)
	}
	d, _ := newDispatcher(t, "")
	name := "net.ipv4.conf." + ifname + ".forwarding"

	resp, err := d.Dispatch(context.Background(), core.Request{PID: pid, Type: "sysctl.list", Payload: json.RawMessage(`{"prefix":"net.ipv4.conf"}`)})
	if err != nil {
		t.Fatal(err)
	}
	encoded, _ := json.Marshal(map[string]string{"base64": base64.StdEncoding.EncodeToString([]byte(name))})
	if !strings.Contains(string(resp), `"name":`+string(encoded)) {
		t.Errorf("sysctl.list does not list %q as %s:\n%.2000s", name, encoded, resp)
	}
	var l struct {
		Entries []struct {
			Name  sdk.Name  `json:"name"`
			Value *sdk.Name `json:"value"`
		} `json:"entries"`
	}
	if err := json.Unmarshal(resp, &l); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range l.Entries {
		found = found || e.Name == sdk.Name(name)
	}
	if !found {
		t.Errorf("%q is not among the entries", name)
	}

	// Named by its bytes (base64, since they are not UTF-8), in dotted
	// form and in slash form.
	var v struct {
		Name  sdk.Name `json:"name"`
		Value sdk.Name `json:"value"`
	}
	mustCall(t, d, pid, "sysctl.get", `{"name":`+string(encoded)+`}`, &v)
	if v.Name != sdk.Name(name) || v.Value != "0" {
		t.Errorf("sysctl.get %q: %+v", name, v)
	}
	slash, _ := json.Marshal(map[string]string{"base64": base64.StdEncoding.EncodeToString([]byte("net/ipv4/conf/" + ifname + "/forwarding"))})
	mustCall(t, d, pid, "sysctl.set", `{"name":`+string(slash)+`,"value":"1"}`, &v)
	if v.Name != sdk.Name(name) || v.Value != "1" {
		t.Errorf("sysctl.set %q: %+v", name, v)
	}
	if seen := sysctlNsenter(t, pid, "-n", "cat", "/proc/sys/net/ipv4/conf/"+ifname+"/forwarding"); seen != "1" {
		t.Errorf("the target's %q is %s, want 1", name, seen)
	}

	// Values are bytes too: a hostname that is not UTF-8.
	mustCall(t, d, pid, "sysctl.set", `{"name":"kernel.hostname","value":{"base64":"aP8="}}`, &v)
	if v.Value != "h\xff" {
		t.Errorf("sysctl.set kernel.hostname: %+v", v)
	}
	if seen := sysctlNsenter(t, pid, "-u", "hostname"); seen != "h\xff" {
		t.Errorf("the target's hostname is %q", seen)
	}
}
