package tests

import (
	"encoding/json"
	"os"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sandbox"
)

// procfsWrite is the payload of procfs.write of data to path.
func procfsWrite(path, data string) string {
	b, _ := json.Marshal(struct {
		Path string `json:"path"`
		Data []byte `json:"data"`
	}{path, []byte(data)})
	return string(b)
}

// keepHostname restores the host's hostname when the test ends, should a
// write reach it after all (it does on code without the rule).
func keepHostname(t *testing.T) string {
	t.Helper()
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if now, _ := os.Hostname(); now != host {
			t.Errorf("the host's hostname was changed to %q", now)
			unix.Sethostname([]byte(host))
		}
	})
	return host
}

// procfs.write follows sysctl.set's rule for the file it actually opened:
// a sysctl of a namespace the request did not join, a machine-wide one, or
// one the target redirected by a bind mount is refused; the target's own
// hostname is still written.
func TestProcfsWriteFollowsTheSysctlRule(t *testing.T) {
	keepHostname(t)
	target := newTarget(t, sandbox.Options{Hostname: "own"})
	pid := target.PID()
	d, _ := newDispatcher(t, "")
	hostname := func() string { return sysctlNsenter(t, pid, "-u", "hostname") }

	// mnt joined, uts not: the hostname file is the host's.
	err := callNS(d, pid, "procfs.write", procfsWrite("/proc/sys/kernel/hostname", "evil"), []string{"mnt"})
	wantErrno(t, err, syscall.EPERM, "/proc/sys/kernel/hostname", "uts namespace", `allow_host_changes = ["uts"]`, "allow_host_writes")

	// All joined: the target's own.
	mustCall(t, d, pid, "procfs.write", procfsWrite("/proc/sys/kernel/hostname", "mine"), nil)
	if got := hostname(); got != "mine" {
		t.Errorf("the target's hostname is %q, want mine", got)
	}

	// The target binds /proc/sys/kernel elsewhere: the file is still the
	// hostname, refused without uts, written with it.
	dir := t.TempDir() // exists in the target's copy of the mount table
	sysctlNsenter(t, pid, "-m", "mount", "--bind", "/proc/sys/kernel", dir)
	err = callNS(d, pid, "procfs.write", procfsWrite(dir+"/hostname", "evil"), []string{"mnt"})
	wantErrno(t, err, syscall.EPERM, dir+"/hostname (which is /proc/sys/kernel/hostname)", "uts namespace")
	mustCall(t, d, pid, "procfs.write", procfsWrite(dir+"/hostname", "again"), nil)
	if got := hostname(); got != "again" {
		t.Errorf("the target's hostname is %q, want again", got)
	}

	// Machine-wide: refused however it is reached, even with everything
	// joined. The value written is the host's own, so that nothing
	// changes should it get through.
	swappiness := sysctlHost(t, "vm/swappiness")
	err = call(t, d, pid, "procfs.write", procfsWrite("/proc/sys/vm/swappiness", swappiness), nil)
	wantErrno(t, err, syscall.EPERM, "/proc/sys/vm/swappiness", "whole machine", `allow_host_writes = ["/proc/sys/vm/swappiness"]`)
	vm := t.TempDir()
	sysctlNsenter(t, pid, "-m", "mount", "--bind", "/proc/sys/vm", vm)
	err = call(t, d, pid, "procfs.write", procfsWrite(vm+"/swappiness", swappiness), nil)
	wantErrno(t, err, syscall.EPERM, "(which is /proc/sys/vm/swappiness)", "whole machine")

	// A process's file of a procfs of another pid namespace: the target
	// (without a /proc of its own) sees the host's, whose process 1 is the
	// host's init.
	adj, err := os.ReadFile("/proc/1/oom_score_adj")
	if err != nil {
		t.Fatal(err)
	}
	err = call(t, d, pid, "procfs.write", procfsWrite("/proc/1/oom_score_adj", string(adj)), nil)
	wantErrno(t, err, syscall.EPERM, "/proc/1/oom_score_adj", "pid namespace")
	d.Close()

	// Allowed by the option, by file or by directory.
	d, _ = newDispatcher(t, "[[plugin]]\nname = \"procfs\"\n[plugin.options]\nallow_host_writes = [\"/proc/sys/vm\"]\n")
	mustCall(t, d, pid, "procfs.write", procfsWrite(vm+"/swappiness", swappiness), nil)
	if now := sysctlHost(t, "vm/swappiness"); now != swappiness {
		t.Errorf("vm.swappiness is %s, was %s", now, swappiness)
	}
	d.Close()

	// A bad entry fails the plugin's load.
	d, _ = newDispatcher(t, "[[plugin]]\nname = \"procfs\"\n[plugin.options]\nallow_host_writes = [\"/etc\"]\n")
	wantErrno(t, call(t, d, pid, "procfs.read", `{"path":"/proc/version"}`, nil), syscall.ENOPKG, "allow_host_writes", "not under /proc or /sys")
}

// A process's file of the target's own procfs, in its own pid namespace,
// is the target's: written when pid is joined, refused when not.
func TestProcfsWriteProcessFiles(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	pid := target.PID()
	d, _ := newDispatcher(t, "")
	adj := sysctlNsenter(t, pid, "-a", "cat", "/proc/1/oom_score_adj")
	want := strconv.Itoa(min(1000, mustAtoi(t, adj)+1))
	mustCall(t, d, pid, "procfs.write", procfsWrite("/proc/1/oom_score_adj", want), nil)
	if got := sysctlNsenter(t, pid, "-a", "cat", "/proc/1/oom_score_adj"); got != want {
		t.Errorf("the target's init has oom_score_adj %s, want %s", got, want)
	}
	err := callNS(d, pid, "procfs.write", procfsWrite("/proc/1/oom_score_adj", adj), []string{"mnt"})
	wantErrno(t, err, syscall.EPERM, "/proc/1/oom_score_adj")
	// Read-only files keep the kernel's errno.
	wantErrno(t, call(t, d, pid, "procfs.write", procfsWrite("/proc/version", "x"), nil), hostWriteErrno(t, "/proc/version"))
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}
