package tests

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// A container-like, rootful target: the handler runs in all of its
// namespaces (its user namespace is the core's, so that one is not joined)
// and sees its hostname and pid numbering.
func TestContainerTargetJoinsEveryNamespace(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Hostname: "ctr-target", MountProc: true})
	d, _ := newDispatcher(t, "")

	var w whoami
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, &w)
	if w.Hostname != "ctr-target" || w.UID != 0 {
		t.Errorf("handler saw hostname %q uid %d, want ctr-target uid 0", w.Hostname, w.UID)
	}
	h := servingPID(t, d, "probe")
	if w.PID == h || w.PID > 100 {
		t.Errorf("handler pid inside is %d (host pid %d): not the target's pid numbering", w.PID, h)
	}
	assertNamespaces(t, h, target.PID(), noUserNS)

	var r struct{ Data []byte }
	mustCall(t, d, target.PID(), "procfs.read", `{"path":"/proc/sys/kernel/hostname"}`, &r)
	if string(r.Data) != "ctr-target\n" {
		t.Errorf("procfs.read hostname = %q", r.Data)
	}
	assertNamespaces(t, servingPID(t, d, "procfs"), target.PID(), noUserNS)
}

// A rootless target: its own user namespace maps root to host uid 100000.
// The handler joins it too, is root inside and uid 100000 outside.
func TestRootlessTarget(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, Hostname: "rootless", MountProc: true})
	d, _ := newDispatcher(t, "")

	var w whoami
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, &w)
	if w.UID != 0 || w.GID != 0 || w.Hostname != "rootless" {
		t.Errorf("inside: uid %d gid %d hostname %q; want 0 0 rootless", w.UID, w.GID, w.Hostname)
	}
	h := servingPID(t, d, "probe")
	assertNamespaces(t, h, target.PID(), allNS)
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", h))
	if !strings.Contains(string(status), "Uid:\t100000\t100000\t100000\t100000") {
		t.Errorf("host view of handler uid:\n%s", status)
	}
}

// A FROM-scratch target: an empty tmpfs root with no libc, no /proc and
// no /sys, in its own user namespace. Files are read from its root; /proc
// reads work through a fresh procfs the core mounts for the handler.
func TestScratchTarget(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, Scratch: true, Hostname: "scratch",
		Files: map[string]string{"/etc/hello.txt": "hello from scratch\n"}})
	d, _ := newDispatcher(t, `
[[plugin]]
name = "procfs"
fresh_mounts = ["proc", "sys"]
[[plugin]]
name = "probe"
`)
	var r struct{ Data []byte }
	mustCall(t, d, target.PID(), "procfs.read", `{"path":"/etc/hello.txt"}`, &r)
	if string(r.Data) != "hello from scratch\n" {
		t.Errorf("read %q", r.Data)
	}
	var dir struct{ Entries []struct{ Name string } }
	mustCall(t, d, target.PID(), "procfs.readdir", `{"path":"/"}`, &dir)
	if len(dir.Entries) != 1 || dir.Entries[0].Name != "etc" {
		t.Errorf("root of scratch target: %+v", dir.Entries)
	}
	mustCall(t, d, target.PID(), "procfs.read", `{"path":"/proc/sys/kernel/hostname"}`, &r)
	if string(r.Data) != "scratch\n" {
		t.Errorf("hostname through fresh procfs: %q", r.Data)
	}
	// The fresh procfs is the target's pid namespace: the handler is in it.
	var link struct{ Target string }
	mustCall(t, d, target.PID(), "procfs.readlink", `{"path":"/proc/self"}`, &link)
	if n, err := strconv.Atoi(link.Target); err != nil || n > 100 {
		t.Errorf("/proc/self in fresh procfs -> %q: not the target's pid numbering", link.Target)
	}
	// Nothing was created in the target's filesystem for those mounts,
	// and no socket of nsplug's is in it.
	ents, _ := os.ReadDir(target.Root())
	if len(ents) != 1 {
		t.Errorf("target root now holds %v", ents)
	}
	filepath.Walk(target.Root(), func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode()&os.ModeSocket != 0 {
			t.Errorf("socket in the target's filesystem: %s", p)
		}
		return nil
	})
	h := servingPID(t, d, "procfs")
	assertNamespaces(t, h, target.PID(), allNS)
	// Without fresh mounts a /proc read fails as it would in the target.
	err := call(t, d, target.PID(), "procfs.read", `{"path":"/proc/sys/kernel/hostname"}`, nil)
	_ = err // served by the procfs plugin with fresh mounts: fine
	var w whoami
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, &w)
	if w.Fresh {
		t.Errorf("probe got a fresh procfs it was not configured for")
	}
	wantErrno(t, call(t, d, target.PID(), "procfs.read", `{"path":"/etc/missing"}`, nil), syscall.ENOENT, "/etc/missing")
}

// What the plugin process keeps once serving: no host fd, cwd or root, no
// socket in the target's filesystem, and it is not readable or ptraceable
// by root inside the target.
func TestHandlerProcessIsSealedFromTheTarget(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, MountProc: true})
	d, runDir := newDispatcher(t, "")
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, nil)
	h := servingPID(t, d, "probe")

	// fds: only pipes, sockets and anonymous inodes, and the detached
	// fresh procfs sysctl asks for (the built-ins share the process;
	// TestFreshMountFDsAreNotTheHostRoot checks that it is detached).
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", h))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		p := fmt.Sprintf("/proc/%d/fd/%s", h, fd.Name())
		link, _ := os.Readlink(p)
		var fs unix.Statfs_t
		if link == "/" && unix.Statfs(p, &fs) == nil && fs.Type == unix.PROC_SUPER_MAGIC {
			continue
		}
		if !strings.HasPrefix(link, "pipe:") && !strings.HasPrefix(link, "socket:") && !strings.HasPrefix(link, "anon_inode:") {
			t.Errorf("handler fd %s -> %s", fd.Name(), link)
		}
	}
	// cwd and root are the target's root.
	var rootSt, cwdSt, hRootSt unix.Stat_t
	unix.Stat(target.Root(), &rootSt)
	unix.Stat(fmt.Sprintf("/proc/%d/cwd", h), &cwdSt)
	unix.Stat(fmt.Sprintf("/proc/%d/root", h), &hRootSt)
	if cwdSt.Ino != rootSt.Ino || cwdSt.Dev != rootSt.Dev || hRootSt.Ino != rootSt.Ino || hRootSt.Dev != rootSt.Dev {
		t.Errorf("handler cwd/root are not the target's root")
	}
	// The socket was on the host, under runtime_dir, never in the target;
	// once connected, the core removed it and its directory.
	if left, _ := filepath.Glob(filepath.Join(runDir, "*")); len(left) != 0 {
		t.Errorf("left in runtime_dir %s while serving: %v", runDir, left)
	}
	// /proc/PID/exe is a sealed copy or the file on a detached read-only
	// overlay, not a host file: no path reaches it, and it cannot be
	// opened for writing.
	assertExeSealed(t, h)

	// Root inside the target tries to look at the handler.
	inner := innerPID(t, h)
	for _, what := range []string{"environ", "cwd", "root", "exe", "fd", "mem"} {
		out, err := exec.Command("nsenter", "-t", strconv.Itoa(target.PID()), "-a",
			"ls", "-l", fmt.Sprintf("/proc/%d/%s", inner, what)).CombinedOutput()
		if what == "environ" || what == "mem" {
			out, err = exec.Command("nsenter", "-t", strconv.Itoa(target.PID()), "-a",
				"head", "-c1", fmt.Sprintf("/proc/%d/%s", inner, what)).CombinedOutput()
		}
		if err == nil || !strings.Contains(string(out), "ermission denied") {
			t.Errorf("root in the target read /proc/%d/%s: err=%v %s", inner, what, err, out)
		}
	}
	// And cannot attach to it.
	if errno := ptraceFromTarget(t, target.PID(), inner); errno != syscall.EPERM {
		t.Errorf("PTRACE_ATTACH from root in the target: errno %v, want EPERM", errno)
	}
}

// innerPID is the pid of host pid h in its own pid namespace.
func innerPID(t *testing.T, h int) int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", h))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "NSpid:"); ok {
			f := strings.Fields(rest)
			n, _ := strconv.Atoi(f[len(f)-1])
			return n
		}
	}
	t.Fatalf("no NSpid for %d", h)
	return 0
}

// ptraceFromTarget makes a process in the target's namespaces, as the
// target's root, try PTRACE_ATTACH on inner; it returns the errno (0 when
// the attach succeeded).
func ptraceFromTarget(t *testing.T, target, inner int) syscall.Errno {
	t.Helper()
	// python3 is on the host's root, which a container-like target shares.
	script := fmt.Sprintf("import ctypes\nlibc=ctypes.CDLL(None,use_errno=True)\nr=libc.ptrace(16,%d,0,0)\nprint('errno=%%d' %% (0 if r==0 else ctypes.get_errno()))", inner)
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(target), "-a", "python3", "-c", script).CombinedOutput()
	var n int
	if _, scanErr := fmt.Sscanf(strings.TrimSpace(string(out)), "errno=%d", &n); scanErr != nil {
		t.Fatalf("ptrace probe in the target failed: %v: %s", err, out)
	}
	return syscall.Errno(n)
}

func TestWarmInstancesAreReusedPerNamespaceSet(t *testing.T) {
	parallel(t)
	a := newTarget(t, sandbox.Options{Hostname: "a"})
	b := newTarget(t, sandbox.Options{Hostname: "b"})
	d, _ := newDispatcher(t, "")

	var w1, w2, w3 whoami
	mustCall(t, d, a.PID(), "probe.whoami", `{}`, &w1)
	mustCall(t, d, a.PID(), "probe.whoami", `{}`, &w2)
	if len(d.Instances()) != 1 {
		t.Fatalf("two requests to one target started %d instances", len(d.Instances()))
	}
	mustCall(t, d, b.PID(), "probe.whoami", `{}`, &w3)
	if len(d.Instances()) != 2 || w3.Hostname != "b" || w1.Hostname != "a" {
		t.Fatalf("instances %v, hostnames %q %q", d.Instances(), w1.Hostname, w3.Hostname)
	}
	// Narrowing the namespaces makes another instance, in only those.
	resp, err := d.Dispatch(context.Background(), core.Request{PID: a.PID(), Type: "probe.whoami", Namespaces: []string{"uts"}})
	if err != nil || !strings.Contains(string(resp), `"hostname":"a"`) {
		t.Fatalf("narrowed: %s %v", resp, err)
	}
	narrowed := 0
	for _, in := range d.Instances() {
		if slices.Equal(in.Joined, []string{"uts"}) {
			narrowed++
			assertNamespaces(t, in.PID, a.PID(), []string{"uts"})
		}
	}
	if narrowed != 1 || len(d.Instances()) != 3 {
		t.Errorf("want 3 instances, one in uts only; have %v", d.Instances())
	}
}

func TestIdleInstancesAreReaped(t *testing.T) {
	target := newTarget(t, sandbox.Options{})
	d, _ := newDispatcher(t, "[defaults]\nidle_timeout = \"200ms\"\n")
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, nil)
	h := servingPID(t, d, "probe")
	waitGone(t, h, 5*time.Second)
	if n := len(d.Instances()); n != 0 {
		t.Errorf("%d instances after idle timeout", n)
	}
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, nil) // a fresh one starts
}

func TestOneshotModeLeavesNothingRunning(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d, _ := newDispatcher(t, "[defaults]\nmode = \"oneshot\"\n")
	var w1, w2 whoami
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, &w1)
	if n := len(d.Instances()); n != 0 {
		t.Errorf("oneshot left %d instances", n)
	}
	if procs := processesInPIDNamespaceOf(t, target.PID()); len(procs) != 1 {
		t.Errorf("processes in the target's pid namespace after a oneshot request: %v", procs)
	}
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, &w2)
	if kids := processesOf(d); len(kids) != 0 {
		t.Errorf("plugin processes after oneshot requests: %v", kids)
	}
}

func TestBadInputGetsPreciseErrors(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{})
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"procfs\"\nallowed_roots = [\"/proc\", \"/mnt\"]\n[[plugin]]\nname = \"probe\"\n")
	pid := target.PID()

	dead := exec.Command("true")
	dead.Run()
	cases := []struct {
		name, typ, payload string
		pid                int
		errno              syscall.Errno
		fragments          []string
	}{
		{"unknown type", "procfs.nope", `{}`, pid, syscall.EOPNOTSUPP, []string{`"procfs.nope"`, "procfs.read"}},
		{"payload not an object", "procfs.read", `[1,2]`, pid, syscall.EINVAL, []string{"not a JSON object"}},
		{"payload not JSON", "procfs.read", `{"path":`, pid, syscall.EINVAL, []string{"not a JSON object"}},
		{"unknown field", "procfs.read", `{"path":"/proc/version","bogus":1}`, pid, syscall.EINVAL, []string{"bogus"}},
		{"wrong field type", "procfs.read", `{"path":7}`, pid, syscall.EINVAL, []string{"path"}},
		{"relative path", "procfs.read", `{"path":"proc/version"}`, pid, syscall.EINVAL, []string{"not absolute"}},
		{"unclean path", "procfs.read", `{"path":"/proc/../etc/shadow"}`, pid, syscall.EINVAL, []string{"not clean"}},
		{"outside allowed roots", "procfs.read", `{"path":"/etc/shadow"}`, pid, syscall.EACCES, []string{"allowed roots"}},
		{"missing file", "procfs.read", `{"path":"/proc/nonexistent"}`, pid, syscall.ENOENT, []string{"/proc/nonexistent"}},
		{"read a directory", "procfs.read", `{"path":"/proc/sys"}`, pid, syscall.EISDIR, nil},
		{"readlink of a file", "procfs.readlink", `{"path":"/proc/version"}`, pid, syscall.EINVAL, nil},
		{"write read-only", "procfs.write", `{"path":"/proc/version","data":"eA=="}`, pid, hostWriteErrno(t, "/proc/version"), nil},
		{"dead pid", "procfs.read", `{"path":"/proc/version"}`, dead.Process.Pid, syscall.ESRCH, []string{strconv.Itoa(dead.Process.Pid)}},
		{"no such pid", "procfs.read", `{"path":"/proc/version"}`, 1 << 30, syscall.ESRCH, []string{"does not exist"}},
		{"invalid pid", "procfs.read", `{}`, -4, syscall.EINVAL, []string{"-4"}},
		{"handler errno", "probe.errno", `{"errno":61}`, pid, syscall.ENODATA, []string{"asked to fail"}},
		{"handler panic", "probe.panic", `{}`, pid, syscall.EIO, []string{"panicked"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantErrno(t, call(t, d, c.pid, c.typ, c.payload, nil), c.errno, c.fragments...)
		})
	}
	if _, err := d.Dispatch(context.Background(), core.Request{PID: pid, Type: "probe.whoami", Namespaces: []string{"nett"}}); err == nil || !strings.Contains(err.Error(), "nett") {
		t.Errorf("unknown namespace: %v", err)
	}
	// The core is still up and serving.
	mustCall(t, d, pid, "procfs.read", `{"path":"/proc/version"}`, nil)
}

func TestCrashingAndHangingPlugins(t *testing.T) {
	target := newTarget(t, sandbox.Options{MountProc: true})
	d, _ := newDispatcher(t, "[defaults]\nrequest_timeout = \"300ms\"\n")
	pid := target.PID()

	mustCall(t, d, pid, "probe.whoami", `{}`, nil)
	h := servingPID(t, d, "probe")
	wantErrno(t, call(t, d, pid, "probe.crash", `{}`, nil), syscall.EIO, "exited", "exit status 3")
	waitGone(t, h, 5*time.Second)
	mustCall(t, d, pid, "probe.whoami", `{}`, nil) // a healthy instance again

	h = servingPID(t, d, "probe")
	wantErrno(t, call(t, d, pid, "probe.hang", `{}`, nil), syscall.ETIMEDOUT, "timed out")
	waitGone(t, h, 5*time.Second)
	if procs := processesInPIDNamespaceOf(t, pid); len(procs) != 1 {
		t.Errorf("processes left in the target after a hung request: %v", procs)
	}
	mustCall(t, d, pid, "probe.whoami", `{}`, nil)

	// A caller's cancellation ends the request too.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err := d.Dispatch(ctx, core.Request{PID: pid, Type: "probe.wait"})
	wantErrno(t, err, syscall.ECANCELED, "canceled")
	mustCall(t, d, pid, "probe.whoami", `{}`, nil)
}

func TestTargetExitingKillsNothingOfTheCore(t *testing.T) {
	parallel(t)
	target, err := sandbox.Start(sandbox.Options{MountProc: true})
	if err != nil {
		t.Fatal(err)
	}
	d, _ := newDispatcher(t, "")
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, nil)
	h := servingPID(t, d, "probe")
	target.Close() // the pid namespace's init dies: the kernel kills the handler
	waitGone(t, h, 5*time.Second)
	wantErrno(t, call(t, d, target.PID(), "probe.whoami", `{}`, nil), syscall.ESRCH)
	deadline := time.Now().Add(3 * time.Second)
	for len(d.Instances()) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(d.Instances()); n != 0 {
		t.Errorf("%d instances still listed after their target died", n)
	}
}

func TestConcurrentRequests(t *testing.T) {
	parallel(t)
	var targets []*sandbox.Sandbox
	for i := 0; i < 4; i++ {
		targets = append(targets, newTarget(t, sandbox.Options{Hostname: fmt.Sprintf("t%d", i)}))
	}
	d, _ := newDispatcher(t, "")
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				tg := (g + i) % len(targets)
				var r struct{ Data []byte }
				resp, err := d.Dispatch(context.Background(), core.Request{PID: targets[tg].PID(), Type: "procfs.read", Payload: []byte(`{"path":"/proc/sys/kernel/hostname"}`)})
				if err != nil {
					errs <- err
					continue
				}
				if err := jsonUnmarshal(resp, &r); err != nil || string(r.Data) != fmt.Sprintf("t%d\n", tg) {
					errs <- fmt.Errorf("target %d read %q (%v)", tg, r.Data, err)
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(d.Instances()); n != len(targets) {
		t.Errorf("%d instances for %d targets", n, len(targets))
	}
}

func TestInstanceCapEvictsLeastRecentlyUsed(t *testing.T) {
	parallel(t)
	a := newTarget(t, sandbox.Options{Hostname: "a"})
	b := newTarget(t, sandbox.Options{Hostname: "b"})
	d, _ := newDispatcher(t, "max_instances = 1\n")
	mustCall(t, d, a.PID(), "probe.whoami", `{}`, nil)
	ha := servingPID(t, d, "probe")
	mustCall(t, d, b.PID(), "probe.whoami", `{}`, nil)
	waitGone(t, ha, 5*time.Second)
	if n := len(d.Instances()); n != 1 {
		t.Errorf("%d instances with max_instances = 1", n)
	}
}

// Plugin processes die with the core, even when it is SIGKILLed, and leave
// nothing in the target.
func TestPluginsDieWithTheCore(t *testing.T) {
	target := newTarget(t, sandbox.Options{MountProc: true})
	runDir := t.TempDir()
	self, _ := os.Executable()
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), envTestCore+"="+strconv.Itoa(target.PID()), "NSPLUG_TEST_RUNDIR="+runDir)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	h, convErr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || convErr != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("test core said %q (%v)", line, err)
	}
	if procs := processesInPIDNamespaceOf(t, target.PID()); len(procs) != 2 {
		t.Errorf("want target + handler in its pid namespace, have %v", procs)
	}
	cmd.Process.Kill()
	cmd.Wait()
	waitGone(t, h, 5*time.Second)
	deadline := time.Now().Add(3 * time.Second)
	for len(processesInPIDNamespaceOf(t, target.PID())) != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if procs := processesInPIDNamespaceOf(t, target.PID()); len(procs) != 1 {
		t.Errorf("left in the target's pid namespace after the core died: %v", procs)
	}
}

func TestExternalPluginWithChecksum(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Hostname: "ext"})
	self, _ := os.Executable()
	sum := sha256File(t, self)
	d, _ := newDispatcher(t, fmt.Sprintf("[[plugin]]\nname = \"extprobe\"\npath = %q\nsha256 = %q\n", self, sum))
	var w whoami
	mustCall(t, d, target.PID(), "extprobe.whoami", `{}`, &w)
	if w.Hostname != "ext" {
		t.Errorf("external plugin saw hostname %q", w.Hostname)
	}
	var ext *core.PluginInfo
	for _, info := range d.Plugins() {
		if info.Name == "extprobe" {
			ext = &info
		}
	}
	if ext == nil || ext.Builtin || ext.SHA256 != sum || len(ext.Types) != 8 {
		t.Errorf("plugins: %+v", d.Plugins())
	}

	// A wrong checksum is refused, naming both sums; so are types a
	// plugin does not serve, naming both (fail_on_plugin_error makes
	// them New's error; see load_test.go for the default).
	bad := strings.Repeat("0", 64)
	cfg, err := config.Parse([]byte(fmt.Sprintf("runtime_dir = %q\nfail_on_plugin_error = true\n[[plugin]]\nname = \"extprobe\"\npath = %q\nsha256 = %q\n", t.TempDir(), self, bad)), "t")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := core.New(cfg, core.Options{}); err == nil || !strings.Contains(err.Error(), sum) || !strings.Contains(err.Error(), bad) {
		t.Errorf("wrong sha256: %v", err)
	}
	cfg, _ = config.Parse([]byte(fmt.Sprintf("runtime_dir = %q\nfail_on_plugin_error = true\n[[plugin]]\nname = \"extprobe\"\npath = %q\ntypes = [\"extprobe.fly\"]\n", t.TempDir(), self)), "t")
	if _, err := core.New(cfg, core.Options{}); err == nil || !strings.Contains(err.Error(), "extprobe.fly") || !strings.Contains(err.Error(), "plugin extprobe") {
		t.Errorf("unserved type: %v", err)
	}
}

func TestWriteReachesTheTarget(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Hostname: "before"})
	d, _ := newDispatcher(t, "")
	host, _ := os.Hostname()
	data := base64.StdEncoding.EncodeToString([]byte("after"))
	var w struct{ Written int }
	mustCall(t, d, target.PID(), "procfs.write", `{"path":"/proc/sys/kernel/hostname","data":"`+data+`"}`, &w)
	if w.Written != 5 {
		t.Errorf("written %d", w.Written)
	}
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(target.PID()), "-u", "hostname").Output()
	if err != nil || strings.TrimSpace(string(out)) != "after" {
		t.Errorf("target's hostname now %q (%v)", out, err)
	}
	if now, _ := os.Hostname(); now != host {
		t.Errorf("host's hostname changed from %q to %q", host, now)
	}
}

func TestBuiltinsCanBeOverriddenAndDisabled(t *testing.T) {
	parallel(t)
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"probe\"\ndisabled = true\n[[plugin]]\nname = \"procfs\"\nmode = \"oneshot\"\n")
	var names []string
	for _, p := range d.Plugins() {
		names = append(names, p.Name+"/"+p.Mode)
	}
	if !slices.Contains(names, "procfs/oneshot") || slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, "probe/") }) {
		t.Errorf("plugins: %v", names)
	}
	for _, ty := range d.Types() {
		if strings.HasPrefix(ty.Name, "probe.") {
			t.Errorf("disabled plugin's type %s is registered", ty.Name)
		}
	}
}

// unshare after joining: the handler gets a private mount namespace of its
// own, made from the target's, that neither the target nor the host shares.
func TestUnshareAfterJoining(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{})
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"probe\"\nunshare = [\"mnt\"]\n")
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, nil)
	h := servingPID(t, d, "probe")
	mnt := nsInode(t, h, "mnt")
	if mnt == nsInode(t, target.PID(), "mnt") || mnt == ownNSInode(t, "mnt") {
		t.Errorf("handler's mount namespace %d is not private", mnt)
	}
	for _, ns := range []string{"pid", "net", "ipc", "uts", "cgroup"} {
		if nsInode(t, h, ns) != nsInode(t, target.PID(), ns) {
			t.Errorf("handler is not in the target's %s namespace", ns)
		}
	}
}

// allowed_roots hold against symbolic links: a link inside an allowed
// root resolves inside it, and magic links are refused.
func TestAllowedRootsHoldAgainstSymlinks(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true, Files: map[string]string{"/mnt/ok": "ok"}})
	inTarget(t, target.PID(), "ln -s /etc/hostname /mnt/escape && ln -s ../etc/hostname /mnt/up && ln -s /proc/1/root/etc/hostname /mnt/magic")
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"procfs\"\nallowed_roots = [\"/mnt\", \"/proc\"]\n")
	pid := target.PID()
	mustCall(t, d, pid, "procfs.read", `{"path":"/mnt/ok"}`, nil)
	// An absolute link resolves within /mnt (where there is no etc/hostname).
	wantErrno(t, call(t, d, pid, "procfs.read", `{"path":"/mnt/escape"}`, nil), syscall.ENOENT)
	// ".." cannot climb above the allowed root either.
	wantErrno(t, call(t, d, pid, "procfs.read", `{"path":"/mnt/up"}`, nil), syscall.ENOENT)
	wantErrno(t, call(t, d, pid, "procfs.read", `{"path":"/mnt/magic"}`, nil), syscall.ENOENT)
	// Magic links are never followed, even inside an allowed root.
	wantErrno(t, call(t, d, pid, "procfs.read", `{"path":"/proc/self/root/etc/hostname"}`, nil), syscall.ELOOP)
	// The links themselves can still be read.
	var l struct{ Target string }
	mustCall(t, d, pid, "procfs.readlink", `{"path":"/mnt/escape"}`, &l)
	if l.Target != "/etc/hostname" {
		t.Errorf("readlink: %q", l.Target)
	}
}

// Oneshot processes (no go-plugin, one request each) fail as precisely as
// pooled ones and leave nothing behind.
func TestOneshotFailures(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d, _ := newDispatcher(t, "[defaults]\nmode = \"oneshot\"\nrequest_timeout = \"2s\"\n")
	pid := target.PID()
	wantErrno(t, call(t, d, pid, "probe.crash", `{}`, nil), syscall.EIO, "exit status 3")
	wantErrno(t, call(t, d, pid, "probe.hang", `{}`, nil), syscall.ETIMEDOUT, "timed out")
	wantErrno(t, call(t, d, pid, "probe.errno", `{"errno":13}`, nil), syscall.EACCES, "asked to fail")
	_, err := d.Dispatch(context.Background(), core.Request{PID: pid, Type: "probe.whoami", Credentials: &core.Credentials{UID: 1, GID: 1, Cwd: "/nonexistent"}})
	wantErrno(t, err, syscall.EIO, "/nonexistent")
	var w whoami
	mustCall(t, d, pid, "probe.whoami", `{}`, &w)
	if w.Hostname != "nsplug-sandbox" {
		t.Errorf("oneshot whoami: %+v", w)
	}
	if procs := processesInPIDNamespaceOf(t, pid); len(procs) != 1 {
		t.Errorf("left in the target: %v", procs)
	}
	if kids := processesOf(d); len(kids) != 0 {
		t.Errorf("plugin processes after oneshot requests: %v", kids)
	}
}

// A oneshot start is bounded by start_timeout, as a handshake is; and
// core.Options.Oneshot (nsplug call's) serves every plugin that way,
// whatever its mode.
func TestOneshotStartTimeoutAndOption(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	pid := target.PID()
	slow, _ := newDispatcher(t, "[defaults]\nmode = \"oneshot\"\nstart_timeout = \"200ms\"\n[[plugin]]\nname = \"probe\"\n[plugin.options]\nstart_delay_ms = 3000\n")
	wantErrno(t, call(t, slow, pid, "probe.whoami", `{}`, nil), syscall.ETIMEDOUT, "start_timeout of 200ms")
	if kids := processesOf(slow); len(kids) != 0 {
		t.Errorf("plugin processes after a start that timed out: %v", kids)
	}
	d, _ := newDispatcherWith(t, "[defaults]\nmode = \"pooled\"\n", core.Options{Oneshot: true})
	var w whoami
	mustCall(t, d, pid, "probe.whoami", `{}`, &w)
	if w.Hostname != "nsplug-sandbox" {
		t.Errorf("whoami: %+v", w)
	}
	if in := d.Instances(); len(in) != 0 {
		t.Errorf("instances after a request with Options.Oneshot: %+v", in)
	}
	if kids := processesOf(d); len(kids) != 0 {
		t.Errorf("plugin processes after the request: %v", kids)
	}
	for _, p := range d.Plugins() {
		if p.Mode != "oneshot" {
			t.Errorf("plugin %s: mode %q with Options.Oneshot", p.Name, p.Mode)
		}
	}
}

// Reads grow their buffer as needed and keep to max_read_bytes.
func TestProcfsReadSizes(t *testing.T) {
	parallel(t)
	big := strings.Repeat("0123456789abcdef", 6000) // 96000 bytes
	target := newTarget(t, sandbox.Options{Files: map[string]string{"/mnt/big": big}})
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"procfs\"\n[plugin.options]\nmax_read_bytes = 100000\n")
	var r struct{ Data []byte }
	mustCall(t, d, target.PID(), "procfs.read", `{"path":"/mnt/big"}`, &r)
	if string(r.Data) != big {
		t.Errorf("whole read: %d bytes", len(r.Data))
	}
	mustCall(t, d, target.PID(), "procfs.read", `{"path":"/mnt/big","offset":95990,"len":100}`, &r)
	if string(r.Data) != big[95990:] {
		t.Errorf("tail read: %q", r.Data)
	}
	d2, _ := newDispatcher(t, "[[plugin]]\nname = \"procfs\"\n[plugin.options]\nmax_read_bytes = 50000\n")
	d.Close()
	wantErrno(t, call(t, d2, target.PID(), "procfs.read", `{"path":"/mnt/big"}`, nil), syscall.EFBIG, "max_read_bytes")
	wantErrno(t, call(t, d2, target.PID(), "procfs.read", `{"path":"/mnt/big","len":60000}`, nil), syscall.EINVAL, "max_read_bytes")
}

// Prepare starts warm instances before the first request.
func TestPrepareStartsWarmInstances(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d, _ := newDispatcher(t, "")
	if err := d.Prepare(context.Background(), core.Target{PID: target.PID()}, "probe.whoami"); err != nil {
		t.Fatal(err)
	}
	h := servingPID(t, d, "probe")
	assertNamespaces(t, h, target.PID(), noUserNS)
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, nil)
	if got := servingPID(t, d, "probe"); got != h {
		t.Errorf("the first request started another instance (%d, prepared %d)", got, h)
	}
	if err := d.Prepare(context.Background(), core.Target{PID: target.PID()}); err != nil {
		t.Fatal(err)
	}
	served := 0
	for _, in := range d.Instances() {
		served += len(in.Plugins)
	}
	if served != len(d.Plugins()) {
		t.Errorf("after Prepare(pid), instances serve %d plugins of %d: %v", served, len(d.Plugins()), d.Instances())
	}
	wantErrno(t, d.Prepare(context.Background(), core.Target{PID: 1 << 30}), syscall.ESRCH)
	wantErrno(t, d.Prepare(context.Background(), core.Target{PID: target.PID()}, "nope.nope"), syscall.EOPNOTSUPP)
}

// A plugin with fresh mounts holds them as fds that readlink shows as "/":
// they are procfs/sysfs of the target's namespaces, detached from every
// mount table, not the host's root.
func TestFreshMountFDsAreNotTheHostRoot(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, MountProc: true})
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"procfs\"\nfresh_mounts = [\"proc\", \"sys\"]\n")
	mustCall(t, d, target.PID(), "procfs.read", `{"path":"/proc/version"}`, nil)
	h := servingPID(t, d, "procfs")
	hostMounts, _ := os.ReadFile("/proc/self/mountinfo")
	targetMounts, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", target.PID()))
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", h))
	found := map[int64]bool{}
	for _, fd := range fds {
		p := fmt.Sprintf("/proc/%d/fd/%s", h, fd.Name())
		link, _ := os.Readlink(p)
		if strings.HasPrefix(link, "pipe:") || strings.HasPrefix(link, "socket:") || strings.HasPrefix(link, "anon_inode:") {
			continue
		}
		var fs unix.Statfs_t
		if err := unix.Statfs(p, &fs); err != nil {
			t.Fatal(err)
		}
		if fs.Type != unix.PROC_SUPER_MAGIC && fs.Type != unix.SYSFS_MAGIC {
			t.Errorf("handler fd %s -> %s is a %#x file system", fd.Name(), link, fs.Type)
			continue
		}
		found[int64(fs.Type)] = true
		info, _ := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", h, fd.Name()))
		var mntID string
		for _, l := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(l, "mnt_id:"); ok {
				mntID = strings.TrimSpace(v)
			}
		}
		for _, table := range []string{string(hostMounts), string(targetMounts)} {
			for _, l := range strings.Split(table, "\n") {
				if strings.HasPrefix(l, mntID+" ") {
					t.Errorf("fresh mount fd %s (mount %s) is attached: %s", fd.Name(), mntID, l)
				}
			}
		}
	}
	if !found[unix.PROC_SUPER_MAGIC] || !found[unix.SYSFS_MAGIC] {
		t.Errorf("fresh procfs/sysfs fds not found: %v", found)
	}
}
