package tests

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// eventLog records what core.Options.Events reports.
type eventLog struct {
	mu     sync.Mutex
	events []core.Event
}

func (l *eventLog) add(ev core.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, ev)
}

func (l *eventLog) all() []core.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]core.Event(nil), l.events...)
}

// find returns the first event of kind for plugin (and pid, when not 0).
func (l *eventLog) find(kind core.EventKind, plugin string, pid int) (core.Event, bool) {
	for _, ev := range l.all() {
		if ev.Kind == kind && ev.Plugin == plugin && (pid == 0 || ev.PID == pid) {
			return ev, true
		}
	}
	return core.Event{}, false
}

// wait waits for an event of kind for plugin (and pid, when not 0).
func (l *eventLog) wait(t *testing.T, kind core.EventKind, plugin string, pid int) core.Event {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if ev, ok := l.find(kind, plugin, pid); ok {
			return ev
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s event of %s (pid %d) within 20s; have %s", kind, plugin, pid, l)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (l *eventLog) String() string {
	var s []string
	for _, ev := range l.all() {
		s = append(s, fmt.Sprintf("%s:%s:%d", ev.Kind, ev.Plugin, ev.PID))
	}
	return "[" + strings.Join(s, " ") + "]"
}

// checkPaired checks, after Close, that every started instance ended
// exactly once, and that nothing ended that had not started.
func (l *eventLog) checkPaired(t *testing.T) {
	t.Helper()
	started := make(map[int]int)
	for _, ev := range l.all() {
		switch {
		case ev.Kind == core.InstanceStarted:
			started[ev.PID]++
		case ev.Kind.Ends():
			started[ev.PID]--
			if started[ev.PID] < 0 {
				t.Errorf("%s event for pid %d, which did not start (or ended twice): %s", ev.Kind, ev.PID, l)
			}
		}
	}
	for pid, n := range started {
		if n != 0 {
			t.Errorf("instance pid %d started without a matching end: %s", pid, l)
		}
	}
}

// newObservedDispatcher is newDispatcher with an event log; the log is
// checked for pairs once the test has closed the dispatcher.
// ownProcess, in a built-in's [[plugin]] entry, gives it a process of its
// own: built-ins with the same process settings share one per target,
// whose events carry the group's name ("procfs+fs+...").
const ownProcess = "start_timeout = \"9s\"\n"

func newObservedDispatcher(t *testing.T, toml string) (*core.Dispatcher, *eventLog) {
	t.Helper()
	log := &eventLog{}
	d, _ := newDispatcherWith(t, toml, core.Options{Events: log.add})
	return d, log
}

func runnerPID(t *testing.T, d *core.Dispatcher, plugin string) int {
	t.Helper()
	for _, in := range d.Instances() {
		if in.Plugin == plugin {
			return in.RunnerPID
		}
	}
	t.Fatalf("no live %s instance: %v", plugin, d.Instances())
	return 0
}

// A cold start is reported with its pid and duration; an instance left
// idle past idle_timeout ends as idle; Close ends the rest as closed,
// before it returns.
func TestEventsStartIdleAndClose(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{})
	d, log := newObservedDispatcher(t, "[[plugin]]\nname = \"probe\"\nidle_timeout = \"300ms\"\n")
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, nil)
	first := runnerPID(t, d, "probe")
	ev := log.wait(t, core.InstanceStarted, "probe", first)
	if ev.Duration <= 0 || ev.Err != nil || ev.Oneshot {
		t.Errorf("started event: %+v, want a duration, no error, not oneshot", ev)
	}
	if ev := log.wait(t, core.InstanceIdle, "probe", first); ev.Err != nil {
		t.Errorf("idle event with an error: %v", ev.Err)
	}

	mustCall(t, d, target.PID(), "probe.whoami", `{}`, nil)
	second := runnerPID(t, d, "probe")
	d.Close()
	if _, ok := log.find(core.InstanceClosed, "probe", second); !ok {
		t.Errorf("no closed event for pid %d once Close returned: %s", second, log)
	}
	log.checkPaired(t)
}

// A plugin process that exits of itself, in the middle of a request or
// while idle, is reported as crashed, with why.
func TestEventsCrash(t *testing.T) {
	parallel(t)
	bin := sdkBuild(t, "./testdata/crasher")
	target := newTarget(t, sandbox.Options{})
	d, log := newObservedDispatcher(t, "[[plugin]]\nname = \"crasher\"\npath = \""+bin+"\"\nsha256 = \""+sha256File(t, bin)+"\"\n")

	err := call(t, d, target.PID(), "crasher.exit", `{}`, nil)
	wantErrno(t, err, syscall.EIO, "exited")
	started := log.wait(t, core.InstanceStarted, "crasher", 0)
	ev := log.wait(t, core.InstanceCrashed, "crasher", started.PID)
	if ev.Err == nil || !strings.Contains(ev.Err.Error(), "exited") {
		t.Errorf("crashed mid-request: error %v, want the request's, naming the exit", ev.Err)
	}

	mustCall(t, d, target.PID(), "crasher.later", `{}`, nil)
	idle := runnerPID(t, d, "crasher")
	ev = log.wait(t, core.InstanceCrashed, "crasher", idle)
	if ev.Err == nil || !strings.Contains(ev.Err.Error(), "exit status 4") {
		t.Errorf("crashed while idle: error %v, want its exit status", ev.Err)
	}
	d.Close()
	log.checkPaired(t)
}

// An instance whose handler ignores the end of its request (the
// request_timeout, the caller's cancellation) is reported as killed.
func TestEventsKill(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{})
	d, log := newObservedDispatcher(t, "[[plugin]]\nname = \"probe\"\nrequest_timeout = \"2s\"\n"+ownProcess)

	err := call(t, d, target.PID(), "probe.hang", `{}`, nil)
	wantErrno(t, err, syscall.ETIMEDOUT)
	started := log.wait(t, core.InstanceStarted, "probe", 0)
	if ev := log.wait(t, core.InstanceKilled, "probe", started.PID); !errors.Is(ev.Err, syscall.ETIMEDOUT) {
		t.Errorf("killed at request_timeout: error %v, want ETIMEDOUT", ev.Err)
	}

	mustCall(t, d, target.PID(), "probe.whoami", `{}`, nil)
	second := runnerPID(t, d, "probe")
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err = d.Dispatch(ctx, core.Request{PID: target.PID(), Type: "probe.hang"})
	wantErrno(t, err, syscall.ECANCELED)
	if ev := log.wait(t, core.InstanceKilled, "probe", second); !errors.Is(ev.Err, syscall.ECANCELED) {
		t.Errorf("killed on cancellation: error %v, want ECANCELED", ev.Err)
	}
	d.Close()
	log.checkPaired(t)
}

// With max_instances = 1, a start for another target evicts the idle
// instance of the first.
func TestEventsEviction(t *testing.T) {
	parallel(t)
	a := newTarget(t, sandbox.Options{Hostname: "a"})
	b := newTarget(t, sandbox.Options{Hostname: "b"})
	d, log := newObservedDispatcher(t, "max_instances = 1\n[[plugin]]\nname = \"probe\"\n"+ownProcess)
	mustCall(t, d, a.PID(), "probe.whoami", `{}`, nil)
	first := runnerPID(t, d, "probe")
	mustCall(t, d, b.PID(), "probe.whoami", `{}`, nil)
	second := runnerPID(t, d, "probe")
	log.wait(t, core.InstanceEvicted, "probe", first)
	log.wait(t, core.InstanceStarted, "probe", second)
	d.Close()
	log.checkPaired(t)
}

// A start that does not complete within start_timeout is reported as a
// failed start, with its error and how long it took, and no pid.
func TestEventsStartFailed(t *testing.T) {
	parallel(t)
	bin := sdkBuild(t, "./testdata/stallstart")
	target := newTarget(t, sandbox.Options{Hostname: "stall-starts"})
	d, log := newObservedDispatcher(t, "[[plugin]]\nname = \"stallstart\"\npath = \""+bin+"\"\nsha256 = \""+sha256File(t, bin)+"\"\nstart_timeout = \"500ms\"\n")
	err := call(t, d, target.PID(), "stallstart.ping", `{}`, nil)
	wantErrno(t, err, syscall.EIO, "start_timeout")
	ev := log.wait(t, core.InstanceStartFailed, "stallstart", 0)
	if ev.PID != 0 || ev.Err == nil || !strings.Contains(ev.Err.Error(), "start_timeout") || ev.Duration < 500*time.Millisecond {
		t.Errorf("failed start: %+v (error %v), want no pid, the start_timeout error, a duration of at least 500ms", ev, ev.Err)
	}
	d.Close()
	log.checkPaired(t)
	if n := len(log.all()); n != 1 {
		t.Errorf("want only the failed start, have %s", log)
	}
}

// A oneshot instance is started and done with each request, or crashes
// with it.
func TestEventsOneshot(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{})
	d, log := newObservedDispatcher(t, "[[plugin]]\nname = \"probe\"\nmode = \"oneshot\"\n")
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, nil)
	ev := log.wait(t, core.InstanceStarted, "probe", 0)
	if !ev.Oneshot || ev.PID == 0 {
		t.Errorf("oneshot start: %+v", ev)
	}
	if done := log.wait(t, core.InstanceDone, "probe", ev.PID); !done.Oneshot {
		t.Errorf("oneshot end: %+v", done)
	}
	err := call(t, d, target.PID(), "probe.crash", `{}`, nil)
	wantErrno(t, err, syscall.EIO)
	if ev := log.wait(t, core.InstanceCrashed, "probe", 0); !ev.Oneshot || ev.Err == nil {
		t.Errorf("oneshot crash: %+v", ev)
	}
	d.Close()
	log.checkPaired(t)
}
