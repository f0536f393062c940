package core

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nsplug/nsplug/nsexec/boot"
)

// admission decides when a cold start may run. Two things bound starts:
//
//   - A target controls what its plugin starts meet: it can make them hang
//     until start_timeout or fail. So each target (one set of namespaces)
//     runs at most perTarget starts at a time (max_starts_per_target),
//     holding no more of max_instances than that while others start as
//     usual, and after backoffAfter consecutive failures its starts fail at
//     once for a while instead of piling up again. A caller charged to an
//     Account has a record of its own in each target (recordKey): its
//     failures are not everyone's.
//   - A start is mostly CPU (exec, runtime and package init, page faults):
//     more of them at once than the machine runs only makes each one
//     slower, and every first request behind them later. So all targets
//     together run at most limit starts at a time (max_starts), and the
//     starts charged to one Account at most half of them (at least one):
//     starts that a user's own targets make hang until start_timeout
//     cannot hold every slot, so everyone else's always find some.
//
// Starts beyond either bound wait in the start queue, at most maxQueued of
// them (max_queued_starts; one more fails at once with EAGAIN), and are
// admitted round-robin over targets, each target's in the order they came:
// a target with many waiting starts gets one start in turn with every
// other, so that a storm of one target's starts cannot starve another
// target's first request. Nobody waits beyond their deadline: a ticket
// whose caller gives up leaves the queue (cancel).
type admission struct {
	mu        sync.Mutex
	perTarget int
	limit     int
	maxQueued int
	running   int // admitted starts not yet given back
	// perAccount bounds the admitted starts of one account (half of
	// limit); accounts counts them, by account name.
	perAccount int
	accounts   map[string]int
	queued     int // tickets waiting
	// turns holds the targets with waiting tickets, the next to be served
	// first: a target that was served goes to the back.
	turns   list.List
	targets map[string]*targetStarts
}

// targetStarts is one target's starts and failure record.
type targetStarts struct {
	key     string
	account string // the Account its starts are charged to; "" for none
	running int
	waiting []*startTicket // in the order they came
	turn    *list.Element  // its place in admission.turns while waiting is not empty
	refs    int            // tickets waiting or running
	fails   int            // consecutive failed starts
	until   time.Time      // no start before this (backoff)
	last    error          // the last failure
}

// startTicket is one start's place in the queue.
type startTicket struct {
	ts    *targetStarts
	state ticketState
	// local: running, no longer counted against limit (see started).
	local bool
	// ready is called once, with a.mu not held, when the ticket is
	// admitted (nil) or refused (its target began a backoff while it
	// waited). It must not block.
	ready func(*startTicket, error)
}

type ticketState uint8

const (
	ticketQueued ticketState = iota
	ticketRunning
	ticketDone // given back, cancelled or refused
)

const (
	backoffAfter = 3 // consecutive failures before a target backs off
	backoffFirst = time.Second
	backoffMax   = 30 * time.Second
	// sweepAbove is the number of remembered targets above which enqueue
	// forgets those that failed long ago.
	sweepAbove = 256
)

func newAdmission(perTarget, limit, maxQueued int) *admission {
	return &admission{perTarget: perTarget, limit: limit, maxQueued: maxQueued, targets: make(map[string]*targetStarts),
		perAccount: max(1, limit/2), accounts: make(map[string]int)}
}

// fits reports whether ts may start one more now. Called with mu held.
func (a *admission) fits(ts *targetStarts) bool {
	return ts.running < a.perTarget && a.running < a.limit && (ts.account == "" || a.accounts[ts.account] < a.perAccount)
}

// enqueue asks for a start in target, charged to account ("" for none):
// ready is called once it may run, at once (before enqueue returns) when
// there is room. A target backing off, or a full queue, is EAGAIN.
func (a *admission) enqueue(target, account string, ready func(*startTicket, error)) (*startTicket, error) {
	target = recordKey(target, account)
	a.mu.Lock()
	ts := a.targets[target]
	if ts == nil {
		if len(a.targets) >= sweepAbove {
			a.sweep()
		}
		ts = &targetStarts{key: target, account: account}
		a.targets[target] = ts
	}
	if err := ts.backingOff(); err != nil {
		a.mu.Unlock()
		return nil, err
	}
	t := &startTicket{ts: ts, ready: ready}
	// Room now means nobody waits who could use it (dispatch admits
	// whatever fits whenever a start ends): taking it jumps no queue.
	if a.fits(ts) {
		ts.refs++
		a.admit(t)
		a.mu.Unlock()
		ready(t, nil)
		return t, nil
	}
	if a.queued >= a.maxQueued {
		if ts.refs == 0 && ts.fails == 0 {
			delete(a.targets, target) // made for this start
		}
		a.mu.Unlock()
		return nil, errorf(syscall.EAGAIN, "the start queue is full: %d cold starts wait (max_queued_starts) behind %d running (max_starts %d)",
			a.maxQueued, a.running, a.limit)
	}
	ts.refs++
	ts.waiting = append(ts.waiting, t)
	a.queued++
	if ts.turn == nil {
		ts.turn = a.turns.PushBack(ts)
	}
	a.mu.Unlock()
	return t, nil
}

// admit marks t running. Called with mu held.
func (a *admission) admit(t *startTicket) {
	t.state = ticketRunning
	t.ts.running++
	a.running++
	if t.ts.account != "" {
		a.accounts[t.ts.account]++
	}
}

// unaccount gives back t's share of its account's starts. Called with mu
// held.
func (a *admission) unaccount(t *startTicket) {
	if name := t.ts.account; name != "" {
		if a.accounts[name]--; a.accounts[name] <= 0 {
			delete(a.accounts, name)
		}
	}
}

// take waits, within ctx, for a start in target: enqueue for a caller
// that waits itself.
func (a *admission) take(ctx context.Context, target, account string) (*startTicket, error) {
	ready := make(chan error, 1)
	t, err := a.enqueue(target, account, func(_ *startTicket, err error) { ready <- err })
	if err != nil {
		return nil, err
	}
	select {
	case err := <-ready:
		if err != nil {
			return nil, err
		}
		return t, nil
	case <-ctx.Done():
		why, cancelled := a.cancel(t)
		if !cancelled { // admitted or refused meanwhile
			if err := <-ready; err == nil {
				a.give(t, nil)
			}
		}
		return nil, errorf(syscall.ETIMEDOUT, "waiting for %s: %v", why, ctx.Err())
	}
}

// cancel takes a waiting ticket out of the queue. It says what the
// ticket was waiting for, and false when it was not waiting any more
// (admitted or refused: ready has been or is being called).
func (a *admission) cancel(t *startTicket) (why string, cancelled bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	why = a.waitingFor(t)
	if t.state != ticketQueued {
		return why, false
	}
	ts := t.ts
	ts.waiting = slices.DeleteFunc(ts.waiting, func(w *startTicket) bool { return w == t })
	a.queued--
	if len(ts.waiting) == 0 {
		a.turns.Remove(ts.turn)
		ts.turn = nil
	}
	t.state = ticketDone
	a.unref(ts)
	return why, true
}

// why names what a ticket's start waits for.
func (a *admission) why(t *startTicket) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.waitingFor(t)
}

// waitingFor names what a ticket's start waits for. Called with mu held.
func (a *admission) waitingFor(t *startTicket) string {
	if t.state != ticketQueued {
		return "a plugin instance to start"
	}
	if t.ts.running >= a.perTarget {
		return fmt.Sprintf("one of the target's %d start slots (max_starts_per_target)", a.perTarget)
	}
	if name := t.ts.account; name != "" && a.accounts[name] >= a.perAccount {
		return fmt.Sprintf("a cold start slot: %s runs %d starts, the most one caller may (half of max_starts %d)", name, a.accounts[name], a.limit)
	}
	return fmt.Sprintf("a cold start slot: %d starts running (max_starts), %d waiting", a.running, a.queued)
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
// or its failure was not the target's doing (the target died, the core
// closed, the caller of a oneshot request gave up).
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

// started stops counting a running ticket against limit, keeping its
// place among its target's starts until give: for a oneshot request,
// whose process has started and now serves, holding its target's slot
// for as long (a request that breaks it is a failed start) but no start
// slot of other targets'.
func (a *admission) started(t *startTicket) {
	a.mu.Lock()
	if t.state != ticketRunning || t.local {
		a.mu.Unlock()
		return
	}
	t.local = true
	a.running--
	a.unaccount(t)
	admitted := a.dispatch()
	a.mu.Unlock()
	for _, w := range admitted {
		w.ready(w, nil)
	}
}

// give returns an admitted ticket, recording the start's result, and
// admits what waits in the room it leaves.
func (a *admission) give(t *startTicket, r *startResult) {
	a.mu.Lock()
	if t.state != ticketRunning {
		a.mu.Unlock()
		panic("admission: give of a ticket not running")
	}
	t.state = ticketDone
	ts := t.ts
	ts.running--
	if !t.local {
		a.running--
		a.unaccount(t)
	}
	var refused []*startTicket
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
			// What waits would only fail when admitted: fail it now.
			refused = ts.waiting
			ts.waiting = nil
			a.queued -= len(refused)
			if ts.turn != nil {
				a.turns.Remove(ts.turn)
				ts.turn = nil
			}
		}
	}
	backoff := ts.backingOff()
	for _, w := range refused {
		w.state = ticketDone
		a.unref(ts)
	}
	a.unref(ts)
	admitted := a.dispatch()
	a.mu.Unlock()
	for _, w := range refused {
		w.ready(w, backoff)
	}
	for _, w := range admitted {
		w.ready(w, nil)
	}
}

// dispatch admits waiting tickets while there is room: the first target
// in turn that may start one more gets its oldest ticket admitted and
// goes to the back. Called with mu held; the caller calls the tickets'
// ready once it has let go of mu.
func (a *admission) dispatch() []*startTicket {
	var admitted []*startTicket
	for a.running < a.limit {
		e := a.turns.Front()
		for e != nil && !a.fits(e.Value.(*targetStarts)) {
			e = e.Next()
		}
		if e == nil {
			break
		}
		ts := e.Value.(*targetStarts)
		t := ts.waiting[0]
		ts.waiting[0] = nil
		ts.waiting = ts.waiting[1:]
		a.queued--
		a.admit(t)
		admitted = append(admitted, t)
		if len(ts.waiting) == 0 {
			a.turns.Remove(e)
			ts.turn = nil
		} else {
			a.turns.MoveToBack(e)
		}
	}
	return admitted
}

// unref drops a ticket's reference; a target with no tickets and no
// failures is forgotten. Called with mu held.
func (a *admission) unref(ts *targetStarts) {
	ts.refs--
	if ts.refs == 0 && ts.fails == 0 && a.targets[ts.key] == ts {
		delete(a.targets, ts.key)
	}
}

// sweep forgets targets without tickets whose backoff ended long ago.
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
	for i, ns := range boot.Namespaces {
		fmt.Fprintf(&b, "%s:%d:%d/", ns.Name, t.ns[i].dev, t.ns[i].ino)
	}
	k := b.String()
	t.keys.Store(admissionKeyInput{}, k)
	return k
}

// recordKey names whose starts in target share one record (its bound on
// starts at once, its failures and backoff): the target's for starts
// charged to nobody, and the target's and the account's for others. A
// start can fail for what its request asked (a working directory that
// does not exist, credentials the target does not map), so one caller's
// failures must not make a target refuse everyone else's starts. Made
// only for a start (enqueue), not for a warm request.
func recordKey(target, account string) string {
	if account == "" {
		return target
	}
	return target + "account:" + account
}
