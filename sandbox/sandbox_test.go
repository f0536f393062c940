package sandbox

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary act as a separate "starter" process (see
// TestMain), so tests can kill the process that started a target.
const helperEnv = "_NSPLUG_SANDBOX_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode, ok := os.LookupEnv(helperEnv); ok {
		helperMain(mode)
		return
	}
	os.Exit(m.Run())
}

// helperMain starts one target, prints its pid and sleeps until killed.
func helperMain(mode string) {
	opts := Options{}
	for _, m := range strings.Split(mode, ",") {
		switch m {
		case "rootless":
			opts.Rootless = true
			opts.Namespaces = []string{"mnt", "pid", "uts"}
		case "nopdeath":
			pdeathsig = 0 // leave only the lifeline pipe
		case "nolifeline":
			ignoreLifeline = true // leave only PR_SET_PDEATHSIG
		}
	}
	s, err := Start(opts)
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	fmt.Println(s.PID())
	time.Sleep(time.Hour) // not select{}: that would be a deadlock panic
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_SYS_ADMIN) to create namespaces")
	}
}

func start(t *testing.T, opts Options) *Sandbox {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		t.Fatalf("Start(%+v): %v", opts, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func selfNS(t *testing.T, ns string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/"+ns, &st); err != nil {
		t.Fatalf("stat own %s namespace: %v", ns, err)
	}
	return st.Ino
}

func kernelHas(ns string) bool {
	_, err := os.Lstat("/proc/self/ns/" + ns)
	return err == nil
}

// checkNamespaces asserts that exactly the namespaces in want differ from the
// test process's own.
func checkNamespaces(t *testing.T, s *Sandbox, want []string) {
	t.Helper()
	wantSet := map[string]bool{}
	for _, n := range want {
		wantSet[n] = true
	}
	for _, ns := range KnownNamespaces() {
		if !kernelHas(ns) {
			t.Logf("kernel has no %s namespace (/proc/self/ns/%s missing); not checked", ns, ns)
			continue
		}
		got, err := s.NSInode(ns)
		if err != nil {
			t.Fatalf("NSInode(%q): %v", ns, err)
		}
		own := selfNS(t, ns)
		if wantSet[ns] && got == own {
			t.Errorf("%s namespace: target has the host's (inode %d), want a new one", ns, got)
		}
		if !wantSet[ns] && got != own {
			t.Errorf("%s namespace: target has inode %d, want the host's %d", ns, got, own)
		}
	}
}

func TestDefaultOptionsMakeRootfulContainer(t *testing.T) {
	requireRoot(t)
	s := start(t, Options{})
	var want []string
	for _, ns := range KnownNamespaces() {
		if ns != "user" && kernelHas(ns) {
			want = append(want, ns)
		}
	}
	if got := s.Namespaces(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("Namespaces() = %v, want %v", got, want)
	}
	checkNamespaces(t, s, want)
	if !kernelHas("time") {
		t.Log("CONFIG_TIME_NS absent: time namespace not exercised")
	}
	// Rootful: the target runs as host root.
	if uid := statusIDs(t, s.PID(), "Uid:"); uid != "0 0 0 0" {
		t.Errorf("Uid line = %q, want host root", uid)
	}
}

func TestSelectedNamespacesOnly(t *testing.T) {
	requireRoot(t)
	for _, want := range [][]string{{"net", "uts"}, {"ipc"}, {"pid", "mnt"}, {"cgroup"}, {}} {
		t.Run(strings.Join(want, "+")+"_", func(t *testing.T) {
			s := start(t, Options{Namespaces: want})
			checkNamespaces(t, s, want)
		})
	}
}

func TestTimeNamespace(t *testing.T) {
	requireRoot(t)
	if !kernelHas("time") {
		t.Skip("kernel lacks time namespaces (CONFIG_TIME_NS, Linux >= 5.6)")
	}
	for _, viaUnshare := range []bool{false, true} {
		name := map[bool]string{false: "clone3", true: "unshare_then_exec"}[viaUnshare]
		t.Run(name, func(t *testing.T) {
			timeNSViaUnshare = viaUnshare
			defer func() { timeNSViaUnshare = false }()
			s := start(t, Options{Namespaces: []string{"time"}})
			checkNamespaces(t, s, []string{"time"})
			// The task itself, not just its future children, is in it.
			ino, _ := s.NSInode("time")
			var st unix.Stat_t
			if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/time_for_children", s.PID()), &st); err != nil {
				t.Fatal(err)
			}
			if st.Ino != ino {
				t.Errorf("time %d != time_for_children %d", ino, st.Ino)
			}
		})
	}
}

func statusIDs(t *testing.T, pid int, key string) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, key) {
			return strings.Join(strings.Fields(strings.TrimPrefix(line, key)), " ")
		}
	}
	t.Fatalf("no %s in /proc/%d/status", key, pid)
	return ""
}

func readMap(t *testing.T, pid int, name string) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(strings.Fields(string(data)), " ")
}

func TestRootless(t *testing.T) {
	requireRoot(t)
	cases := []struct {
		name     string
		opts     Options
		uid, gid int
	}{
		{"defaults", Options{Rootless: true}, 100000, 100000},
		{"custom_ids", Options{Rootless: true, HostUID: 200000, HostGID: 300000, Namespaces: []string{"mnt"}}, 200000, 300000},
		{"user_listed", Options{Namespaces: []string{"user", "uts"}}, 100000, 100000},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := start(t, c.opts)
			want := map[string]bool{"user": true}
			for _, n := range s.Namespaces() {
				want[n] = true
			}
			if c.opts.Namespaces == nil {
				for _, ns := range KnownNamespaces() {
					if kernelHas(ns) && !want[ns] {
						t.Errorf("nil Namespaces + Rootless: %s missing from %v", ns, s.Namespaces())
					}
				}
			}
			var names []string
			for n := range want {
				names = append(names, n)
			}
			checkNamespaces(t, s, names)
			if got, want := readMap(t, s.PID(), "uid_map"), fmt.Sprintf("0 %d 65536", c.uid); got != want {
				t.Errorf("uid_map = %q, want %q", got, want)
			}
			if got, want := readMap(t, s.PID(), "gid_map"), fmt.Sprintf("0 %d 65536", c.gid); got != want {
				t.Errorf("gid_map = %q, want %q", got, want)
			}
			u := strconv.Itoa(c.uid)
			if got, want := statusIDs(t, s.PID(), "Uid:"), strings.Repeat(u+" ", 3)+u; got != want {
				t.Errorf("host Uid line = %q, want %q", got, want)
			}
			g := strconv.Itoa(c.gid)
			if got, want := statusIDs(t, s.PID(), "Gid:"), strings.Repeat(g+" ", 3)+g; got != want {
				t.Errorf("host Gid line = %q, want %q", got, want)
			}
			if got := statusIDs(t, s.PID(), "Groups:"); got != "" {
				t.Errorf("supplementary groups = %q, want none", got)
			}
		})
	}
}

// hostnameOf reads the hostname in the target's uts namespace: with
// nsenter(1) if present, and in-process with setns on a throwaway thread.
func hostnameOf(t *testing.T, pid int) string {
	t.Helper()
	ch := make(chan string, 1)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with us
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/uts", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWUTS); err != nil {
			errc <- err
			return
		}
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			errc <- err
			return
		}
		ch <- unix.ByteSliceToString(u.Nodename[:])
	}()
	var inproc string
	select {
	case inproc = <-ch:
	case err := <-errc:
		t.Fatalf("setns into uts of %d: %v", pid, err)
	}
	if nsenter, err := exec.LookPath("nsenter"); err == nil {
		out, err := exec.Command(nsenter, "-t", strconv.Itoa(pid), "-u", "hostname").Output()
		if err != nil {
			t.Fatalf("nsenter -t %d -u hostname: %v", pid, err)
		}
		if got := strings.TrimSpace(string(out)); got != inproc {
			t.Errorf("nsenter says hostname %q, setns says %q", got, inproc)
		}
	}
	return inproc
}

func TestHostname(t *testing.T) {
	requireRoot(t)
	hostBefore, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		opts Options
		want string
	}{
		{Options{}, DefaultHostname},
		{Options{Hostname: "plugin-under-test"}, "plugin-under-test"},
		{Options{Rootless: true, Hostname: "rootless-one"}, "rootless-one"},
	} {
		s := start(t, c.opts)
		if got := hostnameOf(t, s.PID()); got != c.want {
			t.Errorf("target hostname = %q, want %q", got, c.want)
		}
	}
	if hostAfter, _ := os.Hostname(); hostAfter != hostBefore {
		t.Errorf("host hostname changed from %q to %q", hostBefore, hostAfter)
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func checkFile(t *testing.T, name, content string) {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Errorf("read %s: %v", name, err)
		return
	}
	if string(data) != content {
		t.Errorf("%s = %q, want %q", name, data, content)
	}
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o644 {
		t.Errorf("%s mode = %v, want -rw-r--r--", name, fi.Mode())
	}
	dfi, err := os.Stat(filepath.Dir(name))
	if err != nil {
		t.Fatal(err)
	}
	if dfi.Mode() != os.ModeDir|0o755 {
		t.Errorf("%s mode = %v, want drwxr-xr-x", filepath.Dir(name), dfi.Mode())
	}
}

func TestScratch(t *testing.T) {
	requireRoot(t)
	files := map[string]string{
		"/etc/greeting":     "hello\n",
		"bin/tool":          "#!nothing",
		"/deep/er/and/more": "",
	}
	cases := []struct {
		name string
		opts Options
		want []string
	}{
		{"files_only", Options{Scratch: true, Files: files}, []string{"bin", "deep", "etc"}},
		{"with_proc", Options{Scratch: true, Files: files, MountProc: true}, []string{"bin", "deep", "etc", "proc"}},
		{"empty", Options{Scratch: true}, nil},
		{"rootless_with_proc", Options{Scratch: true, Files: files, MountProc: true, Rootless: true}, []string{"bin", "deep", "etc", "proc"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := start(t, c.opts)
			root := s.Root()
			if got := listDir(t, root); strings.Join(got, ",") != strings.Join(c.want, ",") {
				t.Errorf("ls %s = %v, want %v", root, got, c.want)
			}
			var fs unix.Statfs_t
			if err := unix.Statfs(root, &fs); err != nil {
				t.Fatal(err)
			}
			if fs.Type != unix.TMPFS_MAGIC {
				t.Errorf("root file system type %#x, want tmpfs", fs.Type)
			}
			if c.opts.Files != nil {
				checkFile(t, root+"/etc/greeting", "hello\n")
				checkFile(t, root+"/bin/tool", "#!nothing")
				checkFile(t, root+"/deep/er/and/more", "")
			}
			// Only the tmpfs root and /proc are mounted: the old root is gone.
			mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", s.PID()))
			if err != nil {
				t.Fatal(err)
			}
			var mounts []string
			for _, line := range strings.Split(strings.TrimSpace(string(mi)), "\n") {
				mounts = append(mounts, strings.Fields(line)[4])
			}
			wantMounts := "/"
			if c.opts.MountProc {
				wantMounts = "/,/proc"
			}
			if strings.Join(mounts, ",") != wantMounts {
				t.Errorf("target mount points %v, want %s", mounts, wantMounts)
			}
			if c.opts.MountProc {
				checkOwnProc(t, s)
			}
		})
	}
}

// checkOwnProc asserts the target's /proc belongs to its own pid namespace:
// pid 1 there is the target itself.
func checkOwnProc(t *testing.T, s *Sandbox) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(s.Root()+"/proc/1/ns/pid", &st); err != nil {
		t.Fatalf("target's /proc/1: %v", err)
	}
	want, err := s.NSInode("pid")
	if err != nil {
		t.Fatal(err)
	}
	if st.Ino != want {
		t.Errorf("target /proc/1 is in pid ns %d, want the target's %d", st.Ino, want)
	}
	if got := listDir(t, s.Root()+"/proc"); !contains(got, "1") || contains(got, strconv.Itoa(os.Getpid())) && os.Getpid() != 1 {
		t.Errorf("target /proc lists %v: want pid 1 and not the host's pids", got)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func mountCount(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(data), "\n")
}

func TestFilesInNonScratchTarget(t *testing.T) {
	requireRoot(t)
	hostMounts := mountCount(t)
	files := map[string]string{"greeting": "hi", "/mnt/sub/x.conf": "k=v"}
	s := start(t, Options{Files: files, MountProc: true})
	root := s.Root()
	checkFile(t, root+"/mnt/greeting", "hi")
	checkFile(t, root+"/mnt/sub/x.conf", "k=v")
	// The host's /mnt is untouched and no mount leaked into our namespace.
	if _, err := os.Stat("/mnt/greeting"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("host /mnt/greeting: err = %v, want not-exist", err)
	}
	if got := mountCount(t); got != hostMounts {
		t.Errorf("host mount count changed from %d to %d", hostMounts, got)
	}
	// The rest of the host's tree is still visible in a non-scratch target.
	if _, err := os.Stat(root + "/proc/1/ns/pid"); err != nil {
		t.Errorf("target /proc: %v", err)
	}
	checkOwnProc(t, s)

	t.Run("custom_dir_rootless", func(t *testing.T) {
		// The host uid of a rootless target needs search permission on
		// the path to FilesDir.
		dir := t.TempDir()
		for _, d := range []string{dir, filepath.Dir(dir)} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		s := start(t, Options{Rootless: true, FilesDir: dir, Files: map[string]string{"a/b": "c"}})
		checkFile(t, s.Root()+dir+"/a/b", "c")
		if _, err := os.Stat(dir + "/a"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("host %s/a: err = %v, want not-exist", dir, err)
		}
		var st unix.Stat_t
		if err := unix.Stat(s.Root()+dir+"/a/b", &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != DefaultHostID || st.Gid != DefaultHostID {
			t.Errorf("file owned by %d:%d, want the target's root %d:%d", st.Uid, st.Gid, DefaultHostID, DefaultHostID)
		}
	})
}

// On systemd hosts "/" is a shared mount, and a new mount namespace copies
// that propagation: without making its mounts private first, a target's tmpfs
// would appear on the host. Build such a shared mount temporarily.
func TestMountsDoNotPropagateToHost(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("cannot bind-mount %s: %v", dir, err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		t.Fatalf("make %s shared: %v", dir, err)
	}
	if err := os.Mkdir(dir+"/files", 0o755); err != nil {
		t.Fatal(err)
	}
	before := mountCount(t)
	for _, opts := range []Options{
		{FilesDir: dir + "/files", Files: map[string]string{"x": "y"}},
		{Scratch: true, MountProc: true},
	} {
		s := start(t, opts)
		if got := mountCount(t); got != before {
			t.Errorf("%+v: host mount count went from %d to %d", opts, before, got)
		}
		if _, err := os.Stat(dir + "/files/x"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("target's file visible on the host: %v", err)
		}
		s.Close()
	}
}

func TestInvalidOptions(t *testing.T) {
	cases := []struct {
		name string
		opts Options
		want string
	}{
		{"unknown_ns", Options{Namespaces: []string{"mnt", "bogus"}}, "unknown namespace"},
		{"scratch_without_mnt", Options{Namespaces: []string{"pid"}, Scratch: true}, "Scratch needs"},
		{"files_without_mnt", Options{Namespaces: []string{"uts"}, Files: map[string]string{"a": "b"}}, "Files need"},
		{"proc_without_mnt", Options{Namespaces: []string{"pid"}, MountProc: true}, "MountProc needs"},
		{"rootless_proc_without_pid", Options{Rootless: true, Namespaces: []string{"mnt"}, MountProc: true}, `needs the "pid"`},
		{"hostname_without_uts", Options{Namespaces: []string{"mnt"}, Hostname: "x"}, "Hostname needs"},
		{"long_hostname", Options{Hostname: strings.Repeat("h", 65)}, "longer than 64"},
		{"dotdot", Options{Files: map[string]string{"../etc/passwd": "x"}}, `contains ".."`},
		{"outside_files_dir", Options{Files: map[string]string{"/etc/passwd": "x"}}, "below /mnt"},
		{"files_dir_itself", Options{Files: map[string]string{"/mnt": "x"}}, "below /mnt"},
		{"duplicate", Options{Files: map[string]string{"a": "x", "/mnt/a": "y"}}, "same file"},
		{"relative_files_dir", Options{FilesDir: "mnt", Files: map[string]string{"a": "x"}}, "clean absolute"},
		{"root_files_dir", Options{FilesDir: "/", Files: map[string]string{"a": "x"}}, "clean absolute"},
		{"negative_uid", Options{Rootless: true, HostUID: -5}, "out of range"},
		{"too_big", Options{Files: map[string]string{"big": strings.Repeat("x", 200<<10)}}, "the limit is"},
		{"file_under_proc", Options{Scratch: true, MountProc: true, Files: map[string]string{"/proc/x": "y"}}, "hidden by MountProc"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Start(c.opts)
			if err == nil {
				s.Close()
				t.Fatalf("Start succeeded, want error containing %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not contain %q", err, c.want)
			}
		})
	}
}

func TestSetupErrorNamesStep(t *testing.T) {
	requireRoot(t)
	before := childPIDs(t)
	_, err := Start(Options{FilesDir: "/nonexistent-nsplug-sandbox-dir", Files: map[string]string{"a": "b"}})
	var se *SetupError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v, want *SetupError", err)
	}
	if se.Step != "mount tmpfs at /nonexistent-nsplug-sandbox-dir" || !errors.Is(err, unix.ENOENT) {
		t.Errorf("SetupError = %+v (%v), want step naming the mount and ENOENT", se, err)
	}
	if after := childPIDs(t); len(after) > len(before) {
		t.Errorf("failed Start left children %v (before %v)", after, before)
	}
	// Files that collide with each other fail inside the target too.
	_, err = Start(Options{Scratch: true, Files: map[string]string{"a": "file", "a/b": "under a file"}})
	if !errors.As(err, &se) || !strings.Contains(se.Step, "/a/b") || !errors.Is(err, unix.ENOTDIR) {
		t.Errorf("err = %v, want a SetupError about /a/b with ENOTDIR", err)
	}
}

// A process that merely inherits EnvVar, without the pipes Start sets up,
// must not act as a target (nor write to whatever its fds 3 and 4 are).
func TestStrayEnvVarIsRefused(t *testing.T) {
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), EnvVar+"={}")
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 2 || !strings.Contains(string(out), "not started by sandbox.Start") {
		t.Errorf("stray %s: err %v, output %q; want exit 2 with an explanation", EnvVar, err, out)
	}
}

// procState returns the state letter of pid, or "" if it does not exist.
func procState(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+3 > len(s) {
		return "?"
	}
	return s[i+2 : i+3]
}

func TestCloseReapsAndIsIdempotent(t *testing.T) {
	requireRoot(t)
	s, err := Start(Options{})
	if err != nil {
		t.Fatal(err)
	}
	pid := s.PID()
	if st := procState(pid); st == "" || st == "Z" {
		t.Fatalf("target %d state %q before Close, want alive", pid, st)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Reaped, not a zombie: the pid is gone right away.
	if st := procState(pid); st != "" {
		t.Errorf("after Close /proc/%d still exists (state %q)", pid, st)
	}
	for i := 0; i < 3; i++ {
		if err := s.Close(); err != nil {
			t.Errorf("Close #%d: %v", i+2, err)
		}
	}
	if _, err := s.NSInode("net"); !errors.Is(err, ErrClosed) {
		t.Errorf("NSInode after Close: err = %v, want ErrClosed", err)
	}
}

func TestTargetHoldsNoHostFDs(t *testing.T) {
	requireRoot(t)
	// Leak a non-O_CLOEXEC descriptor of a host file into the fork, as a
	// careless host program might; the target must close it.
	leak, err := unix.Open("/etc/hostname", unix.O_RDONLY, 0)
	if err != nil {
		leak, err = unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
	}
	defer unix.Close(leak)
	for _, opts := range []Options{{}, {Scratch: true, MountProc: true}, {Rootless: true}} {
		s := start(t, opts)
		fdDir := fmt.Sprintf("/proc/%d/fd", s.PID())
		names := listDir(t, fdDir)
		sort.Slice(names, func(i, j int) bool { a, _ := strconv.Atoi(names[i]); b, _ := strconv.Atoi(names[j]); return a < b })
		if strings.Join(names, ",") != "0,1,2,3" {
			t.Errorf("%+v: target fds %v, want 0,1,2,3 (stdio + lifeline)", opts, names)
		}
		for _, n := range names {
			l, err := os.Readlink(fdDir + "/" + n)
			if err != nil {
				t.Fatal(err)
			}
			if l != "/dev/null" && !strings.HasPrefix(l, "pipe:") {
				t.Errorf("%+v: target fd %s -> %s, want /dev/null or a pipe", opts, n, l)
			}
		}
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", s.PID()))
		if err != nil || cwd != "/" {
			t.Errorf("target cwd = %q (%v), want /", cwd, err)
		}
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// childPIDs lists processes whose parent is the test process.
func childPIDs(t *testing.T) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	self := strconv.Itoa(os.Getpid())
	var kids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(data)
		i := strings.LastIndexByte(s, ')')
		if f := strings.Fields(s[i+1:]); len(f) > 1 && f[1] == self {
			kids = append(kids, pid)
		}
	}
	return kids
}

func TestManyTargetsLeaveNothingBehind(t *testing.T) {
	requireRoot(t)
	// Warm up once: the first Start may set up the runtime's netpoller and
	// the forker thread, which stay for the life of the process.
	if s, err := Start(Options{}); err != nil {
		t.Fatal(err)
	} else {
		s.Close()
	}
	fdsBefore := countFDs(t)
	kidsBefore := childPIDs(t)
	variants := []Options{
		{},
		{Rootless: true},
		{Scratch: true, MountProc: true, Files: map[string]string{"f": "x"}},
		{Namespaces: []string{"net"}},
		{Files: map[string]string{"f": "x"}},
	}
	var sbs []*Sandbox
	for i := 0; i < 20; i++ {
		s, err := Start(variants[i%len(variants)])
		if err != nil {
			t.Fatalf("Start #%d: %v", i, err)
		}
		sbs = append(sbs, s)
	}
	if kids := childPIDs(t); len(kids) != len(kidsBefore)+20 {
		t.Errorf("with 20 targets running, %d children, want %d", len(kids), len(kidsBefore)+20)
	}
	for _, s := range sbs {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
	if got := countFDs(t); got > fdsBefore {
		t.Errorf("open fds grew from %d to %d", fdsBefore, got)
	}
	if kids := childPIDs(t); len(kids) != len(kidsBefore) {
		t.Errorf("children left: %v (before: %v)", kids, kidsBefore)
	}
	for _, s := range sbs {
		if st := procState(s.PID()); st != "" {
			t.Errorf("target %d still present (state %s)", s.PID(), st)
		}
	}
}

func TestConcurrentStarts(t *testing.T) {
	requireRoot(t)
	const n = 8
	var wg sync.WaitGroup
	pids := make([]int, n)
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s, err := Start(Options{Rootless: i%2 == 0, Hostname: fmt.Sprintf("t%d", i)})
			if err != nil {
				errs[i] = err
				return
			}
			pids[i] = s.PID()
			if got := hostnameOf(t, s.PID()); got != fmt.Sprintf("t%d", i) {
				t.Errorf("target %d hostname %q", i, got)
			}
			s.Close()
		}(i)
	}
	wg.Wait()
	seen := map[int]bool{}
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Errorf("Start #%d: %v", i, errs[i])
			continue
		}
		if seen[pids[i]] {
			t.Errorf("pid %d handed out twice", pids[i])
		}
		seen[pids[i]] = true
	}
}

// Pdeathsig belongs to the forking thread. Starting from a goroutine whose
// locked thread then exits must not kill the target.
func TestSurvivesExitOfStartingThread(t *testing.T) {
	requireRoot(t)
	type result struct {
		s   *Sandbox
		tid int
		err error
	}
	var r result
	for attempt := 0; ; attempt++ {
		ch := make(chan result, 1)
		go func() {
			// Never unlocked: Go ends this thread when the goroutine
			// returns (unless it is the main thread, which it wedges).
			runtime.LockOSThread()
			tid := unix.Gettid()
			if tid == os.Getpid() {
				ch <- result{tid: tid}
				return
			}
			s, err := Start(Options{Namespaces: []string{"uts"}})
			ch <- result{s, tid, err}
		}()
		r = <-ch
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.s != nil {
			break
		}
		if attempt == 10 {
			t.Skip("could not get a goroutine off the main thread")
		}
	}
	defer r.s.Close()
	// Wait until the starting thread is really gone.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", r.tid)); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d did not exit", r.tid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let a death signal land, if any
	if st := procState(r.s.PID()); st == "" || st == "Z" {
		t.Fatalf("target died (state %q) after the starting goroutine's thread exited", st)
	}
}

// The target must die with the process that started it: by PR_SET_PDEATHSIG
// and, independently, by EOF on the lifeline pipe.
func TestDiesWithStarter(t *testing.T) {
	requireRoot(t)
	for _, mode := range []string{"plain", "rootless", "nopdeath", "rootless,nopdeath", "nolifeline", "rootless,nolifeline"} {
		t.Run(strings.ReplaceAll(mode, ",", "+"), func(t *testing.T) {
			helper := exec.Command("/proc/self/exe")
			helper.Env = append(os.Environ(), helperEnv+"="+mode)
			out, err := helper.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := helper.Start(); err != nil {
				t.Fatal(err)
			}
			defer helper.Wait()
			defer helper.Process.Kill()
			line, err := bufio.NewReader(out).ReadString('\n')
			if err != nil {
				t.Fatalf("helper output: %q, %v", line, err)
			}
			pid, err := strconv.Atoi(strings.TrimSpace(line))
			if err != nil {
				t.Fatalf("helper said %q", line)
			}
			if st := procState(pid); st == "" || st == "Z" {
				t.Fatalf("target %d not alive (state %q) while its starter runs", pid, st)
			}
			if err := helper.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			helper.Wait()
			deadline := time.Now().Add(10 * time.Second)
			for {
				st := procState(pid)
				if st == "" || st == "Z" || st == "X" {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("target %d still running (state %s) 10s after its starter died", pid, st)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// The target is this test binary, stuck in package init: it must show the
// re-exec marker and must not have run any test.
func TestTargetIsReexecOfThisBinary(t *testing.T) {
	requireRoot(t)
	s := start(t, Options{Namespaces: []string{"uts"}})
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", s.PID()))
	if err != nil {
		t.Fatal(err)
	}
	if string(cmdline) != "nsplug-sandbox\x00" {
		t.Errorf("cmdline %q, want nsplug-sandbox", cmdline)
	}
	var a, b unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/exe", s.PID()), &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat("/proc/self/exe", &b); err != nil {
		t.Fatal(err)
	}
	if a.Ino != b.Ino || a.Dev != b.Dev {
		t.Errorf("target runs a different binary")
	}
	// Still alive a little later: it is blocked, not running main.
	time.Sleep(100 * time.Millisecond)
	if st := procState(s.PID()); st != "S" {
		t.Errorf("target state %q, want S (blocked on the lifeline)", st)
	}
}
