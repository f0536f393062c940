package tests

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// mntLine is one line of a mountinfo file, as the test reads it from the
// host.
type mntLine struct {
	id         int
	mountpoint string
	options    string
	optional   string
	fstype     string
	source     string
	super      string
}

func mntParse(t *testing.T, text string) []mntLine {
	t.Helper()
	var out []mntLine
	for _, l := range strings.Split(strings.TrimSpace(text), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 6 || len(g) < 3 {
			t.Fatalf("mountinfo line %q", l)
		}
		id, _ := strconv.Atoi(f[0])
		out = append(out, mntLine{id: id, mountpoint: f[4], options: f[5], optional: strings.Join(f[6:], " "),
			fstype: g[0], source: g[1], super: g[2]})
	}
	return out
}

// mntTarget is the target's mount table, read from the host.
func mntTarget(t *testing.T, pid int) []mntLine {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	return mntParse(t, string(b))
}

// mntTop is the topmost mount at mountpoint, or nil.
func mntTop(lines []mntLine, mountpoint string) *mntLine {
	var top *mntLine
	for i := range lines {
		if lines[i].mountpoint == mountpoint {
			top = &lines[i]
		}
	}
	return top
}

func mntHost(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func hasOpt(opts, o string) bool {
	for _, x := range strings.Split(opts, ",") {
		if x == o {
			return true
		}
	}
	return false
}

// mntDirectErrno runs a libc call (python ctypes) as root inside every
// namespace of a rootful target and returns its errno: what the same
// syscall gives when made by hand in the target.
func mntDirectErrno(t *testing.T, pid int, call string) syscall.Errno {
	t.Helper()
	script := "import ctypes\nlibc=ctypes.CDLL(None,use_errno=True)\nr=libc." + call + "\nprint('errno=%d' % (0 if r==0 else ctypes.get_errno()))"
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-a", "python3", "-c", script).CombinedOutput()
	var n int
	if _, scanErr := fmt.Sscanf(strings.TrimSpace(string(out)), "errno=%d", &n); scanErr != nil {
		t.Fatalf("direct %s in the target: %v: %s", call, err, out)
	}
	return syscall.Errno(n)
}

type mntResult struct {
	Mounts []struct {
		Target  string `json:"target"`
		MountID int    `json:"mount_id"`
	} `json:"mounts"`
}

type mntInfo struct {
	Mounts []struct {
		ID           int      `json:"id"`
		Parent       int      `json:"parent"`
		Major        uint32   `json:"major"`
		Minor        uint32   `json:"minor"`
		Root         string   `json:"root"`
		Mountpoint   string   `json:"mountpoint"`
		Options      string   `json:"options"`
		Optional     []string `json:"optional"`
		FSType       string   `json:"fstype"`
		Source       string   `json:"source"`
		SuperOptions string   `json:"super_options"`
	} `json:"mounts"`
	Raw string `json:"raw"`
}

type mntInodes struct {
	Inodes []struct {
		Path      string `json:"path"`
		Inode     uint64 `json:"inode"`
		Major     uint32 `json:"major"`
		Minor     uint32 `json:"minor"`
		MountID   int    `json:"mount_id"`
		MountRoot bool   `json:"mount_root"`
	} `json:"inodes"`
}

// mntFiles are the directories a test target gets under /mnt (a tmpfs
// private to the target, so nothing is created on the host).
var mntFiles = map[string]string{
	"/mnt/a/.keep": "", "/mnt/b/.keep": "", "/mnt/p/.keep": "", "/mnt/s/.keep": "",
	"/mnt/src/hello": "hello from src\n", "/mnt/file": "a file\n", "/mnt/file2": "another file\n",
}

func mntCall(t *testing.T, d *core.Dispatcher, pid int, payload string) mntResult {
	t.Helper()
	var r mntResult
	mustCall(t, d, pid, "mount.mount", payload, &r)
	return r
}

// Every message type against a container-like target: new tmpfs, proc and
// sysfs mounts, bind mounts of a directory and a file, remounts, a
// propagation change, the mount table, inodes and unmounts. The target
// sees each change; the host sees none.
func TestMountEveryMessageType(t *testing.T) {
	parallel(t)
	hostBefore := mntHost(t)
	target := newTarget(t, sandbox.Options{MountProc: true, Files: mntFiles})
	d, _ := newDispatcher(t, "")
	pid := target.PID()
	root := target.Root()

	r := mntCall(t, d, pid, `{"mounts":[
		{"source":"tmpfs","target":"/mnt/a","fstype":"tmpfs","flags":["nosuid","nodev"],"data":"size=1m"},
		{"source":"/mnt/src","target":"/mnt/b","flags":["bind","ro"]},
		{"source":"proc","target":"/mnt/p","fstype":"proc","flags":["nosuid","nodev","noexec"]},
		{"source":"sysfs","target":"/mnt/s","fstype":"sysfs","flags":["ro"]},
		{"source":"/mnt/file","target":"/mnt/file2","flags":["bind"]}]}`)
	if len(r.Mounts) != 5 {
		t.Fatalf("mount.mount answered %+v", r)
	}
	lines := mntTarget(t, pid)
	a := mntTop(lines, "/mnt/a")
	if a == nil || a.id != r.Mounts[0].MountID || a.fstype != "tmpfs" || !hasOpt(a.options, "nosuid") || !hasOpt(a.options, "nodev") || !hasOpt(a.super, "size=1024k") {
		t.Errorf("/mnt/a in the target: %+v (response %+v)", a, r.Mounts[0])
	}
	b := mntTop(lines, "/mnt/b")
	if b == nil || b.id != r.Mounts[1].MountID || !hasOpt(b.options, "ro") {
		t.Errorf("/mnt/b in the target: %+v", b)
	}
	if got, _ := os.ReadFile(root + "/mnt/b/hello"); string(got) != "hello from src\n" {
		t.Errorf("bind mount shows %q", got)
	}
	if got, _ := os.ReadFile(root + "/mnt/file2"); string(got) != "a file\n" {
		t.Errorf("file bind mount shows %q", got)
	}
	if p := mntTop(lines, "/mnt/p"); p == nil || p.fstype != "proc" {
		t.Errorf("/mnt/p: %+v", p)
	}
	// The proc and sysfs mounts are the target's: its pid 1, its lo only.
	if _, err := os.Stat(root + "/mnt/p/1/mountinfo"); err != nil {
		t.Errorf("the new procfs: %v", err)
	}
	if ents, _ := os.ReadDir(root + "/mnt/s/class/net"); len(ents) != 1 || ents[0].Name() != "lo" {
		t.Errorf("the new sysfs lists interfaces %v, want the target's lo", ents)
	}
	// Root in the target sees the same, through its own eyes.
	inside := sysctlNsenter(t, pid, "-a", "cat", "/proc/self/mountinfo")
	for _, mp := range []string{"/mnt/a", "/mnt/b", "/mnt/p", "/mnt/s", "/mnt/file2"} {
		if mntTop(mntParse(t, inside), mp) == nil {
			t.Errorf("nsenter -a cat /proc/self/mountinfo lacks %s", mp)
		}
	}
	// Writing through the read-only bind fails in the target.
	if out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-a", "sh", "-c", "echo x > /mnt/b/new").CombinedOutput(); err == nil || !strings.Contains(string(out), "Read-only") {
		t.Errorf("write to the ro bind: %v %s", err, out)
	}

	// Remounts: the bind goes rw, the tmpfs grows, /mnt/a becomes shared.
	mntCall(t, d, pid, `{"mounts":[
		{"target":"/mnt/b","flags":["remount","bind","nosuid"]},
		{"target":"/mnt/a","flags":["remount","nosuid","nodev"],"data":"size=2m"},
		{"target":"/mnt/a","flags":["shared"]}]}`)
	lines = mntTarget(t, pid)
	if b := mntTop(lines, "/mnt/b"); b == nil || !hasOpt(b.options, "rw") || !hasOpt(b.options, "nosuid") {
		t.Errorf("/mnt/b after remount,bind,nosuid: %+v", b)
	}
	if a := mntTop(lines, "/mnt/a"); a == nil || !hasOpt(a.super, "size=2048k") || !strings.Contains(a.optional, "shared:") {
		t.Errorf("/mnt/a after remount and shared: %+v", a)
	}

	// mount.info is the table the target has, mount for mount.
	var info mntInfo
	mustCall(t, d, pid, "mount.info", `{"raw":true}`, &info)
	if len(info.Mounts) != len(lines) {
		t.Fatalf("mount.info has %d mounts, the target %d", len(info.Mounts), len(lines))
	}
	for i, m := range info.Mounts {
		l := lines[i]
		if m.ID != l.id || m.Mountpoint != l.mountpoint || m.Options != l.options || m.FSType != l.fstype ||
			m.Source != l.source || m.SuperOptions != l.super || strings.Join(m.Optional, " ") != l.optional {
			t.Errorf("mount.info[%d] = %+v, target has %+v", i, m, l)
		}
	}
	// Byte for byte what root in the target reads (cgroup roots, say, are
	// relative to the reader's cgroup namespace, so not the host's view).
	if inside := sysctlNsenter(t, pid, "-a", "cat", "/proc/self/mountinfo"); strings.TrimSpace(info.Raw) != inside {
		t.Errorf("raw mountinfo differs from the target's:\n%s\n---\n%s", info.Raw, inside)
	}
	info = mntInfo{}
	mustCall(t, d, pid, "mount.info", `{}`, &info)
	if info.Raw != "" {
		t.Errorf("raw without asking")
	}

	// mount.inode: the roots of the mounts, as the host sees them through
	// the target's root.
	var ino mntInodes
	mustCall(t, d, pid, "mount.inode", `{"paths":["/mnt/a","/mnt/b","/mnt/src","/mnt/file2"]}`, &ino)
	if len(ino.Inodes) != 4 {
		t.Fatalf("mount.inode: %+v", ino)
	}
	for i, want := range []bool{true, true, false, true} {
		in := ino.Inodes[i]
		var st unix.Stat_t
		if err := unix.Stat(root+in.Path, &st); err != nil {
			t.Fatal(err)
		}
		if in.Inode != st.Ino || in.MountRoot != want || unix.Mkdev(in.Major, in.Minor) != st.Dev {
			t.Errorf("mount.inode %s = %+v; host stat ino %d dev %d, mount root %v", in.Path, in, st.Ino, st.Dev, want)
		}
	}
	if ino.Inodes[0].MountID != r.Mounts[0].MountID {
		t.Errorf("mount.inode /mnt/a mount id %d, mounted as %d", ino.Inodes[0].MountID, r.Mounts[0].MountID)
	}

	// Unmount everything again, detaching one.
	var u struct{ Unmounted []string }
	mustCall(t, d, pid, "mount.umount", `{"unmounts":[{"target":"/mnt/b"},{"target":"/mnt/a","flags":["detach"]},
		{"target":"/mnt/p"},{"target":"/mnt/s","flags":["nofollow"]},{"target":"/mnt/file2"}]}`, &u)
	if len(u.Unmounted) != 5 {
		t.Errorf("umount answered %+v", u)
	}
	lines = mntTarget(t, pid)
	for _, mp := range []string{"/mnt/a", "/mnt/b", "/mnt/p", "/mnt/s", "/mnt/file2"} {
		if l := mntTop(lines, mp); l != nil {
			t.Errorf("%s still mounted: %+v", mp, l)
		}
	}
	if got, _ := os.ReadFile(root + "/mnt/file2"); string(got) != "another file\n" {
		t.Errorf("/mnt/file2 after umount: %q", got)
	}
	if now := mntHost(t); now != hostBefore {
		t.Errorf("the host's mount table changed:\nbefore:\n%s\nafter:\n%s", hostBefore, now)
	}
}

// A batch is all or nothing: when an entry fails, those before it are
// undone, in reverse, whatever they were.
func TestMountBatchRollback(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true, Files: mntFiles})
	d, _ := newDispatcher(t, "")
	pid := target.PID()
	before := mntTarget(t, pid)

	// The first entry mounts; the second fails: the first is unmounted.
	err := call(t, d, pid, "mount.mount", `{"mounts":[
		{"source":"tmpfs","target":"/mnt/a","fstype":"tmpfs"},
		{"source":"/mnt/nonexistent","target":"/mnt/b","flags":["bind"]}]}`, nil)
	wantErrno(t, err, syscall.ENOENT, "entry 1 of 2", "bind mount", `"/mnt/nonexistent"`, `"/mnt/b"`, "[bind]", "entry 0 was undone")
	if a := mntTop(mntTarget(t, pid), "/mnt/a"); a != nil {
		t.Errorf("/mnt/a still mounted after rollback: %+v", a)
	}

	// Set up a tmpfs to remount, then a batch that changes everything
	// about it and the files tmpfs, and fails at the end.
	mntCall(t, d, pid, `{"mounts":[{"source":"tmpfs","target":"/mnt/a","fstype":"tmpfs","flags":["nodev"],"data":"size=1m"}]}`)
	mid := mntTarget(t, pid)
	err = call(t, d, pid, "mount.mount", `{"mounts":[
		{"target":"/mnt","flags":["remount","bind","ro","noexec","noatime"]},
		{"target":"/mnt/a","flags":["remount","ro"],"data":"size=3m"},
		{"target":"/mnt/a","flags":["shared"]},
		{"source":"/mnt/a","target":"/mnt/b","flags":["move"]},
		{"source":"/mnt/src","target":"/mnt/p","flags":["rbind"]},
		{"source":"tmpfs","target":"/mnt/missing","fstype":"tmpfs","flags":["nosuid"]}]}`, nil)
	wantErrno(t, err, syscall.ENOENT, "entry 5 of 6", "tmpfs", `"/mnt/missing"`, "[nosuid]", "entries 0 to 4 were undone")
	after := mntTarget(t, pid)
	if len(after) != len(mid) {
		t.Errorf("%d mounts after rollback, %d before the batch", len(after), len(mid))
	}
	for _, mp := range []string{"/mnt", "/mnt/a"} {
		was, now := mntTop(mid, mp), mntTop(after, mp)
		if was == nil || now == nil || *was != *now {
			t.Errorf("%s not restored:\nbefore %+v\nafter  %+v", mp, was, now)
		}
	}
	if b := mntTop(after, "/mnt/b"); b != nil {
		t.Errorf("/mnt/b after rollback: %+v", b)
	}

	// Bad entries fail before anything is applied.
	err = call(t, d, pid, "mount.mount", `{"mounts":[
		{"source":"tmpfs","target":"/mnt/b","fstype":"tmpfs"},
		{"source":"tmpfs","target":"/mnt/p","fstype":"tmpfs","flags":["nosuid","bogus"]}]}`, nil)
	wantErrno(t, err, syscall.EINVAL, "entry 1 of 2", `unknown flag "bogus"`)
	if b := mntTop(mntTarget(t, pid), "/mnt/b"); b != nil {
		t.Errorf("/mnt/b mounted by a rejected batch")
	}
	_ = before
}

// The errno of a failing mount is the one the same syscall gets when made
// by hand as root in the target.
func TestMountErrnoMatchesTheSyscall(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true, Files: mntFiles})
	d, _ := newDispatcher(t, "")
	pid := target.PID()
	mntCall(t, d, pid, `{"mounts":[{"source":"tmpfs","target":"/mnt/a","fstype":"tmpfs"}]}`)

	for _, c := range []struct {
		typ, payload, direct string
	}{
		{"mount.mount", `{"mounts":[{"source":"tmpfs","target":"/mnt/nope","fstype":"tmpfs"}]}`,
			`mount(b"tmpfs", b"/mnt/nope", b"tmpfs", 0, b"")`},
		{"mount.mount", `{"mounts":[{"source":"none","target":"/mnt/b","fstype":"nosuchfs"}]}`,
			`mount(b"none", b"/mnt/b", b"nosuchfs", 0, b"")`},
		{"mount.mount", `{"mounts":[{"source":"tmpfs","target":"/mnt/b","fstype":"tmpfs","data":"size=bogus"}]}`,
			`mount(b"tmpfs", b"/mnt/b", b"tmpfs", 0, b"size=bogus")`},
		{"mount.mount", `{"mounts":[{"source":"tmpfs","target":"/mnt/file","fstype":"tmpfs"}]}`,
			`mount(b"tmpfs", b"/mnt/file", b"tmpfs", 0, b"")`},
		{"mount.mount", `{"mounts":[{"source":"/mnt/nope","target":"/mnt/b","flags":["bind"]}]}`,
			`mount(b"/mnt/nope", b"/mnt/b", None, 4096, None)`},
		{"mount.mount", `{"mounts":[{"target":"/mnt/src","flags":["remount"]}]}`,
			`mount(None, b"/mnt/src", None, 32, None)`},
		{"mount.mount", `{"mounts":[{"target":"/mnt/src","flags":["remount","bind","ro"]}]}`,
			`mount(None, b"/mnt/src", None, 32|4096|1, None)`},
		{"mount.mount", `{"mounts":[{"target":"/mnt/src","flags":["private"]}]}`,
			`mount(None, b"/mnt/src", None, 1<<18, None)`},
		{"mount.mount", `{"mounts":[{"source":"/mnt/src","target":"/mnt/b","flags":["move"]}]}`,
			`mount(b"/mnt/src", b"/mnt/b", None, 8192, None)`},
		{"mount.umount", `{"unmounts":[{"target":"/mnt/src"}]}`, `umount2(b"/mnt/src", 0)`},
		{"mount.umount", `{"unmounts":[{"target":"/mnt/nope"}]}`, `umount2(b"/mnt/nope", 0)`},
		{"mount.umount", `{"unmounts":[{"target":"/mnt/a","flags":["expire","detach"]}]}`, `umount2(b"/mnt/a", 4|2)`},
	} {
		want := mntDirectErrno(t, pid, c.direct)
		if want == 0 {
			t.Fatalf("%s succeeded when made directly", c.direct)
		}
		err := call(t, d, pid, c.typ, c.payload, nil)
		wantErrno(t, err, want, "entry 0 of 1")
	}
	// The first unmount of an expire pair is EAGAIN, the second works.
	err := call(t, d, pid, "mount.umount", `{"unmounts":[{"target":"/mnt/a","flags":["expire"]}]}`, nil)
	wantErrno(t, err, syscall.EAGAIN, "/mnt/a")
	mustCall(t, d, pid, "mount.umount", `{"unmounts":[{"target":"/mnt/a","flags":["expire"]}]}`, nil)
}

// Malformed requests are EINVAL naming the problem; paths go through the
// allowed roots and may not contain links.
func TestMountBadRequests(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true, Files: mntFiles})
	d, _ := newDispatcher(t, `
[[plugin]]
name = "mount"
allowed_roots = ["/mnt"]
`)
	pid := target.PID()
	sysctlNsenter(t, pid, "-m", "ln", "-s", "/mnt/a", "/mnt/link")

	for _, c := range []struct {
		typ, payload string
		errno        syscall.Errno
		why          []string
	}{
		{"mount.mount", `{"mounts":[]}`, syscall.EINVAL, []string{"no mounts"}},
		{"mount.mount", `{"mounts":[{"source":"tmpfs","target":"/mnt/a","fstype":"tmpfs","flags":["nosuid","sticky"]}]}`, syscall.EINVAL, []string{"entry 0", `unknown flag "sticky"`}},
		{"mount.mount", `{"mounts":[{"source":"tmpfs","target":"/mnt/a","fstype":"tmpfs","flags":[1073741824]}]}`, syscall.EINVAL, []string{"unknown bits"}},
		{"mount.mount", `{"mounts":[{"source":"tmpfs","target":"/mnt/a","fstype":"tmpfs","flags":[-1]}]}`, syscall.EINVAL, []string{"malformed payload"}},
		{"mount.mount", `{"mounts":[{"source":"tmpfs","target":"/mnt/a","fstype":"tmpfs","flags":["ro","rw"]}]}`, syscall.EINVAL, []string{"contradict"}},
		{"mount.mount", `{"mounts":[{"source":"tmpfs","target":"mnt/a","fstype":"tmpfs"}]}`, syscall.EINVAL, []string{"not absolute"}},
		{"mount.mount", `{"mounts":[{"source":"tmpfs","target":"/mnt/a/../b","fstype":"tmpfs"}]}`, syscall.EINVAL, []string{"not clean"}},
		{"mount.mount", `{"mounts":[{"source":"tmpfs","target":"/etc","fstype":"tmpfs"}]}`, syscall.EACCES, []string{"allowed roots"}},
		{"mount.mount", `{"mounts":[{"source":"/etc","target":"/mnt/a","flags":["bind"]}]}`, syscall.EACCES, []string{"source", "allowed roots"}},
		{"mount.mount", `{"mounts":[{"source":"tmpfs","target":"/mnt/link","fstype":"tmpfs"}]}`, syscall.ELOOP, []string{"symbolic links"}},
		{"mount.mount", `{"mounts":[{"source":"tmpfs","target":"/mnt/link/x","fstype":"tmpfs"}]}`, syscall.ELOOP, []string{"symbolic links"}},
		{"mount.mount", `{"mounts":[{"source":"tmpfs","target":"/mnt","fstype":"tmpfs","flags":["rec"]}]}`, syscall.EINVAL, []string{"rec goes with"}},
		{"mount.mount", `{"mounts":[{"source":"tmpfs","target":"/mnt/a","fstype":"tmpfs","data":"` + strings.Repeat("x", 5000) + `"}]}`, syscall.EINVAL, []string{"at most 4095"}},
		{"mount.mount", `{"mounts":[{"source":"tmpfs","target":"/mnt/a","fstype":"tmpfs","options":"x"}]}`, syscall.EINVAL, []string{"unknown field"}},
		{"mount.umount", `{"unmounts":[{"target":"/mnt/a","flags":["lazy"]}]}`, syscall.EINVAL, []string{`unknown flag "lazy"`}},
		{"mount.umount", `{"unmounts":[{"target":"/mnt/link"}]}`, syscall.EINVAL, []string{"/mnt/link"}},
		{"mount.umount", `{"unmounts":[]}`, syscall.EINVAL, []string{"no unmounts"}},
		{"mount.inode", `{"paths":["/mnt/link"]}`, syscall.ELOOP, []string{"symbolic links"}},
		{"mount.inode", `{"paths":["/proc"]}`, syscall.EACCES, []string{"allowed roots"}},
		{"mount.info", `{"raw":1}`, syscall.EINVAL, []string{"malformed payload"}},
	} {
		wantErrno(t, call(t, d, pid, c.typ, c.payload, nil), c.errno, c.why...)
	}
	if a := mntTop(mntTarget(t, pid), "/mnt/a"); a != nil {
		t.Errorf("a rejected request mounted /mnt/a: %+v", a)
	}
}

// A rootless target: its root mounts tmpfs and binds in the mount
// namespace its user namespace owns, and cannot unlock what the host
// locked.
func TestMountRootless(t *testing.T) {
	parallel(t)
	hostBefore := mntHost(t)
	target := newTarget(t, sandbox.Options{Rootless: true, MountProc: true, Files: mntFiles})
	d, _ := newDispatcher(t, "")
	pid := target.PID()

	r := mntCall(t, d, pid, `{"mounts":[
		{"source":"tmpfs","target":"/mnt/a","fstype":"tmpfs","flags":["nosuid"],"data":"size=64k"},
		{"source":"/mnt/src","target":"/mnt/b","flags":["bind","ro"]}]}`)
	lines := mntTarget(t, pid)
	if a := mntTop(lines, "/mnt/a"); a == nil || a.id != r.Mounts[0].MountID || !hasOpt(a.super, "size=64k") {
		t.Errorf("/mnt/a: %+v", a)
	}
	if b := mntTop(lines, "/mnt/b"); b == nil || !hasOpt(b.options, "ro") {
		t.Errorf("/mnt/b: %+v", b)
	}
	if got, _ := os.ReadFile(target.Root() + "/mnt/b/hello"); string(got) != "hello from src\n" {
		t.Errorf("bind shows %q", got)
	}
	// The host's / came into the target's namespace locked: its access
	// time mode cannot change.
	rootBefore := mntTop(lines, "/")
	err := call(t, d, pid, "mount.mount", `{"mounts":[{"target":"/","flags":["remount","bind","noatime"]}]}`, nil)
	wantErrno(t, err, syscall.EPERM, "bind remount", `"/"`)
	if now := mntTop(mntTarget(t, pid), "/"); now == nil || *now != *rootBefore {
		t.Errorf("/ changed: %+v -> %+v", rootBefore, now)
	}
	mustCall(t, d, pid, "mount.umount", `{"unmounts":[{"target":"/mnt/a"},{"target":"/mnt/b"}]}`, nil)
	if now := mntHost(t); now != hostBefore {
		t.Errorf("the host's mount table changed")
	}
}

// A FROM-scratch target without /proc: the table comes from the plugin's
// fresh procfs.
func TestMountScratch(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, Scratch: true,
		Files: map[string]string{"/data/x": "x\n", "/mnt/a/.keep": ""}})
	d, _ := newDispatcher(t, "")
	pid := target.PID()

	r := mntCall(t, d, pid, `{"mounts":[
		{"source":"tmpfs","target":"/mnt/a","fstype":"tmpfs"},
		{"source":"/data","target":"/mnt/a","flags":["bind"]}]}`)
	var info mntInfo
	mustCall(t, d, pid, "mount.info", `{}`, &info)
	lines := mntTarget(t, pid)
	if len(info.Mounts) != len(lines) || len(lines) != 3 {
		t.Fatalf("mount.info %+v, target %+v", info.Mounts, lines)
	}
	if m := info.Mounts[2]; m.ID != r.Mounts[1].MountID || m.Mountpoint != "/mnt/a" || m.Root != "/data" {
		t.Errorf("the bind stacked on /mnt/a: %+v", m)
	}
	if got, _ := os.ReadFile(target.Root() + "/mnt/a/x"); string(got) != "x\n" {
		t.Errorf("/mnt/a/x = %q", got)
	}
	var ino mntInodes
	mustCall(t, d, pid, "mount.inode", `{"paths":["/mnt/a","/data"]}`, &ino)
	if ino.Inodes[0].Inode != ino.Inodes[1].Inode || !ino.Inodes[0].MountRoot || !ino.Inodes[1].MountRoot && ino.Inodes[1].MountID == ino.Inodes[0].MountID {
		t.Errorf("inodes %+v", ino.Inodes)
	}
	mustCall(t, d, pid, "mount.umount", `{"unmounts":[{"target":"/mnt/a"},{"target":"/mnt/a"}]}`, nil)
	if n := len(mntTarget(t, pid)); n != 1 {
		t.Errorf("%d mounts left, want the root only", n)
	}
	wantErrno(t, call(t, d, pid, "mount.umount", `{"unmounts":[{"target":"/mnt/a"}]}`, nil), syscall.EINVAL, "entry 0 of 1")
	// In a user namespace a new procfs needs a fully visible one in the
	// mount namespace; the plugin's fresh one is not in it.
	err := call(t, d, pid, "mount.mount", `{"mounts":[{"source":"proc","target":"/mnt/a","fstype":"proc"}]}`, nil)
	wantErrno(t, err, syscall.EPERM, "entry 0 of 1", "proc")
}

// With unshare = ["mnt"] the handler mounts in a copy of the target's
// mount table, and nothing it mounts propagates out, even where the
// target's mounts are shared: the copy's mounts are slaves.
func TestUnsharedMountsDoNotPropagate(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Files: map[string]string{"/mnt/placeholder": ""}})
	pid := target.PID()
	inTarget(t, pid, "mkdir -p /mnt/shared && mount -t tmpfs shared /mnt/shared && mount --make-shared /mnt/shared && mkdir /mnt/shared/x")
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"mount\"\nunshare = [\"mnt\"]\n")
	mustCall(t, d, pid, "mount.mount", `{"mounts":[{"source":"leak","target":"/mnt/shared/x","fstype":"tmpfs"}]}`, nil)
	if m := mntTop(mntTarget(t, pid), "/mnt/shared/x"); m != nil {
		t.Errorf("a mount made after unshare(mnt) propagated to the target: %+v", *m)
	}
	if strings.Contains(mntHost(t), "/mnt/shared/x") {
		t.Errorf("a mount made after unshare(mnt) reached the host")
	}
	// The copy still sees what the target mounts later.
	inTarget(t, pid, "mkdir -p /mnt/shared/later && mount -t tmpfs later /mnt/shared/later")
	var info struct {
		Mounts []struct {
			Mountpoint string `json:"mountpoint"`
		}
	}
	mustCall(t, d, pid, "mount.info", `{}`, &info)
	found := false
	for _, m := range info.Mounts {
		found = found || m.Mountpoint == "/mnt/shared/later"
	}
	if !found {
		t.Errorf("the handler's copy does not see the target's later mount: %+v", info.Mounts)
	}
}
