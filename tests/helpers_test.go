package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
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
	"github.com/nsplug/nsplug/nsexec"
	"github.com/nsplug/nsplug/sandbox"
)

// allNS is every namespace kind, as nsexec.Namespaces (the one list) has
// them.
var allNS = nsexec.NamespaceNames(nsexec.AllNamespaces)

// newTarget starts a sandbox target and closes it with the test.
func newTarget(t *testing.T, opts sandbox.Options) *sandbox.Sandbox {
	t.Helper()
	s, err := sandbox.Start(opts)
	if err != nil {
		t.Fatalf("starting target: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// parallelTests are the names of the tests that called parallel.
var parallelTests sync.Map

// parallel runs t in parallel with the other parallel tests. It must come
// first in the test. The leak check of its dispatchers is then scoped to
// them (see newCore); the process-wide one covers every test at the end of
// the run (see runTests).
func parallel(t *testing.T) {
	parallelTests.Store(t.Name(), true)
	t.Parallel()
}

// inParallel reports whether t, or the test it is a subtest of, runs in
// parallel.
func inParallel(t *testing.T) bool {
	for name := t.Name(); ; {
		if _, ok := parallelTests.Load(name); ok {
			return true
		}
		i := strings.LastIndexByte(name, '/')
		if i < 0 {
			return false
		}
		name = name[:i]
	}
}

// newDispatcher starts a core from TOML (runtime_dir is set to a fresh
// temporary directory) and checks, when the test ends, that closing it
// leaves no process, fd, socket file or goroutine behind.
func newDispatcher(t *testing.T, toml string) (*core.Dispatcher, string) {
	t.Helper()
	return newDispatcherWith(t, toml, core.Options{})
}

// newDispatcherWith is newDispatcher with options (Builtins are the test's).
func newDispatcherWith(t *testing.T, toml string, opts core.Options) (*core.Dispatcher, string) {
	t.Helper()
	d, runDir, err := newCore(t, toml, opts, time.Minute, nil)
	if err != nil {
		t.Fatalf("core.New: %v", err)
	}
	return d, runDir
}

// newCore starts a core from TOML (runtime_dir is set to a fresh
// temporary directory) in a goroutine and fails the test if New does not
// return within limit, instead of hanging with it. unblock, when not
// nil, runs on timeout to release whatever New is stuck on. When the
// test ends, it checks that closing the core leaves no process, fd,
// socket file or goroutine behind: process-wide for a serial test; for a
// parallel one, no process this core started and no fd into its runtime
// directory (the rest is checked for all tests at the end of the run).
// opts.Builtins are the test's unless given.
func newCore(t *testing.T, toml string, opts core.Options, limit time.Duration, unblock func()) (*core.Dispatcher, string, error) {
	t.Helper()
	return newCoreIn(t, t.TempDir(), toml, opts, limit, unblock)
}

// newCoreIn is newCore with runDir for runtime_dir.
func newCoreIn(t *testing.T, runDir, toml string, opts core.Options, limit time.Duration, unblock func()) (*core.Dispatcher, string, error) {
	t.Helper()
	before := snapshot(t)
	opts.Started = before.started.add
	cfg, err := config.Parse([]byte(fmt.Sprintf("runtime_dir = %q\n%s", runDir, toml)), "test.toml")
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	if opts.Builtins == nil {
		opts.Builtins = testBuiltins()
	}
	type result struct {
		d   *core.Dispatcher
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		d, err := core.New(cfg, opts)
		done <- result{d, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(limit):
		if unblock != nil {
			unblock()
		}
		r = <-done
		if r.d != nil {
			r.d.Close()
		}
		t.Fatalf("core.New did not return within %v (it took %v)", limit, time.Since(start))
	}
	if r.d != nil {
		startedBy.Store(r.d, before.started)
		t.Cleanup(func() {
			defer startedBy.Delete(r.d)
			if err := r.d.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			before.assertNoLeaks(t, runDir)
		})
	}
	return r.d, runDir, r.err
}

// resources is what a core may leak.
type resources struct {
	fds        int
	goroutines int
	parallel   bool          // check only what is the core's own
	started    *startedProcs // the core's plugin processes
}

// startedProcs records the plugin processes a core started (through
// core.Options.Started), each with its start time, so that a pid reused
// by another process is not taken for one of them.
type startedProcs struct {
	mu    sync.Mutex
	procs map[int]string // pid: start time in /proc/PID/stat
}

func (s *startedProcs) add(pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.procs == nil {
		s.procs = make(map[int]string)
	}
	s.procs[pid] = procStartTime(pid)
}

func (s *startedProcs) none() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.procs) == 0
}

// startedBy holds the startedProcs of each dispatcher newCore made.
var startedBy sync.Map // *core.Dispatcher: *startedProcs

// processesOf lists the live plugin processes d started, as "pid:exe".
func processesOf(d *core.Dispatcher) []string {
	s, _ := startedBy.Load(d)
	return s.(*startedProcs).alive()
}

// alive lists the recorded processes that still exist, as "pid:exe".
func (s *startedProcs) alive() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for pid, start := range s.procs {
		if st := procStartTime(pid); st != "" && st == start {
			exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
			out = append(out, fmt.Sprintf("%d:%s", pid, exe))
		}
	}
	return out
}

// procStartTime is field 22 of /proc/PID/stat, "" when there is no PID.
func procStartTime(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command name (field 2) may hold spaces: count from its ")".
	i := strings.LastIndexByte(string(data), ')')
	if f := strings.Fields(string(data[i+1:])); i >= 0 && len(f) > 19 {
		return f[19]
	}
	return ""
}

// fdsInto lists this process's fds whose path lies under dir.
func fdsInto(dir string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err == nil && (target == dir || strings.HasPrefix(target, dir+"/")) {
			out = append(out, e.Name()+":"+target)
		}
	}
	return out
}

// snapshot is taken before a core starts; the core is to be given
// Options.Started = started.add.
func snapshot(t *testing.T) resources {
	return resources{fds: countFDs(t), goroutines: runtime.NumGoroutine(), parallel: inParallel(t), started: &startedProcs{}}
}

func countFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// assertNoLeaks checks, after Close, that no child process of the test
// remains (targets aside), that fds and goroutines are back where they
// were, and that the runtime directory holds no socket or directory.
func (r resources) assertNoLeaks(t *testing.T, runDir string) {
	t.Helper()
	// Close has reaped every process it started.
	if left := r.started.alive(); len(left) > 0 {
		t.Errorf("plugin processes of this dispatcher left after Close: %v", left)
	}
	if !r.parallel {
		if kids := pluginChildren(); len(kids) > 0 {
			t.Errorf("plugin processes left after Close: %v", kids)
		}
	}
	filepath.Walk(runDir, func(p string, info os.FileInfo, err error) error {
		if err == nil && p != runDir {
			t.Errorf("left in runtime_dir after Close: %s (%v)", p, info.Mode())
		}
		return nil
	})
	// Goroutines of closed connections wind down asynchronously.
	deadline := time.Now().Add(5 * time.Second)
	for r.parallel {
		into := fdsInto(runDir)
		if len(into) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("fds into runtime_dir left after Close: %v", into)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		fds, gs := countFDs(t), runtime.NumGoroutine()
		if fds <= r.fds && gs <= r.goroutines+2 {
			return
		}
		if time.Now().After(deadline) {
			if fds > r.fds {
				t.Errorf("fds: %d before, %d after Close", r.fds, fds)
			}
			if gs > r.goroutines+2 {
				buf := make([]byte, 1<<16)
				t.Errorf("goroutines: %d before, %d after Close\n%s", r.goroutines, gs, buf[:runtime.Stack(buf, true)])
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func countFDsOrZero() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

// leaksAtExit is what the whole run left behind, compared with r (taken
// before it), or "". It gives goroutines that wind down asynchronously a
// few seconds.
func (r resources) leaksAtExit() string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		kids, fds, gs := pluginChildren(), countFDsOrZero(), runtime.NumGoroutine()
		if len(kids) == 0 && fds <= r.fds && gs <= r.goroutines+2 {
			return ""
		}
		if time.Now().After(deadline) {
			var fdList []string
			ents, _ := os.ReadDir("/proc/self/fd")
			for _, e := range ents {
				target, _ := os.Readlink("/proc/self/fd/" + e.Name())
				fdList = append(fdList, e.Name()+":"+target)
			}
			buf := make([]byte, 1<<20)
			return fmt.Sprintf("plugin processes %v; fds: %d before, %d after %v; goroutines: %d before, %d after\n%s",
				kids, r.fds, fds, fdList, r.goroutines, gs, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pluginChildren lists this process's children that are plugin processes,
// as "pid:exe": the core runs each from a sealed memfd copy or, for
// built-ins, from a detached overlay, where /proc/PID/exe reads "/NAME"
// (no host path), and names it "nsplug-PLUGIN" (argv[0]).
func pluginChildren() []string {
	var out []string
	for _, pid := range childrenOf(os.Getpid()) {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		overlay := strings.Count(exe, "/") == 1 && bytes.HasPrefix(cmdline, []byte("nsplug-"))
		if strings.Contains(exe, "memfd:nsplug") || overlay {
			out = append(out, fmt.Sprintf("%d:%s", pid, exe))
		}
	}
	return out
}

func childrenOf(pid int) []int {
	var kids []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, task := range tasks {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		for _, f := range strings.Fields(string(data)) {
			n, _ := strconv.Atoi(f)
			kids = append(kids, n)
		}
	}
	return kids
}

// nsInode is the inode of /proc/PID/ns/NS as the host sees it.
func nsInode(t *testing.T, pid int, ns string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/%s", pid, ns), &st); err != nil {
		t.Fatalf("stat ns %s of %d: %v", ns, pid, err)
	}
	return st.Ino
}

// ownNSInode is the inode of the test process's own namespace ns, as its
// threads (and the core, which reads them on its spawner thread) have it.
// Not through /proc/PID, which shows the main thread's: a test goroutine
// that locks its thread and joins a target's namespace (sysctlDirectErrno)
// throws the thread away afterwards, but when it ran on the main thread,
// which never exits, that thread stays in the target's namespace, and so
// does /proc/PID/ns. Every other thread is the process's own.
func ownNSInode(t *testing.T, ns string) uint64 {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/"+ns, &st); err != nil {
		t.Fatalf("stat own ns %s: %v", ns, err)
	}
	return st.Ino
}

// assertNamespaces proves from the host that process pid is in the
// target's namespaces for every name in joined, and in the test process's
// own for the rest.
func assertNamespaces(t *testing.T, pid, target int, joined []string) {
	t.Helper()
	in := make(map[string]bool)
	for _, n := range joined {
		in[n] = true
	}
	for _, ns := range allNS {
		got := nsInode(t, pid, ns)
		want, whose := ownNSInode(t, ns), "the core's"
		if in[ns] {
			want, whose = nsInode(t, target, ns), "the target's"
		}
		if got != want {
			t.Errorf("handler pid %d: %s namespace %d, want %s %d", pid, ns, got, whose, want)
		}
	}
}

// servingPID is the host pid of the only live instance serving plugin
// (alone, or with the built-ins that share its processes).
func servingPID(t *testing.T, d *core.Dispatcher, plugin string) int {
	t.Helper()
	var pids []int
	for _, in := range d.Instances() {
		if slices.Contains(in.Plugins, plugin) {
			pids = append(pids, in.PID)
		}
	}
	if len(pids) != 1 {
		t.Fatalf("want one live %s instance, have %v", plugin, d.Instances())
	}
	return pids[0]
}

// call dispatches and decodes the response into out (when not nil).
func call(t *testing.T, d *core.Dispatcher, pid int, typ string, payload string, out any) error {
	t.Helper()
	resp, err := d.Dispatch(context.Background(), core.Request{PID: pid, Type: typ, Payload: json.RawMessage(payload)})
	if err != nil {
		return err
	}
	if out != nil {
		if err := json.Unmarshal(resp, out); err != nil {
			t.Fatalf("%s: response %s: %v", typ, resp, err)
		}
	}
	return nil
}

func mustCall(t *testing.T, d *core.Dispatcher, pid int, typ string, payload string, out any) {
	t.Helper()
	if err := call(t, d, pid, typ, payload, out); err != nil {
		t.Fatalf("%s %s: %v", typ, payload, err)
	}
}

// wantErrno checks that err is a core error with errno want whose message
// contains every fragment.
func wantErrno(t *testing.T, err error, want syscall.Errno, fragments ...string) {
	t.Helper()
	var ce *core.Error
	if !errors.As(err, &ce) {
		t.Fatalf("want a *core.Error with %v, got %T %v", want, err, err)
	}
	if ce.Errno != want {
		t.Errorf("errno %v (%d), want %v (%d): %v", ce.Errno, ce.Errno, want, want, err)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q does not mention %q", err, f)
		}
	}
}

// waitGone waits until /proc/PID disappears (exited and reaped).
func waitGone(t *testing.T, pid int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	state, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	t.Fatalf("pid %d still exists after %v: %s", pid, within, state)
}

// inNamespaceOf lists the host pids in the pid namespace of pid, for
// "nothing left in the target" checks.
func processesInPIDNamespaceOf(t *testing.T, pid int) []int {
	t.Helper()
	want := nsInode(t, pid, "pid")
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/pid", n), &st) == nil && st.Ino == want {
			out = append(out, n)
		}
	}
	return out
}

var _ = context.Background

// writeExecutable writes data to path with mode, holding syscall.ForkLock
// while the file is open for writing. Tests run in parallel and fork all
// the time; a child forked while the write fd is open holds it until its
// own exec, and executing the file meanwhile fails with ETXTBSY (seen in
// CI as an exit of -1 with no output). With the lock, no fork sees it.
func writeExecutable(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	syscall.ForkLock.Lock()
	defer syscall.ForkLock.Unlock()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}
