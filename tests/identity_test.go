package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// startTime is core.StartTime, failing the test on error.
func startTime(t *testing.T, pid int) uint64 {
	t.Helper()
	st, err := core.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// A target named by pid and start time is served only while that process
// has the pid: another process's start time with the pid (what a caller
// holds once its target died and the pid was reused) is ESRCH, cold and
// warm, and so is the identity of a process that has exited.
func TestTargetIdentity(t *testing.T) {
	parallel(t)
	a := newTarget(t, sandbox.Options{Hostname: "ident-a"})
	time.Sleep(20 * time.Millisecond) // start times count clock ticks
	b := newTarget(t, sandbox.Options{Hostname: "ident-b"})
	stA, stB := startTime(t, a.PID()), startTime(t, b.PID())
	if stA == stB {
		t.Fatalf("targets %d and %d both started at %d", a.PID(), b.PID(), stA)
	}
	d, _ := newDispatcher(t, "")
	whoamiOf := func(pid int, st uint64) (whoami, error) {
		var w whoami
		resp, err := d.Dispatch(context.Background(), core.Request{PID: pid, StartTime: &st, Type: "probe.whoami"})
		if err == nil {
			err = json.Unmarshal(resp, &w)
		}
		return w, err
	}

	// A's start time with B's pid: refused before any instance starts
	// for B (cold), and while one is warm and B is pinned in the cache.
	_, err := whoamiOf(b.PID(), stA)
	wantErrno(t, err, syscall.ESRCH, fmt.Sprintf("%d:%d", b.PID(), stA), "is gone")
	if n := len(d.Instances()); n != 0 {
		t.Errorf("%d instances started for a stale identity", n)
	}
	if w, err := whoamiOf(b.PID(), stB); err != nil || w.Hostname != "ident-b" {
		t.Fatalf("B by its identity: %+v, %v", w, err)
	}
	_, err = whoamiOf(b.PID(), stA)
	wantErrno(t, err, syscall.ESRCH, "is gone")
	if w, err := whoamiOf(a.PID(), stA); err != nil || w.Hostname != "ident-a" {
		t.Fatalf("A by its identity: %+v, %v", w, err)
	}

	// A dies: its identity (still pinned in the cache a moment ago) is ESRCH.
	pidA := a.PID()
	a.Close()
	waitGone(t, pidA, 5*time.Second)
	_, err = whoamiOf(pidA, stA)
	wantErrno(t, err, syscall.ESRCH, strconv.Itoa(pidA))
	if _, err := core.StartTime(pidA); err == nil {
		t.Errorf("StartTime of dead pid %d succeeded", pidA)
	} else {
		wantErrno(t, err, syscall.ESRCH, strconv.Itoa(pidA))
	}
	wantErrno(t, func() error { _, err := core.StartTime(0); return err }(), syscall.EINVAL)
}

// Prepare takes the same identity: a stale one is ESRCH and starts
// nothing, as the host sees it (no plugin process appears, in the pid
// namespace of the process that has the pid now or as the core's child);
// the live one pre-starts the instance that then serves.
func TestPrepareRefusesAStaleIdentity(t *testing.T) {
	parallel(t)
	a := newTarget(t, sandbox.Options{Hostname: "prep-a"})
	time.Sleep(20 * time.Millisecond) // start times count clock ticks
	b := newTarget(t, sandbox.Options{Hostname: "prep-b"})
	stA, stB := startTime(t, a.PID()), startTime(t, b.PID())
	d, _ := newDispatcher(t, "")
	inB := processesInPIDNamespaceOf(t, b.PID())
	for _, types := range [][]string{{"probe.whoami"}, nil} {
		err := d.Prepare(context.Background(), core.Target{PID: b.PID(), StartTime: &stA}, types...)
		wantErrno(t, err, syscall.ESRCH, fmt.Sprintf("%d:%d", b.PID(), stA), "is gone")
	}
	if n := len(d.Instances()); n != 0 {
		t.Errorf("%d instances started for a stale identity: %v", n, d.Instances())
	}
	if kids := processesOf(d); len(kids) != 0 {
		t.Errorf("plugin processes started for a stale identity: %v", kids)
	}
	if now := processesInPIDNamespaceOf(t, b.PID()); len(now) != len(inB) {
		t.Errorf("processes in the pid namespace of %d: %v, were %v", b.PID(), now, inB)
	}

	if err := d.Prepare(context.Background(), core.Target{PID: b.PID(), StartTime: &stB}, "probe.whoami"); err != nil {
		t.Fatal(err)
	}
	h := servingPID(t, d, "probe")
	assertNamespaces(t, h, b.PID(), noUserNS)
	resp, err := d.Dispatch(context.Background(), core.Request{PID: b.PID(), StartTime: &stB, Type: "probe.whoami"})
	var w whoami
	if err == nil {
		err = json.Unmarshal(resp, &w)
	}
	if err != nil || w.Hostname != "prep-b" || servingPID(t, d, "probe") != h {
		t.Errorf("after Prepare: %+v, %v; served by %v (prepared %d)", w, err, d.Instances(), h)
	}
}

func TestCLITargetIdentity(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Hostname: "cli-ident"})
	pid := strconv.Itoa(target.PID())
	conf := cliConfig(t, "")
	stdout, stderr, code := runCLI(t, "id", "--pid", pid)
	want := fmt.Sprintf("%s:%d\n", pid, startTime(t, target.PID()))
	if code != 0 || stdout != want {
		t.Fatalf("nsplug id: exit %d, %q (want %q), stderr %q", code, stdout, want, stderr)
	}
	id := strings.TrimSpace(stdout)
	stdout, stderr, code = runCLI(t, "call", "--config", conf, "--pid", id, "sysctl.get", `{"name":"kernel.hostname"}`)
	if code != 0 || !strings.Contains(stdout, `"cli-ident"`) {
		t.Errorf("call --pid %s: exit %d, %q, stderr %q", id, code, stdout, stderr)
	}
	stale := fmt.Sprintf("%s:%d", pid, startTime(t, target.PID())+1)
	stdout, stderr, code = runCLI(t, "call", "--config", conf, "--pid", stale, "sysctl.get", `{"name":"kernel.hostname"}`)
	if code != 1 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "ESRCH") || !strings.Contains(stderr, stale) {
		t.Errorf("call --pid %s: exit %d, stdout %q, stderr %q", stale, code, stdout, stderr)
	}
	_, stderr, code = runCLI(t, "id", "--pid", "1073741824")
	if code != 1 || !strings.Contains(stderr, "ESRCH") {
		t.Errorf("id of a missing pid: exit %d, %q", code, stderr)
	}
	for _, bad := range []string{pid + ":", ":5", pid + ":x", pid + ":1:2", pid + ":-1", "x", "-3", "0", " " + pid, pid + ":18446744073709551616"} {
		_, stderr, code := runCLI(t, "call", "--config", conf, "--pid", bad, "sysctl.get", `{"name":"kernel.hostname"}`)
		if code != 2 || !strings.Contains(stderr, "--pid") {
			t.Errorf("--pid %q: exit %d, stderr %q", bad, code, stderr)
		}
	}
	for _, bad := range [][]string{{"id"}, {"id", "--pid", id}, {"id", "--pid", pid, "extra"}} {
		if _, stderr, code := runCLI(t, bad...); code != 2 {
			t.Errorf("%q: exit %d, stderr %q", bad, code, stderr)
		}
	}
	stdout, _, code = runCLI(t, "call", "--help")
	if code != 0 || !strings.Contains(stdout, "PID:STARTTIME") || !strings.Contains(stdout, "nsplug id --pid PID") {
		t.Errorf("call --help: exit %d:\n%s", code, stdout)
	}
}
