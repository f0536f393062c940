package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// ownedTarget starts a process that host uid makes for itself, as an
// unprivileged user makes a rootless container: `unshare -U -r -m -u`
// run as uid, so that the new user namespace (and the mount and uts
// namespaces it owns) are owned by uid, which NS_GET_OWNER_UID reports.
// It is killed and reaped with the test.
func ownedTarget(t *testing.T, uid uint32) int {
	t.Helper()
	return ownedTargetCmd(t, uid).Process.Pid
}

// ownedTargetCmd is ownedTarget, for a test that ends the process itself.
func ownedTargetCmd(t *testing.T, uid uint32) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("unshare", "-U", "-r", "-m", "-u", "sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("unshare as uid %d: %v", uid, err)
	}
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
	})
	pid := cmd.Process.Pid
	self := nsInode(t, os.Getpid(), "user")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) == "sleep" && nsInode(t, pid, "user") != self {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("uid %d's target %d never reached sleep in its own user namespace", uid, pid)
		}
	}
}

// hostTarget starts a plain process in the host's namespaces.
func hostTarget(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd.Process.Pid
}

// The hook sees the process the core pinned as the host sees it: its
// start time, every namespace inode of /proc/PID/ns, the owner of its user
// namespace (the uid that made it; root for the sandbox's, which the test
// makes as root; 0 for the host's) and whether that is the core's own.
func TestAuthorizeHookSeesThePinnedTarget(t *testing.T) {
	parallel(t)
	owned := ownedTarget(t, 4242)
	rootless := newTarget(t, sandbox.Options{Rootless: true, HostUID: 4300, HostGID: 4300})
	host := hostTarget(t)
	d, _ := newDispatcher(t, "")
	for _, tc := range []struct {
		pid      int
		owner    uint32
		hostUser bool
	}{{owned, 4242, false}, {rootless.PID(), 0, false}, {host, 0, true}} {
		var seen []core.TargetInfo
		req := core.Request{PID: tc.pid, Type: "probe.whoami", Authorize: func(ti core.TargetInfo) error {
			seen = append(seen, ti)
			return nil
		}}
		if _, err := d.Dispatch(context.Background(), req); err != nil {
			t.Fatalf("pid %d: %v", tc.pid, err)
		}
		if len(seen) != 1 {
			t.Fatalf("pid %d: hook called %d times", tc.pid, len(seen))
		}
		ti := seen[0]
		if ti.PID != tc.pid || ti.StartTime != startTime(t, tc.pid) || ti.UserNSOwner != tc.owner || ti.HostUserNS != tc.hostUser {
			t.Errorf("pid %d: hook saw %+v; want start time %d, owner %d, host user namespace %v", tc.pid, ti, startTime(t, tc.pid), tc.owner, tc.hostUser)
		}
		for _, ns := range allNS {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d/ns/%s", tc.pid, ns)); err != nil {
				continue // a kind this kernel lacks
			}
			if got, want := ti.Namespaces[ns], nsInode(t, tc.pid, ns); got != want {
				t.Errorf("pid %d: %s namespace %d, /proc shows %d", tc.pid, ns, got, want)
			}
		}
	}
	// Prepare calls it once, for the target pinned for all its plugins.
	calls := 0
	tg := core.Target{PID: owned, Authorize: func(ti core.TargetInfo) error {
		calls++
		if ti.UserNSOwner != 4242 {
			t.Errorf("prepare: owner %d", ti.UserNSOwner)
		}
		return nil
	}}
	if err := d.Prepare(context.Background(), tg, "probe.whoami", "procfs.read"); err != nil || calls != 1 {
		t.Errorf("prepare: %v, hook called %d times", err, calls)
	}
}

// A hook's refusal ends the request before anything starts: no instance,
// no plugin process, for Call (pooled and oneshot) and Prepare; its
// *core.Error comes back as it is and any other error as EACCES.
func TestAuthorizeHookRefusalStartsNothing(t *testing.T) {
	parallel(t)
	target := ownedTarget(t, 4242)
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"procfs\"\nmode = \"oneshot\"\n")
	refuse := func(core.TargetInfo) error { return errors.New("not this one") }
	own := &core.Error{Errno: syscall.EPERM, Message: "my own refusal"}
	for _, typ := range []string{"probe.whoami", "procfs.read"} {
		_, err := d.Dispatch(context.Background(), core.Request{PID: target, Type: typ, Payload: json.RawMessage(`{"path":"/proc/self/status"}`), Authorize: refuse})
		wantErrno(t, err, syscall.EACCES, "not this one")
		_, err = d.Dispatch(context.Background(), core.Request{PID: target, Type: typ, Payload: json.RawMessage(`{"path":"/proc/self/status"}`), Authorize: func(core.TargetInfo) error { return own }})
		if err != own {
			t.Errorf("%s: %v, want the hook's own *core.Error", typ, err)
		}
	}
	wantErrno(t, d.Prepare(context.Background(), core.Target{PID: target, Authorize: refuse}), syscall.EACCES, "not this one")
	if n := d.Instances(); len(n) != 0 {
		t.Errorf("instances after refusals: %v", n)
	}
	if s, _ := startedBy.Load(d); !s.(*startedProcs).none() {
		t.Errorf("plugin processes started for refused requests: %v", processesOf(d))
	}
	// A stale identity is refused before the hook runs: it never sees
	// the process that has the pid now.
	st := startTime(t, target) - 1
	called := false
	_, err := d.Dispatch(context.Background(), core.Request{PID: target, StartTime: &st, Type: "probe.whoami", Authorize: func(core.TargetInfo) error {
		called = true
		return nil
	}})
	wantErrno(t, err, syscall.ESRCH, "is gone")
	if called {
		t.Error("the hook saw a process that is not the one meant")
	}
}

// A target that dies after a first, warm request is never decided on
// again: once it is reaped, the next request is ESRCH before the hook
// runs, and nothing starts for it. (A zombie not yet reaped is still the
// process the hook decided on: its pid cannot change hands before.)
func TestAuthorizeHookNeverSeesADeadTarget(t *testing.T) {
	parallel(t)
	cmd := ownedTargetCmd(t, 4242)
	target := cmd.Process.Pid
	d, _ := newDispatcher(t, "")
	calls := 0
	hook := func(ti core.TargetInfo) error {
		calls++
		return nil
	}
	if _, err := d.Dispatch(context.Background(), core.Request{PID: target, Type: "probe.whoami", Authorize: hook}); err != nil || calls != 1 {
		t.Fatalf("first request: %v, hook called %d times", err, calls)
	}
	warm := d.Instances()
	cmd.Process.Kill()
	cmd.Wait()
	_, err := d.Dispatch(context.Background(), core.Request{PID: target, Type: "probe.whoami", Authorize: hook})
	wantErrno(t, err, syscall.ESRCH)
	if calls != 1 {
		t.Errorf("the hook was called for a dead target (%d calls)", calls)
	}
	if now := d.Instances(); len(now) > len(warm) {
		t.Errorf("instances %v after the target died, were %v", now, warm)
	}
}
