package core

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nsplug/nsplug/nsexec"
)

// A target controls what its plugin starts meet: it can make them hang
// until start_timeout or fail. admission keeps that its own problem: each
// target (one set of namespaces) gets at most perTarget cold starts at a
// time, so it can hold no more of max_instances than that while others
// start as usual; and after backoffAfter consecutive failures its starts
// fail at once for a while instead of piling up again.
type admission struct {
	mu        sync.Mutex
	perTarget int
	targets   map[string]*targetStarts
}

// targetStarts is one target's start slots and failure record.
type targetStarts struct {
	key   string
	slots chan struct{} // a token per start in progress
	refs  int           // callers holding or waiting for a slot
	fails int           // consecutive failed starts
	until time.Time     // no start before this (backoff)
	last  error         // the last failure
}

const (
	backoffAfter = 3 // consecutive failures before a target backs off
	backoffFirst = time.Second
	backoffMax   = 30 * time.Second
	// sweepAbove is the number of remembered targets above which take
	// forgets those that failed long ago.
	sweepAbove = 256
)

// take waits, within ctx, for one of target's start slots.
func (a *admission) take(ctx context.Context, target string) (*targetStarts, error) {
	a.mu.Lock()
	ts := a.targets[target]
	if ts == nil {
		if len(a.targets) >= sweepAbove {
			a.sweep()
		}
		ts = &targetStarts{key: target, slots: make(chan struct{}, a.perTarget)}
		a.targets[target] = ts
	}
	if err := ts.backingOff(); err != nil {
		a.mu.Unlock()
		return nil, err
	}
	ts.refs++
	a.mu.Unlock()
	select {
	case ts.slots <- struct{}{}:
		// Starts that failed while this one waited may have begun a
		// backoff.
		a.mu.Lock()
		err := ts.backingOff()
		a.mu.Unlock()
		if err != nil {
			a.give(ts, nil)
			return nil, err
		}
		return ts, nil
	case <-ctx.Done():
		a.mu.Lock()
		a.unref(ts)
		a.mu.Unlock()
		return nil, errorf(syscall.ETIMEDOUT, "waiting for one of the target's %d start slots (max_starts_per_target): %v", a.perTarget, ctx.Err())
	}
}

// backingOff is the error for a start during the target's backoff, or
// nil. Called with mu held.
func (ts *targetStarts) backingOff() error {
	wait := time.Until(ts.until)
	if wait <= 0 {
		return nil
	}
	return errorf(syscall.EAGAIN, "not starting plugins in this target for %v: its last %d starts failed (the last: %v)",
		wait.Round(time.Millisecond), ts.fails, messageOf(ts.last))
}

// startResult is how a start went, for give: nil means no start was made,
// or its failure was not the target's doing (the caller gave up, the
// target died, the core closed).
type startResult struct{ err error }

func startOutcome(ctx context.Context, err error) *startResult {
	if err == nil {
		return &startResult{}
	}
	var ce *Error
	if ctx.Err() != nil || errors.Is(err, errClosed) || (errors.As(err, &ce) && ce.Errno == syscall.ESRCH) {
		return nil
	}
	return &startResult{err: err}
}

// give returns a slot taken with take, recording the start's result.
func (a *admission) give(ts *targetStarts, r *startResult) {
	<-ts.slots
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case r == nil:
	case r.err == nil:
		ts.fails, ts.until, ts.last = 0, time.Time{}, nil
	default:
		ts.fails++
		ts.last = r.err
		if n := ts.fails - backoffAfter; n >= 0 {
			wait := backoffMax
			if n < 5 {
				wait = min(backoffFirst<<n, backoffMax)
			}
			ts.until = time.Now().Add(wait)
		}
	}
	a.unref(ts)
}

// unref drops a caller's reference; a target with no callers and no
// failures is forgotten. Called with mu held.
func (a *admission) unref(ts *targetStarts) {
	ts.refs--
	if ts.refs == 0 && ts.fails == 0 && a.targets[ts.key] == ts {
		delete(a.targets, ts.key)
	}
}

// sweep forgets targets without callers whose backoff ended long ago.
// Called with mu held.
func (a *admission) sweep() {
	for k, ts := range a.targets {
		if ts.refs == 0 && time.Since(ts.until) > backoffMax {
			delete(a.targets, k)
		}
	}
}

func messageOf(err error) string {
	var ce *Error
	if errors.As(err, &ce) {
		return ce.Message
	}
	if err == nil {
		return "unknown"
	}
	return err.Error()
}

type admissionKeyInput struct{}

// admissionKey names the target for admission: its namespaces, all of
// them, so that every process of one container shares one record.
func (t *target) admissionKey() string {
	if k, ok := t.keys.Load(admissionKeyInput{}); ok {
		return k.(string)
	}
	var b strings.Builder
	for i, ns := range nsexec.Namespaces {
		fmt.Fprintf(&b, "%s:%d:%d/", ns.Name, t.ns[i].dev, t.ns[i].ino)
	}
	k := b.String()
	t.keys.Store(admissionKeyInput{}, k)
	return k
}
