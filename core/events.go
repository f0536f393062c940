package core

import (
	"context"
	"syscall"
	"time"
)

// Event is something that happened to a plugin instance serving requests
// (not to the short-lived processes that describe plugins at New), for an
// embedder that observes the pool through Options.Events: a daemon's
// metrics, a supervisor's log. Every InstanceStarted is followed, once
// the process is reaped, by exactly one event that ends that instance
// (Kind.Ends), with the same PID.
type Event struct {
	Kind   EventKind
	Plugin string
	// PID is the host pid of the process the core started; 0 for a
	// start that failed.
	PID int
	// Oneshot is set for an instance that served one request of a plugin
	// in oneshot mode.
	Oneshot bool
	// Duration is how long the start took, for InstanceStarted and
	// InstanceStartFailed: from the request that needed the instance
	// to a process ready to serve it (a cold start).
	Duration time.Duration
	// Err says why: the start's error (InstanceStartFailed); the
	// request's error that broke the instance, or how its process exited
	// (InstanceCrashed); the deadline or cancellation (InstanceKilled).
	Err error
}

// EventKind is what happened to an instance.
type EventKind int

const (
	// InstanceStarted: a process was started and is ready to serve.
	InstanceStarted EventKind = iota + 1
	// InstanceStartFailed: a start failed (start_timeout, a plugin
	// that exits or never serves, a target that went away, ...).
	InstanceStartFailed
	// InstanceCrashed: the process exited of itself, idle or in the
	// middle of a request, or broke the protocol during one.
	InstanceCrashed
	// InstanceKilled: killed because a request it was serving ran out of
	// time (request_timeout, the caller's deadline) or was cancelled,
	// and the handler did not stop when told.
	InstanceKilled
	// InstanceEvicted: an idle instance killed to make room for a start
	// under max_instances.
	InstanceEvicted
	// InstanceIdle: retired after idle_timeout without a request.
	InstanceIdle
	// InstanceClosed: killed by Dispatcher.Close.
	InstanceClosed
	// InstanceDone: a oneshot instance ended after serving its request.
	InstanceDone
)

var eventNames = [...]string{
	InstanceStarted:     "started",
	InstanceStartFailed: "start_failed",
	InstanceCrashed:     "crashed",
	InstanceKilled:      "killed",
	InstanceEvicted:     "evicted",
	InstanceIdle:        "idle",
	InstanceClosed:      "closed",
	InstanceDone:        "done",
}

// String is the kind's name in snake case ("start_failed"), fit for a
// metric label.
func (k EventKind) String() string {
	if k > 0 && int(k) < len(eventNames) {
		return eventNames[k]
	}
	return "unknown"
}

// Ends reports whether the kind ends an instance that had started.
func (k EventKind) Ends() bool { return k >= InstanceCrashed && k <= InstanceDone }

// instanceEnd is why an instance ends: the first reason given wins.
type instanceEnd struct {
	kind EventKind
	err  error
}

// ending records why the instance ends, unless a reason is already
// recorded: a process killed for its idle timeout is then reaped, which
// is no crash. Safe without the pool's lock.
func (inst *instance) ending(kind EventKind, err error) {
	inst.ended.CompareAndSwap(nil, &instanceEnd{kind, err})
}

// endEvent is the event that ends inst, once it is reaped: the reason
// recorded first.
func (inst *instance) endEvent(oneshot bool) Event {
	ev := Event{Plugin: inst.plugin.name, PID: inst.pid, Oneshot: oneshot}
	if e := inst.ended.Load(); e != nil {
		ev.Kind, ev.Err = e.kind, e.err
	}
	if ev.Kind == InstanceCrashed && ev.Err == nil && inst.runner != nil {
		ev.Err = errorf(syscall.EIO, "plugin %s (pid %d) exited: %v", inst.plugin.name, inst.pid, inst.runner.waitErr)
	}
	return ev
}

// brokenBy is the end of an instance that a request broke: killed when
// the request's deadline passed or it was cancelled, crashed otherwise.
func brokenBy(ctx context.Context) EventKind {
	if ctx.Err() != nil {
		return InstanceKilled
	}
	return InstanceCrashed
}

// startEvent reports a start that began at began, as inst and err say
// it went (pointers: it is deferred).
func (d *Dispatcher) startEvent(began time.Time, p *pluginEntry, oneshot bool, inst **instance, err *error) {
	if d.events == nil {
		return
	}
	ev := Event{Kind: InstanceStarted, Plugin: p.name, Oneshot: oneshot, Duration: time.Since(began)}
	if *err != nil {
		ev.Kind, ev.Err = InstanceStartFailed, *err
	} else {
		ev.PID = (*inst).pid
	}
	d.events(ev)
}

// emit hands ev to Options.Events, if set. Called without locks held.
func emit(events func(Event), ev Event) {
	if events != nil {
		events(ev)
	}
}
