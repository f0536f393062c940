package tests

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// A type that changes the mount namespace's state (a mount, an unmount, a
// chown, an xattr, a write) is refused where the handler shares that
// namespace with the core: the change would be the host's. These tests
// prove it from the host: its mount table, owners, xattrs and contents.

// hostFixture is a directory and a file of the host for a test to aim at,
// with an xattr set and a known owner and content.
type hostFixture struct {
	dir, file string
}

const hostContent = "host content\n"

func newHostFixture(t *testing.T) hostFixture {
	t.Helper()
	dir := t.TempDir()
	f := hostFixture{dir: dir, file: filepath.Join(dir, "file")}
	// Should a mount land on the host after all, it must not stay.
	t.Cleanup(func() {
		for unix.Unmount(dir, unix.MNT_DETACH) == nil {
		}
	})
	if err := os.WriteFile(f.file, []byte(hostContent), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(f.file, "user.nsplug", []byte("host"), 0); err != nil {
		t.Fatalf("setxattr on the host: %v", err)
	}
	return f
}

// assertUnchanged checks that nothing was mounted on the fixture's
// directory (in the host's initial mount namespace, /proc/1, and the test
// process's) and that the file keeps its owner, xattrs and content.
func (f hostFixture) assertUnchanged(t *testing.T) {
	t.Helper()
	if hostMounted(t, f.dir) {
		t.Errorf("%s is a mount point on the host", f.dir)
	}
	var st unix.Stat_t
	if err := unix.Stat(f.file, &st); err != nil || st.Uid != 0 || st.Gid != 0 {
		t.Errorf("host file owner %d:%d (%v), want 0:0", st.Uid, st.Gid, err)
	}
	buf := make([]byte, 64)
	if n, err := unix.Getxattr(f.file, "user.nsplug", buf); err != nil || string(buf[:n]) != "host" {
		t.Errorf("host xattr user.nsplug = %q (%v), want \"host\"", buf[:max(n, 0)], err)
	}
	if _, err := unix.Getxattr(f.file, "user.added", buf); !errors.Is(err, unix.ENODATA) {
		t.Errorf("host xattr user.added: %v, want ENODATA", err)
	}
	if b, err := os.ReadFile(f.file); err != nil || string(b) != hostContent {
		t.Errorf("host file content %q (%v)", b, err)
	}
}

// hostMounted reports whether a mount point dir is in the mount table of
// the host's init (/proc/1) or of the test process.
func hostMounted(t *testing.T, dir string) bool {
	t.Helper()
	for _, p := range []string{"/proc/1/mountinfo", "/proc/self/mountinfo"} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range mntParse(t, string(b)) {
			if l.mountpoint == dir {
				return true
			}
		}
	}
	return false
}

// changeRequests are one request of every built-in type that changes the
// mount namespace's state, aimed at the fixture, with the type's name.
func (f hostFixture) changeRequests() [][2]string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	return [][2]string{
		{"mount.mount", `{"mounts":[{"source":"x","target":` + q(f.dir) + `,"fstype":"tmpfs"}]}`},
		{"fs.chown", `{"entries":[{"path":` + q(f.file) + `,"uid":1234,"gid":1234}]}`},
		{"fs.setxattr", `{"path":` + q(f.file) + `,"name":"user.added","value":"eA=="}`},
		{"fs.setxattr", `{"path":` + q(f.file) + `,"name":"user.nsplug","value":"eA==","nofollow":true}`},
		{"fs.removexattr", `{"path":` + q(f.file) + `,"name":"user.nsplug"}`},
		{"fs.removexattr", `{"path":` + q(f.file) + `,"name":"user.nsplug","nofollow":true}`},
		{"procfs.write", `{"path":` + q(f.file) + `,"data":"eA=="}`},
		{"fs.open", `{"path":` + q(f.file) + `,"flags":["wronly","trunc"]}`},
	}
}

func wantHostChangeRefused(t *testing.T, err error, typ string) {
	t.Helper()
	wantErrno(t, err, syscall.EPERM, typ+" would change the host's mnt namespace", "shares with the core", `allow_host_changes = ["mnt"]`)
}

func callNS(d *core.Dispatcher, pid int, typ, payload string, ns []string) error {
	_, err := d.Dispatch(context.Background(), core.Request{PID: pid, Type: typ, Payload: json.RawMessage(payload), Namespaces: ns})
	return err
}

// A target without a mount namespace of its own (the repro of issue 8:
// `unshare -u -n`) shares the core's: every changing type is refused and
// the host is left as it was; reading still works.
func TestHostChangesRefusedWhenTheTargetSharesTheMountNamespace(t *testing.T) {
	f := newHostFixture(t)
	target := newTarget(t, sandbox.Options{Namespaces: []string{"uts", "net"}})
	d, _ := newDispatcher(t, "")
	for _, r := range f.changeRequests() {
		wantHostChangeRefused(t, call(t, d, target.PID(), r[0], r[1], nil), r[0])
	}
	f.assertUnchanged(t)

	// Reading is not a change.
	var got struct{ Data []byte }
	mustCall(t, d, target.PID(), "procfs.read", `{"path":"`+f.file+`"}`, &got)
	if string(got.Data) != hostContent {
		t.Errorf("procfs.read: %q", got.Data)
	}
	mustCall(t, d, target.PID(), "fs.open", `{"path":"`+f.file+`","flags":["rdonly"]}`, nil)

	// An unmount of a host mount is refused too: the mount stays.
	mp := filepath.Join(f.dir, "mp")
	if err := os.Mkdir(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("nsplug-test", mp, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(mp, unix.MNT_DETACH) })
	wantHostChangeRefused(t, call(t, d, target.PID(), "mount.umount", `{"unmounts":[{"target":"`+mp+`"}]}`, nil), "mount.umount")
	if !hostMounted(t, mp) {
		t.Errorf("%s was unmounted on the host", mp)
	}
}

// A request that narrows the namespaces (`nsplug call --ns net,uts`) to
// leave out mnt is refused against a target that has a mount namespace of
// its own; without narrowing, the target's own mount namespace is changed
// as before, and the host is not.
func TestHostChangesRefusedWhenTheRequestLeavesOutMnt(t *testing.T) {
	f := newHostFixture(t)
	target := newTarget(t, sandbox.Options{Files: mntFiles})
	d, _ := newDispatcher(t, "")
	for _, r := range f.changeRequests() {
		wantHostChangeRefused(t, callNS(d, target.PID(), r[0], r[1], []string{"net", "uts"}), r[0])
	}
	f.assertUnchanged(t)

	// The plugin's namespaces setting leaving mnt out is the same.
	d.Close()
	d, _ = newDispatcher(t, "[[plugin]]\nname = \"mount\"\nnamespaces = [\"net\", \"uts\"]\n")
	wantHostChangeRefused(t, call(t, d, target.PID(), "mount.mount", f.changeRequests()[0][1], nil), "mount.mount")
	f.assertUnchanged(t)
	d.Close()

	// Joined, the change is the target's.
	d, _ = newDispatcher(t, "")
	mntCall(t, d, target.PID(), `{"mounts":[{"source":"t","target":"/mnt/a","fstype":"tmpfs"}]}`)
	if top := mntTop(mntTarget(t, target.PID()), "/mnt/a"); top == nil || top.fstype != "tmpfs" || top.source != "t" {
		t.Errorf("the target's /mnt/a: %+v", top)
	}
	if hostMounted(t, "/mnt/a") {
		t.Error("/mnt/a is mounted on the host")
	}
	mustCall(t, d, target.PID(), "procfs.write", `{"path":"/mnt/file","data":"eA=="}`, nil)
	mustCall(t, d, target.PID(), "mount.umount", `{"unmounts":[{"target":"/mnt/a"}]}`, nil)
}

// allow_host_changes = ["mnt"] in a plugin's entry lets that plugin, and
// only that one, change the host's mount namespace.
func TestHostChangesAllowedByConfiguration(t *testing.T) {
	f := newHostFixture(t)
	target := newTarget(t, sandbox.Options{Namespaces: []string{"uts", "net"}})
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"mount\"\nallow_host_changes = [\"mnt\"]\n")
	mntCall(t, d, target.PID(), f.changeRequests()[0][1])
	if !hostMounted(t, f.dir) {
		t.Fatalf("allowed mount of %s did not land on the host", f.dir)
	}
	mustCall(t, d, target.PID(), "mount.umount", `{"unmounts":[{"target":"`+f.dir+`"}]}`, nil)
	// Another plugin is still refused.
	wantHostChangeRefused(t, call(t, d, target.PID(), "fs.chown", f.changeRequests()[1][1], nil), "fs.chown")
	f.assertUnchanged(t)
}

// sysctl.set follows the same rule for the namespace of the sysctl it is
// asked to write, and allow_host_changes lifts it there too.
func TestSysctlSetFollowsTheHostChangeRule(t *testing.T) {
	target := newTarget(t, sandbox.Options{Namespaces: []string{"uts", "ipc", "mnt", "pid"}, MountProc: true})
	d, _ := newDispatcher(t, "")
	host := sysctlHost(t, "net/core/somaxconn")
	err := call(t, d, target.PID(), "sysctl.set", `{"name":"net.core.somaxconn","value":"`+host+`"}`, nil)
	wantErrno(t, err, syscall.EPERM, "sysctl net.core.somaxconn", "sysctl.set would change the host's net namespace",
		`allow_host_changes = ["net"]`, "allow_host_sysctls")
	d.Close()

	// Allowed: written with the value it has, so that the host is left as
	// it was.
	d, _ = newDispatcher(t, "[[plugin]]\nname = \"sysctl\"\nallow_host_changes = [\"net\"]\n")
	if r := sysctlSet(t, d, target.PID(), "net.core.somaxconn", host); r.Value == nil || *r.Value != host {
		t.Errorf("allowed set answered %+v", r)
	}
}

// The exact repro of issue 8, through the command: a process without a
// mount namespace of its own, and mount.mount of a tmpfs on a host
// directory.
func TestCLIMountOnAProcessWithoutMountNamespace(t *testing.T) {
	if err := os.MkdirAll("/var/tmp", 0o1777); err != nil {
		t.Fatal(err)
	}
	probe, err := os.MkdirTemp("/var/tmp", "probe")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(probe, unix.MNT_DETACH); os.Remove(probe) })
	sleeper := exec.Command("unshare", "-u", "-n", "sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	// unshare has made its namespaces once it has exec'd sleep.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if exe, _ := os.Readlink("/proc/" + strconv.Itoa(sleeper.Process.Pid) + "/exe"); strings.HasSuffix(exe, "/sleep") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("unshare did not exec sleep")
		}
	}
	_, stderr, code := runCLI(t, "call", "--config", cliConfig(t, ""), "--pid", strconv.Itoa(sleeper.Process.Pid), "mount.mount",
		`{"mounts":[{"source":"x","target":"`+probe+`","fstype":"tmpfs"}]}`)
	if code != 1 || !strings.Contains(stderr, "(EPERM)") || !strings.Contains(stderr, "allow_host_changes") {
		t.Errorf("exit %d: %s", code, stderr)
	}
	if hostMounted(t, probe) {
		t.Errorf("%s is mounted on the host", probe)
	}
}

// `nsplug plugins` shows which namespaces each type changes.
func TestCLIPluginsShowWhatTypesChange(t *testing.T) {
	conf := cliConfig(t, "")
	stdout, stderr, code := runCLI(t, "plugins", "--config", conf)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	lines := map[string]string{}
	for _, l := range strings.Split(stdout, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			lines[f[0]] = l
		}
	}
	for typ, want := range map[string]string{"mount.mount": "changes mnt", "fs.chown": "changes mnt",
		"procfs.write": "changes mnt; may change ipc,net,pid,user,uts",
		"sysctl.set":   "may change ipc,net,pid,user,uts", "fs.open": "may change mnt"} {
		if !strings.Contains(lines[typ], "  "+want+"  ") {
			t.Errorf("%s: %q, want %q", typ, lines[typ], want)
		}
	}
	if strings.Contains(lines["procfs.read"], "change") || lines["procfs.read"] == "" {
		t.Errorf("procfs.read: %q", lines["procfs.read"])
	}

	stdout, _, code = runCLI(t, "plugins", "--json", "--config", conf)
	var out struct {
		Plugins []struct {
			Types []core.TypeInfo
		}
	}
	if err := json.Unmarshal([]byte(stdout), &out); err != nil || code != 0 {
		t.Fatalf("plugins --json: %v %s", err, stdout)
	}
	types := map[string]core.TypeInfo{}
	for _, p := range out.Plugins {
		for _, ty := range p.Types {
			types[ty.Name] = ty
		}
	}
	for name, want := range map[string][2][]string{
		"mount.mount":    {{"mnt"}, nil},
		"mount.umount":   {{"mnt"}, nil},
		"fs.setxattr":    {{"mnt"}, nil},
		"fs.removexattr": {{"mnt"}, nil},
		"sysctl.set":     {nil, {"ipc", "net", "pid", "user", "uts"}},
		"procfs.write":   {{"mnt"}, {"ipc", "net", "pid", "user", "uts"}},
		"mount.info":     {nil, nil},
		"procfs.read":    {nil, nil},
	} {
		ty, ok := types[name]
		if !ok || !slices.Equal(ty.Changes, want[0]) || !slices.Equal(ty.MayChange, want[1]) {
			t.Errorf("%s: changes %q, may_change %q; want %q, %q", name, ty.Changes, ty.MayChange, want[0], want[1])
		}
	}
	if !strings.Contains(stdout, `"changes": [`) || strings.Count(stdout, `"changes"`) != 6 {
		t.Errorf("--json: want \"changes\" on the 6 types that change mnt only:\n%s", stdout)
	}
}
