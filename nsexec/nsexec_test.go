package nsexec_test

// These tests run the C constructor for real: the test binary starts itself
// with a bootstrap aimed at a throwaway target made by package sandbox. The
// started copy notices nsexec.Self().Active in TestMain, reports what it
// sees as JSON on stdout, and waits for EOF on stdin. The tests compare that
// report with what the host sees in /proc.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/nsexec"
	"github.com/nsplug/nsplug/sandbox"
)

const (
	// childExit is the bootstrapped child's exit status after stdin EOF;
	// a waiter must mirror it.
	childExit = 42
	// helperEnv makes the test binary a parent that starts one
	// bootstrapped child and then waits to be killed (parent-death test).
	helperEnv = "_NSPLUG_NSEXEC_TEST_HELPER"
	timeout   = 20 * time.Second
	// canaryName is a host file every child inherits (see launch).
	canaryName = "nsexec-canary"
	rootless   = sandbox.DefaultHostID
)

func init() {
	// PR_GET_PDEATHSIG reads the calling thread's setting and only the
	// main thread ran the constructor: locking here keeps main, and so
	// TestMain, on the main thread.
	if nsexec.Self().Active {
		runtime.LockOSThread()
	}
}

func TestMain(m *testing.M) {
	if nsexec.Self().Active {
		os.Exit(childMain())
	}
	if spec, ok := os.LookupEnv(helperEnv); ok {
		os.Exit(helperMain(spec))
	}
	os.Exit(m.Run())
}

// report is what a bootstrapped child sees from inside.
type report struct {
	PID, PPID      int
	UID, GID       int
	Hostname       string
	Dumpable       int
	Pdeathsig      int
	CwdDev, CwdIno uint64   // the cwd the constructor left
	ParkedRoot     []string // names in "/" before EnterRoot
	Root           []string // names in "/" after EnterRoot
	FreshProc      bool
	FreshSys       bool
	ProcSelf       string   // readlinkat(proc, "self")
	ProcHostname   string   // proc/sys/kernel/hostname beneath the proc fd
	SysNet         []string // class/net beneath the sys fd
	Errors         []string
}

func childMain() int {
	r := observe()
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		return 2
	}
	// As the sdk does once ready: the host reads EOF, not a failure.
	nsexec.CloseStatus()
	io.Copy(io.Discard, os.Stdin)
	return childExit
}

func observe() report {
	var r report
	note := func(what string, err error) { r.Errors = append(r.Errors, what+": "+err.Error()) }

	r.PID, r.PPID = os.Getpid(), os.Getppid()
	r.UID, r.GID = os.Getuid(), os.Getgid()
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		note("uname", err)
	}
	r.Hostname = unix.ByteSliceToString(uts.Nodename[:])
	var err error
	if r.Dumpable, err = unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); err != nil {
		note("PR_GET_DUMPABLE", err)
	}
	var sig int32
	if err := unix.Prctl(unix.PR_GET_PDEATHSIG, uintptr(unsafe.Pointer(&sig)), 0, 0, 0); err != nil {
		note("PR_GET_PDEATHSIG", err)
	}
	r.Pdeathsig = int(sig)
	// getcwd cannot name a directory outside the root; compare identities.
	var st unix.Stat_t
	if err := unix.Stat(".", &st); err != nil {
		note("stat cwd", err)
	}
	r.CwdDev, r.CwdIno = st.Dev, st.Ino
	names := func() (out []string) {
		entries, err := os.ReadDir("/")
		if err != nil {
			note("read /", err)
		}
		for _, e := range entries {
			out = append(out, e.Name())
		}
		return out
	}
	r.ParkedRoot = names()
	if err := nsexec.EnterRoot(); err != nil {
		note("EnterRoot", err)
	}
	r.Root = names()

	self := nsexec.Self()
	if self.Proc != nil {
		r.FreshProc = true
		fd := int(self.Proc.Fd())
		buf := make([]byte, 64)
		if n, err := unix.Readlinkat(fd, "self", buf); err != nil {
			note("readlinkat(proc, self)", err)
		} else {
			r.ProcSelf = string(buf[:n])
		}
		if f, err := openBeneath(fd, "sys/kernel/hostname", 0); err != nil {
			note("open proc hostname", err)
		} else {
			data, _ := io.ReadAll(f)
			f.Close()
			r.ProcHostname = strings.TrimSpace(string(data))
		}
	}
	if self.Sys != nil {
		r.FreshSys = true
		if f, err := openBeneath(int(self.Sys.Fd()), "class/net", unix.O_DIRECTORY); err != nil {
			note("open sys class/net", err)
		} else {
			r.SysNet, _ = f.Readdirnames(-1)
			f.Close()
			slices.Sort(r.SysNet)
		}
	}
	return r
}

func openBeneath(dirfd int, name string, flags int) (*os.File, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_CLOEXEC|flags, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// helperSpec tells helperMain which child to start.
type helperSpec struct {
	Target  int
	Boot    nsexec.Bootstrap
	SockDir string
}

// helperMain starts one bootstrapped child (its stdin and stdout are the
// helper's) and sleeps until killed. It sets no Pdeathsig of its own: what
// happens to the child when the helper dies is nsexec's doing alone.
func helperMain(encoded string) int {
	var h helperSpec
	if err := json.Unmarshal([]byte(encoded), &h); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	// The parent-death signal follows the thread that forked: keep it.
	runtime.LockOSThread()
	pidfd, err := unix.PidfdOpen(h.Target, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper: pidfd_open:", err)
		return 2
	}
	cmd, statusR, err := prepare(os.NewFile(uintptr(pidfd), "pidfd"), h.Boot, h.SockDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := startPrepared(cmd); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 2
	}
	if msg, _ := io.ReadAll(statusR); len(msg) > 0 {
		fmt.Fprintf(os.Stderr, "helper: child failed: %s", msg)
	}
	time.Sleep(time.Hour) // not select{}: that would be a deadlock panic
	return 0
}

// prepare makes an exec.Cmd that runs this test binary with bootstrap b
// aimed at the target behind pidfd.
func prepare(pidfd *os.File, b nsexec.Bootstrap, sockDir string) (*exec.Cmd, *os.File, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.OpenFile(sockDir, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(exe)
	cmd.Args[0] = "nsexec-test-child"
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, helperEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	statusR, _, err := b.Apply(cmd, pidfd, dir, nil)
	if err != nil {
		dir.Close()
		return nil, nil, err
	}
	return cmd, statusR, nil
}

// startPrepared starts cmd and closes the parent's copies of the fds
// handed over (pidfd, socket directory, status pipe write end).
func startPrepared(cmd *exec.Cmd) error {
	err := cmd.Start()
	for _, f := range cmd.ExtraFiles {
		f.Close()
	}
	return err
}

// child is a bootstrapped copy of the test binary, seen from the host.
type child struct {
	t       *testing.T
	boot    nsexec.Bootstrap
	sockDir string
	cmd     *exec.Cmd
	stdin   *os.File // write end: closing it lets the child exit
	stdout  *os.File
	status  *os.File
	stderr  bytes.Buffer
	exited  bool
}

// launch starts a child with bootstrap b against the target behind pidfd.
// owner >= 0 chowns the socket directory to that host uid/gid first, as
// the core does for a target's user namespace. env is added after the
// bootstrap's own variable (os/exec keeps the last of duplicates).
//
// The child also inherits, as fd 6 and without close-on-exec, a host file
// named canary: the constructor must close it (checkFDs).
func launch(t *testing.T, pidfd *os.File, b nsexec.Bootstrap, owner int, env ...string) *child {
	t.Helper()
	c := &child{t: t, boot: b, sockDir: t.TempDir()}
	canary, err := os.Create(filepath.Join(t.TempDir(), canaryName))
	if err != nil {
		t.Fatal(err)
	}
	defer canary.Close()
	if owner >= 0 {
		if err := os.Chown(c.sockDir, owner, owner); err != nil {
			t.Fatal(err)
		}
	}
	cmd, statusR, err := prepare(pidfd, b, c.sockDir)
	if err != nil {
		t.Fatalf("prepare: %v", err)
	}
	c.cmd, c.status = cmd, statusR
	cmd.Env = append(cmd.Env, env...)
	cmd.ExtraFiles = append(cmd.ExtraFiles, canary)
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c.stdin, c.stdout = stdinW, stdoutR
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdinR, stdoutW, &c.stderr
	err = startPrepared(cmd)
	stdinR.Close()
	stdoutW.Close()
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(c.cleanup)
	return c
}

func (c *child) cleanup() {
	c.stdin.Close()
	if !c.exited {
		// The waiter turns SIGTERM into SIGKILL of its child.
		c.cmd.Process.Signal(syscall.SIGTERM)
		c.wait()
	}
	c.stdout.Close()
	c.status.Close()
}

// outcome reads the status pipe to EOF, then the report: a failed bootstrap
// yields its message and no report.
func (c *child) outcome() (*report, string) {
	c.t.Helper()
	c.status.SetReadDeadline(time.Now().Add(timeout))
	msg, err := io.ReadAll(c.status)
	if err != nil {
		c.t.Fatalf("status pipe: %v (a waiter holding it open?)", err)
	}
	if len(msg) > 0 {
		return nil, strings.TrimSpace(string(msg))
	}
	c.stdout.SetReadDeadline(time.Now().Add(timeout))
	var r report
	if err := json.NewDecoder(c.stdout).Decode(&r); err != nil {
		c.t.Fatalf("no report from child: %v; %s", err, c.exitInfo())
	}
	return &r, ""
}

func (c *child) report() *report {
	c.t.Helper()
	r, msg := c.outcome()
	if msg != "" {
		c.t.Fatalf("bootstrap failed: %s", msg)
	}
	if len(r.Errors) > 0 {
		c.t.Errorf("child could not observe: %v", r.Errors)
	}
	return r
}

// exitInfo reaps the child and describes how it ended, for failures.
func (c *child) exitInfo() string {
	c.cmd.Process.Signal(syscall.SIGTERM)
	ws := c.wait()
	return fmt.Sprintf("child ended with %v, stderr %q", ws, c.stderr.String())
}

// wait reaps the started process, killing it if it takes too long.
func (c *child) wait() syscall.WaitStatus {
	c.t.Helper()
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		c.t.Errorf("pid %d did not exit within %v; killing it", c.cmd.Process.Pid, timeout)
		c.cmd.Process.Kill()
		<-done
	}
	c.exited = true
	return c.cmd.ProcessState.Sys().(syscall.WaitStatus)
}

// finish closes stdin, on which the child exits with childExit.
func (c *child) finish() syscall.WaitStatus {
	c.stdin.Close()
	return c.wait()
}

// serving is the host pid of the process that runs Go: the waiter's only
// child when the bootstrap forks, else the started process itself.
func (c *child) serving() int {
	c.t.Helper()
	pid := c.cmd.Process.Pid
	if !c.boot.Forks() {
		return pid
	}
	// The root keeper (a child of the waiter too) exits once the child
	// has entered the target's root; the waiter reaps it soon after.
	kids := childrenOf(pid)
	for deadline := time.Now().Add(timeout); len(kids) > 1 && time.Now().Before(deadline); kids = childrenOf(pid) {
		time.Sleep(5 * time.Millisecond)
	}
	if len(kids) != 1 {
		c.t.Fatalf("waiter %d has children %v, want exactly one", pid, kids)
	}
	return kids[0]
}

func childrenOf(pid int) []int {
	var kids []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		data, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(data)) {
			n, _ := strconv.Atoi(s)
			kids = append(kids, n)
		}
	}
	return kids
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create and join namespaces")
	}
}

func startSandbox(t *testing.T, opts sandbox.Options) *sandbox.Sandbox {
	t.Helper()
	s, err := sandbox.Start(opts)
	if err != nil {
		t.Fatalf("sandbox.Start: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openPidfd(t *testing.T, pid int) *os.File {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open(%d): %v", pid, err)
	}
	return os.NewFile(uintptr(fd), "pidfd")
}

func allOf(t *testing.T, s *sandbox.Sandbox) uintptr {
	t.Helper()
	flags, err := nsexec.ParseNamespaces(s.Namespaces())
	if err != nil {
		t.Fatal(err)
	}
	return flags
}

func nsInode(t *testing.T, pid, ns string) (uint64, bool) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+pid+"/ns/"+ns, &st); err != nil {
		if errors.Is(err, unix.ENOENT) && pid == "self" {
			return 0, false // the kernel lacks this kind
		}
		t.Fatalf("stat /proc/%s/ns/%s: %v", pid, ns, err)
	}
	return st.Ino, true
}

// checkNamespaces asserts that pid shares the target's namespaces it
// joined, has fresh ones where it unshared, and the host's elsewhere.
func checkNamespaces(t *testing.T, pid int, s *sandbox.Sandbox, join, unshare uintptr) {
	t.Helper()
	for _, ns := range nsexec.Namespaces {
		own, ok := nsInode(t, "self", ns.Name)
		if !ok {
			continue
		}
		got, _ := nsInode(t, strconv.Itoa(pid), ns.Name)
		target, err := s.NSInode(ns.Name)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case unshare&ns.Flag != 0:
			if got == target || got == own {
				t.Errorf("%s ns: %d, want one of its own (target %d, host %d)", ns.Name, got, target, own)
			}
		case join&ns.Flag != 0:
			if got != target {
				t.Errorf("%s ns: %d, want the target's %d", ns.Name, got, target)
			}
		default:
			if got != own {
				t.Errorf("%s ns: %d, want the host's %d", ns.Name, got, own)
			}
		}
	}
}

// statusField returns the fields of a /proc/PID/status line.
func statusField(t *testing.T, pid int, key string) []string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			return strings.Fields(rest)
		}
	}
	t.Fatalf("/proc/%d/status has no %s line", pid, key)
	return nil
}

// checkFDs asserts that pid kept neither the pidfd nor the socket directory,
// nor the canary file it inherited.
func checkFDs(t *testing.T, pid int, sockDir string) {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		link, _ := os.Readlink(filepath.Join(dir, e.Name()))
		if strings.Contains(link, "pidfd") || link == sockDir || filepath.Base(link) == canaryName {
			t.Errorf("pid %d kept fd %s -> %s", pid, e.Name(), link)
		}
	}
}

func gone(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return errors.Is(err, os.ErrNotExist)
}

func TestJoin(t *testing.T) {
	requireRoot(t)
	hostName, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	all := ^uintptr(0) // stands for every namespace the target has
	tests := []struct {
		name    string
		opts    sandbox.Options
		boot    nsexec.Bootstrap
		hostUID int // of the serving process; also the socket dir's owner
		forks   bool
		extra   func(t *testing.T, r *report)
	}{{
		name:  "rootful container",
		opts:  sandbox.Options{Hostname: "nsexec-rootful"},
		boot:  nsexec.Bootstrap{Join: all},
		forks: true,
	}, {
		name:    "rootless container",
		opts:    sandbox.Options{Rootless: true, Hostname: "nsexec-rootless"},
		boot:    nsexec.Bootstrap{Join: all},
		hostUID: rootless,
		forks:   true,
	}, {
		name: "scratch rootless with fresh proc and sys",
		opts: sandbox.Options{Rootless: true, Scratch: true, Hostname: "nsexec-scratch",
			Files: map[string]string{"/marker": "m", "/etc/motd": "hi"}},
		boot:    nsexec.Bootstrap{Join: all, FreshProc: true, FreshSys: true},
		hostUID: rootless,
		forks:   true,
		extra: func(t *testing.T, r *report) {
			if !slices.Equal(r.Root, []string{"etc", "marker"}) {
				t.Errorf("/ holds %v, want the scratch root's [etc marker]", r.Root)
			}
			if !slices.Equal(r.SysNet, []string{"lo"}) {
				t.Errorf("fresh sysfs lists interfaces %v, want the target's [lo]", r.SysNet)
			}
		},
	}, {
		name: "net uts ipc only: no fork",
		opts: sandbox.Options{Hostname: "nsexec-nofork"},
		boot: nsexec.Bootstrap{Join: unix.CLONE_NEWNET | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC},
	}, {
		// Fresh mounts fork even outside the target's pid namespace:
		// the child's parent is then the visible waiter.
		name:  "fresh proc without pid namespace",
		opts:  sandbox.Options{Hostname: "nsexec-freshonly"},
		boot:  nsexec.Bootstrap{Join: unix.CLONE_NEWNET | unix.CLONE_NEWUTS, FreshProc: true},
		forks: true,
	}, {
		name:  "rootful, unshare mnt",
		opts:  sandbox.Options{Hostname: "nsexec-unshare-mnt"},
		boot:  nsexec.Bootstrap{Join: all, Unshare: unix.CLONE_NEWNS},
		forks: true,
	}, {
		name:    "rootless, unshare net",
		opts:    sandbox.Options{Rootless: true, Hostname: "nsexec-unshare-net"},
		boot:    nsexec.Bootstrap{Join: all, Unshare: unix.CLONE_NEWNET},
		hostUID: rootless,
		forks:   true,
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := startSandbox(t, tc.opts)
			b := tc.boot
			if b.Join == all {
				b.Join = allOf(t, s)
			}
			if b.Join&unix.CLONE_NEWUSER == 0 {
				b.UID, b.GID = -1, -1 // as the core: keep host root
			}
			if b.Forks() != tc.forks {
				t.Fatalf("Forks() = %v, want %v", b.Forks(), tc.forks)
			}
			owner := -1
			if tc.hostUID != 0 {
				owner = tc.hostUID
			}
			c := launch(t, openPidfd(t, s.PID()), b, owner)
			r := c.report()
			pid := c.serving()
			started := c.cmd.Process.Pid

			checkNamespaces(t, pid, s, b.Join, b.Unshare)
			checkFDs(t, pid, c.sockDir)
			if tc.forks {
				// The waiter closed everything (the status pipe
				// included, else outcome would have timed out).
				if fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", started)); len(fds) != 0 {
					t.Errorf("waiter %d holds %d fds, want none", started, len(fds))
				}
			} else if pid != started {
				t.Errorf("serving pid %d, want the started %d", pid, started)
			}

			// Pid as the target's pid namespace numbers it, and
			// the parent as the child sees it.
			nspid := statusField(t, pid, "NSpid")
			if want := nspid[len(nspid)-1]; strconv.Itoa(r.PID) != want {
				t.Errorf("getpid() = %d, want %s (NSpid %v)", r.PID, want, nspid)
			}
			wantPPID := os.Getpid()
			switch {
			case b.Join&unix.CLONE_NEWPID != 0:
				wantPPID = 0 // the waiter is outside
				if r.PID == pid {
					t.Errorf("getpid() = host pid %d inside a pid namespace", pid)
				}
			case tc.forks:
				wantPPID = started
			}
			if r.PPID != wantPPID {
				t.Errorf("getppid() = %d, want %d", r.PPID, wantPPID)
			}

			wantHost := hostName
			if b.Join&unix.CLONE_NEWUTS != 0 {
				wantHost = tc.opts.Hostname
			}
			if r.Hostname != wantHost {
				t.Errorf("hostname %q, want %q", r.Hostname, wantHost)
			}

			// Credentials: root inside; the mapped id outside.
			if r.UID != 0 || r.GID != 0 {
				t.Errorf("uid/gid inside %d/%d, want 0/0", r.UID, r.GID)
			}
			want := strconv.Itoa(tc.hostUID)
			for _, key := range []string{"Uid", "Gid"} {
				if ids := statusField(t, pid, key); !slices.Equal(ids, []string{want, want, want, want}) {
					t.Errorf("host view %s: %v, want all %s", key, ids, want)
				}
			}

			// Non-dumpable and the parent-death signal, set again
			// after the uid change that clears both.
			if r.Dumpable != 0 {
				t.Errorf("PR_GET_DUMPABLE = %d, want 0", r.Dumpable)
			}
			if r.Pdeathsig != int(syscall.SIGKILL) {
				t.Errorf("PR_GET_PDEATHSIG = %d, want SIGKILL", r.Pdeathsig)
			}
			if tc.hostUID != 0 {
				// /proc/PID files of a non-dumpable task belong
				// to root, not to the task's uid.
				var st unix.Stat_t
				if err := unix.Stat(fmt.Sprintf("/proc/%d/status", pid), &st); err != nil {
					t.Fatal(err)
				}
				if st.Uid != 0 {
					t.Errorf("/proc/%d/status owned by %d: the process is dumpable", pid, st.Uid)
				}
			}

			// The constructor left the cwd in the socket directory, and
			// with the target's mount namespace also the root, which
			// is empty: nothing of the target is read while Go starts.
			var st unix.Stat_t
			if err := unix.Stat(c.sockDir, &st); err != nil {
				t.Fatal(err)
			}
			if r.CwdDev != st.Dev || r.CwdIno != st.Ino {
				t.Errorf("child's cwd is %d:%d, want the socket directory %d:%d", r.CwdDev, r.CwdIno, st.Dev, st.Ino)
			}
			if b.Join&unix.CLONE_NEWNS != 0 && len(r.ParkedRoot) != 0 {
				t.Errorf("before EnterRoot / holds %v, want the empty socket directory", r.ParkedRoot)
			}
			// After EnterRoot, the cwd is the root (the target's).
			var cwd, root unix.Stat_t
			if err := unix.Stat(fmt.Sprintf("/proc/%d/cwd", pid), &cwd); err != nil {
				t.Fatal(err)
			}
			if err := unix.Stat(fmt.Sprintf("/proc/%d/root", pid), &root); err != nil {
				t.Fatal(err)
			}
			if cwd.Dev != root.Dev || cwd.Ino != root.Ino {
				t.Errorf("after EnterRoot the cwd (%d:%d) is not the root (%d:%d)", cwd.Dev, cwd.Ino, root.Dev, root.Ino)
			}

			// Fresh mounts exist iff asked for, and show the
			// namespaces the child is in.
			if r.FreshProc != b.FreshProc || r.FreshSys != b.FreshSys {
				t.Errorf("fresh proc/sys %v/%v, want %v/%v", r.FreshProc, r.FreshSys, b.FreshProc, b.FreshSys)
			}
			if b.FreshProc {
				if r.ProcSelf != strconv.Itoa(r.PID) {
					t.Errorf("fresh proc's self is %q, want the child's pid %d", r.ProcSelf, r.PID)
				}
				if r.ProcHostname != wantHost {
					t.Errorf("hostname through fresh proc %q, want %q", r.ProcHostname, wantHost)
				}
			}
			if tc.extra != nil {
				tc.extra(t, r)
			}

			// The waiter (if any) mirrors the child's exit, and
			// leaves nothing behind.
			ws := c.finish()
			if !ws.Exited() || ws.ExitStatus() != childExit {
				t.Errorf("started process ended with %v, want exit status %d", ws, childExit)
			}
			if !gone(pid) {
				t.Errorf("serving pid %d still exists after exit", pid)
			}
		})
	}
}

func TestFailureOnStatusPipe(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		name  string
		setup func(t *testing.T) (pidfd *os.File, b nsexec.Bootstrap, owner int)
		env   string // replaces the bootstrap's environment value
		want  []string
	}{{
		name: "target exited before start",
		setup: func(t *testing.T) (*os.File, nsexec.Bootstrap, int) {
			s := startSandbox(t, sandbox.Options{})
			pidfd := openPidfd(t, s.PID())
			join := allOf(t, s)
			s.Close()
			return pidfd, nsexec.Bootstrap{Join: join, UID: -1, GID: -1}, -1
		},
		want: []string{"setns", "No such process"},
	}, {
		name: "uid not mapped in the target",
		setup: func(t *testing.T) (*os.File, nsexec.Bootstrap, int) {
			s := startSandbox(t, sandbox.Options{Rootless: true})
			b := nsexec.Bootstrap{Join: allOf(t, s), UID: sandbox.RootlessIDCount + 1, GID: 0}
			return openPidfd(t, s.PID()), b, rootless
		},
		want: []string{"setresuid", "Invalid argument"},
	}, {
		name: "malformed",
		env:  "garbage",
		want: []string{"malformed bootstrap"},
	}, {
		name: "bad value",
		env:  "join=zz",
		want: []string{"malformed bootstrap value"},
	}, {
		name: "unknown key",
		env:  "join=0,colour=1",
		want: []string{"unknown bootstrap key"},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var pidfd *os.File
			b, owner := nsexec.Bootstrap{}, -1
			if tc.setup != nil {
				pidfd, b, owner = tc.setup(t)
			} else {
				pidfd = openPidfd(t, os.Getpid()) // never used
			}
			var env []string
			if tc.env != "" {
				env = append(env, nsexec.EnvName+"="+tc.env)
			}
			c := launch(t, pidfd, b, owner, env...)
			r, msg := c.outcome()
			if r != nil {
				t.Fatalf("bootstrap succeeded (report %+v), want a failure", r)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("status message %q lacks %q", msg, w)
				}
			}
			if ws := c.wait(); !ws.Exited() || ws.ExitStatus() != 1 {
				t.Errorf("ended with %v, want exit status 1", ws)
			}
		})
	}
}

func TestValidateRejectsUnshareOfUserPidTime(t *testing.T) {
	for _, ns := range nsexec.Namespaces {
		b := nsexec.Bootstrap{Unshare: ns.Flag}
		bad := ns.Flag&(unix.CLONE_NEWUSER|unix.CLONE_NEWPID|unix.CLONE_NEWTIME) != 0
		if err := b.Validate(); (err != nil) != bad {
			t.Errorf("Validate(unshare %s) = %v, want error %v", ns.Name, err, bad)
		}
		if !bad {
			continue
		}
		// Apply refuses too, and leaves the command untouched.
		cmd := exec.Command("/bin/true")
		if _, _, err := b.Apply(cmd, os.Stdin, os.Stdin, nil); err == nil {
			t.Errorf("Apply(unshare %s) succeeded", ns.Name)
		}
		if len(cmd.Env) != 0 || len(cmd.ExtraFiles) != 0 {
			t.Errorf("Apply(unshare %s) changed the command: env %v, %d extra files", ns.Name, cmd.Env, len(cmd.ExtraFiles))
		}
	}
}

// The waiter forwards signals to its child, SIGTERM as SIGKILL, reaps it
// and exits as the child did.
func TestWaiterForwardsSignals(t *testing.T) {
	requireRoot(t)
	tests := []struct {
		sig  syscall.Signal
		want int // the waiter's exit status: 128 + the child's death signal
	}{
		{syscall.SIGTERM, 128 + int(syscall.SIGKILL)},
		{syscall.SIGINT, 128 + int(syscall.SIGINT)}, // the Go child dies of it
	}
	for _, tc := range tests {
		t.Run(tc.sig.String(), func(t *testing.T) {
			s := startSandbox(t, sandbox.Options{})
			b := nsexec.Bootstrap{Join: allOf(t, s), UID: -1, GID: -1}
			c := launch(t, openPidfd(t, s.PID()), b, -1)
			c.report()
			pid := c.serving()
			if err := c.cmd.Process.Signal(tc.sig); err != nil {
				t.Fatal(err)
			}
			if ws := c.wait(); !ws.Exited() || ws.ExitStatus() != tc.want {
				t.Errorf("waiter ended with %v, want exit status %d", ws, tc.want)
			}
			// Reaped by the waiter: an orphan would be left as a
			// zombie to the host's init.
			if !gone(pid) {
				t.Errorf("child %d still exists (state %v)", pid, statusField(t, pid, "State"))
			}
		})
	}
}

// TestParentDeath kills the process that started the bootstrapped child: a
// helper copy of this binary, so that the test process survives. The test
// process becomes a child subreaper to collect the orphaned waiter.
func TestParentDeath(t *testing.T) {
	requireRoot(t)
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
	tests := []struct {
		name string
		join uintptr // 0: all of the target's
		// how the started process ends
		exited bool
		status int
		signal syscall.Signal
	}{
		// The waiter gets SIGTERM, kills its child and mirrors it.
		{name: "waiter", exited: true, status: 128 + int(syscall.SIGKILL)},
		// No fork: the parent-death signal set after the uid change.
		{name: "no fork", join: unix.CLONE_NEWUSER | unix.CLONE_NEWNET | unix.CLONE_NEWUTS, signal: syscall.SIGKILL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := startSandbox(t, sandbox.Options{Rootless: true})
			b := nsexec.Bootstrap{Join: tc.join}
			if b.Join == 0 {
				b.Join = allOf(t, s)
			}
			sockDir := t.TempDir()
			if err := os.Chown(sockDir, rootless, rootless); err != nil {
				t.Fatal(err)
			}
			spec, err := json.Marshal(helperSpec{Target: s.PID(), Boot: b, SockDir: sockDir})
			if err != nil {
				t.Fatal(err)
			}
			// The test keeps stdin's write end, so the child cannot
			// exit on EOF when the helper dies.
			stdinR, stdinW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer stdinW.Close()
			outR, outW, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer outR.Close()
			exe, err := os.Executable()
			if err != nil {
				t.Fatal(err)
			}
			helper := exec.Command(exe)
			helper.Env = append(os.Environ(), helperEnv+"="+string(spec))
			helper.Stdin, helper.Stdout, helper.Stderr = stdinR, outW, os.Stderr
			err = helper.Start()
			stdinR.Close()
			outW.Close()
			if err != nil {
				t.Fatal(err)
			}
			var started, pid int // host pids: the process the helper started, and the one serving
			defer func() {
				helper.Process.Kill()
				helper.Wait()
				// Leave nothing behind on failure: the test inherits the
				// orphans, and until they are reaped the target's pid
				// namespace cannot go (sandbox.Close would hang).
				for _, p := range []int{started, pid} {
					if p > 0 {
						unix.Kill(p, unix.SIGKILL)
						unix.Wait4(p, nil, 0, nil)
					}
				}
			}()

			outR.SetReadDeadline(time.Now().Add(timeout))
			var r report
			if err := json.NewDecoder(outR).Decode(&r); err != nil {
				t.Fatalf("no report from the helper's child: %v", err)
			}
			kids := childrenOf(helper.Process.Pid)
			if len(kids) != 1 {
				t.Fatalf("helper has children %v, want one", kids)
			}
			started, pid = kids[0], kids[0]
			if b.Forks() {
				// The root keeper exits after EnterRoot; the waiter
				// reaps it soon after.
				kids = childrenOf(started)
				for deadline := time.Now().Add(timeout); len(kids) > 1 && time.Now().Before(deadline); kids = childrenOf(started) {
					time.Sleep(5 * time.Millisecond)
				}
				if len(kids) != 1 {
					t.Fatalf("waiter has children %v, want one", kids)
				}
				pid = kids[0]
			}

			helper.Process.Kill()
			helper.Wait()
			ws, err := reap(started)
			if err != nil {
				t.Fatal(err)
			}
			started = 0
			if tc.exited && (!ws.Exited() || ws.ExitStatus() != tc.status) {
				t.Errorf("started process ended with %v, want exit status %d", ws, tc.status)
			}
			if !tc.exited && (!ws.Signaled() || ws.Signal() != tc.signal) {
				t.Errorf("started process ended with %v, want death by %v", ws, tc.signal)
			}
			if !gone(pid) {
				t.Errorf("serving pid %d still exists", pid)
			} else {
				pid = 0
			}
		})
	}
}

// reap waits for an orphan this process inherited as subreaper, killing
// it if it does not end in time.
func reap(pid int) (unix.WaitStatus, error) {
	var ws unix.WaitStatus
	deadline := time.Now().Add(timeout)
	for {
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if err != nil {
			return ws, fmt.Errorf("wait4(%d): %w (not reparented to the test?)", pid, err)
		}
		if got == pid {
			return ws, nil
		}
		if time.Now().After(deadline) {
			unix.Kill(pid, unix.SIGKILL)
			unix.Wait4(pid, &ws, 0, nil)
			return ws, fmt.Errorf("pid %d outlived its parent by %v", pid, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
