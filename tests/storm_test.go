package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/plugins/builtin"
	"github.com/nsplug/nsplug/sandbox"
)

// firstRequests are a cheap request of each built-in plugin: one of each
// makes every built-in warm in a target.
var firstRequests = []struct{ typ, payload string }{
	{"procfs.read", `{"path":"/proc/sys/kernel/hostname"}`},
	{"sysctl.get", `{"name":"kernel.hostname"}`},
	{"ids.user", `{"id":0}`},
	{"mount.info", `{}`},
	{"fs.listxattr", `{"path":"/"}`},
}

// A storm of new targets, each sent its first request at the same time
// (of one built-in or another, in turn), under the default timeouts: the
// cold starts queue (max_starts, round-robin over targets) and every
// request is served. (The bench's storm sends every built-in's first
// request into 256 targets.)
func TestStormOfNewTargetsUnderDefaultTimeouts(t *testing.T) {
	parallel(t)
	const targets = 64
	var pids []int
	for range targets {
		pids = append(pids, newTarget(t, sandbox.Options{Hostname: "storm"}).PID())
	}
	// The plugins are bin/nsplug-handler's built-ins, not this test binary's:
	// built with the race detector, each of its starts costs several
	// times a real one. (So only bin/nsplug's built-ins are configured:
	// they share one process per target.)
	d, _ := newDispatcherWith(t, fmt.Sprintf("max_instances = %d\n", targets+16), core.Options{Executable: handlerBin, Builtins: builtin.All()})
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	for i, pid := range pids {
		r := firstRequests[i%len(firstRequests)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := d.Dispatch(context.Background(), core.Request{PID: pid, Type: r.typ, Payload: json.RawMessage(r.payload)})
			if err != nil {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("%s in pid %d: %v", r.typ, pid, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d first requests into %d new targets: all answered after %v", targets, targets, time.Since(start).Round(time.Millisecond))
	if len(failed) > 0 {
		t.Errorf("%d of %d first requests failed, e.g.:\n%s", len(failed), targets, strings.Join(failed[:min(len(failed), 5)], "\n"))
	}
	if n := len(d.Instances()); n != targets {
		t.Errorf("%d instances after the storm, want %d", n, targets)
	}
}

// runsIn reports whether a plugin process this test binary started (its
// waiter or handler) is in target's uts namespace: a start in progress
// there.
func runsIn(target *sandbox.Sandbox) bool {
	want, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/uts", target.PID()))
	if err != nil {
		return false
	}
	for _, pid := range childrenOf(os.Getpid()) {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/uts", pid)); ns == want && strings.Contains(exe, "memfd:nsplug") {
			return true
		}
	}
	return false
}

// A request's deadline holds while it waits for a cold start: queued
// behind max_starts, or sharing another caller's start that hangs. Each
// returns ETIMEDOUT naming what it waited for, while the hanging start
// (which only start_timeout ends) is still under way.
func TestDeadlineHoldsWhileWaitingForAColdStart(t *testing.T) {
	parallel(t)
	d, hostile, benign := stallSetup(t, "max_starts = 1", `request_timeout = "60s" # start_timeout (10s) ends the hanging start`)
	call := func(ctx context.Context, pid int) error {
		_, err := d.Dispatch(ctx, core.Request{PID: pid, Type: "stallstart.ping"})
		return err
	}
	stalled := make(chan error, 1)
	go func() { stalled <- call(context.Background(), hostile.PID()) }()
	waitFor(t, "the hanging start to begin", func() bool { return runsIn(hostile) })

	for _, c := range []struct {
		name, want string
		pid        int
	}{
		{"queued behind max_starts", "a cold start slot: 1 starts running (max_starts)", benign.PID()},
		{"sharing the hanging start", "waiting for a plugin instance to start", hostile.PID()},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		err := call(ctx, c.pid)
		cancel()
		var ce *core.Error
		if !errors.As(err, &ce) || ce.Errno != syscall.ETIMEDOUT || !strings.Contains(ce.Message, c.want) {
			t.Errorf("%s with a 300ms deadline: %v; want ETIMEDOUT saying %q", c.name, err, c.want)
		}
		select {
		case err := <-stalled:
			t.Fatalf("%s: returned only once the hanging start ended (%v), not by its deadline", c.name, err)
		default:
		}
	}
	if err := <-stalled; err == nil || !strings.Contains(err.Error(), "start_timeout") {
		t.Errorf("the hanging start: %v, want it to fail at start_timeout", err)
	}
	// Its slot is back: the benign target is served.
	if err := call(context.Background(), benign.PID()); err != nil {
		t.Errorf("benign target once the slot is free: %v", err)
	}
}

// A warm handler process runs none of os/signal's machinery: go-plugin's
// serving mode would ask for SIGINT (signal.Notify), and the Go runtime
// would then keep two threads for good, one of them blocking every other
// signal (its SigBlk, seen from the host, gives it away).
func TestHandlersKeepNoSignalThreads(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{})
	d, _ := newDispatcher(t, "")
	if err := d.Prepare(context.Background(), core.Target{PID: target.PID()}, "procfs.read"); err != nil {
		t.Fatal(err)
	}
	insts := d.Instances()
	if len(insts) != 1 {
		t.Fatalf("instances: %+v, want one", insts)
	}
	pid := insts[0].PID
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(status), "\n") {
			if blk, ok := strings.CutPrefix(line, "SigBlk:"); ok && strings.Trim(strings.TrimSpace(blk), "0") != "" {
				t.Errorf("thread %s of handler pid %d blocks signals (SigBlk %s): os/signal's mask thread", task.Name(), pid, strings.TrimSpace(blk))
			}
		}
	}
	t.Logf("handler pid %d: %d threads", pid, len(tasks))
}
