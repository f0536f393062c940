package core

import (
	"context"
	"errors"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func errnoIs(err error, errno syscall.Errno) bool {
	var ce *Error
	return errors.As(err, &ce) && ce.Errno == errno
}

// admitted records the order in which tickets are admitted.
type admitted struct {
	mu    sync.Mutex
	order []string
	byTag map[string][]*startTicket
	errs  []error
}

// ready is a ticket's ready func that records it under tag.
func (r *admitted) ready(tag string) func(*startTicket, error) {
	return func(t *startTicket, err error) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if err != nil {
			r.errs = append(r.errs, err)
			return
		}
		if r.byTag == nil {
			r.byTag = make(map[string][]*startTicket)
		}
		r.order = append(r.order, tag)
		r.byTag[tag] = append(r.byTag[tag], t)
	}
}

// next pops the oldest admitted ticket (none: nil).
func (r *admitted) next() (string, *startTicket) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, tag := range r.order {
		if ts := r.byTag[tag]; len(ts) > 0 {
			r.byTag[tag] = ts[1:]
			return tag, ts[0]
		}
	}
	return "", nil
}

func mustEnqueue(t *testing.T, a *admission, target string, ready func(*startTicket, error)) *startTicket {
	t.Helper()
	tk, err := a.enqueue(target, "", ready)
	if err != nil {
		t.Fatalf("enqueue %s: %v", target, err)
	}
	return tk
}

// A target gets perTarget slots; the next caller waits until one is
// given back, or gives up with its context. Other targets are unaffected.
func TestAdmissionBoundsStartsPerTarget(t *testing.T) {
	a := newAdmission(2, 100, 100)
	ctx := context.Background()
	s1, err1 := a.take(ctx, "A", "")
	s2, err2 := a.take(ctx, "A", "")
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := a.take(short, "A", ""); !errnoIs(err, syscall.ETIMEDOUT) || !strings.Contains(err.Error(), "max_starts_per_target") {
		t.Fatalf("third slot of A: %v, want ETIMEDOUT naming max_starts_per_target", err)
	}
	if b, err := a.take(ctx, "B", ""); err != nil {
		t.Fatalf("B while A is full: %v", err)
	} else {
		a.give(b, &startResult{})
	}
	got := make(chan *startTicket)
	go func() {
		s, err := a.take(ctx, "A", "")
		if err != nil {
			t.Error(err)
		}
		got <- s
	}()
	a.give(s1, &startResult{})
	a.give(<-got, &startResult{})
	a.give(s2, &startResult{})
	if n := len(a.targets); n != 0 {
		t.Errorf("%d targets remembered after every slot came back without failures", n)
	}
}

// Waiting starts are admitted round-robin over targets, each target's in
// order: a target with many waiting starts gets one in turn with every
// other, so that a new target's first start is not stuck behind them.
func TestAdmissionServesTargetsRoundRobin(t *testing.T) {
	a := newAdmission(4, 1, 100) // one start at a time, over all targets
	var r admitted
	first := mustEnqueue(t, a, "X", r.ready("X"))
	for range 6 {
		mustEnqueue(t, a, "A", r.ready("A"))
	}
	mustEnqueue(t, a, "B", r.ready("B"))
	for range 2 {
		mustEnqueue(t, a, "C", r.ready("C"))
	}
	if _, tk := r.next(); tk != first {
		t.Fatalf("the first start was not admitted at once")
	}
	if a.queued != 9 {
		t.Fatalf("%d queued, want 9", a.queued)
	}
	a.give(first, &startResult{})
	for {
		_, tk := r.next()
		if tk == nil {
			break
		}
		a.give(tk, &startResult{})
	}
	if got, want := strings.Join(r.order, ""), "XABCACAAAA"; got != want {
		t.Errorf("admitted in the order %s, want %s", got, want)
	}
	if a.running != 0 || a.queued != 0 || len(a.targets) != 0 || a.turns.Len() != 0 {
		t.Errorf("left running %d, queued %d, targets %d, turns %d", a.running, a.queued, len(a.targets), a.turns.Len())
	}
}

// A target at its max_starts_per_target is passed over, not waited for:
// the next target in turn starts.
func TestAdmissionSkipsTargetsAtTheirBound(t *testing.T) {
	a := newAdmission(1, 2, 100)
	var r admitted
	a1 := mustEnqueue(t, a, "A", r.ready("A"))
	mustEnqueue(t, a, "A", r.ready("A")) // waits for A's one slot
	b1 := mustEnqueue(t, a, "B", r.ready("B"))
	mustEnqueue(t, a, "C", r.ready("C")) // waits for a global slot
	a.give(b1, &startResult{})           // C, not A (A is still at its bound)
	if got := strings.Join(r.order, ""); got != "ABC" {
		t.Fatalf("admitted %s, want ABC", got)
	}
	a.give(a1, &startResult{})
	if got := strings.Join(r.order, ""); got != "ABCA" {
		t.Fatalf("admitted %s, want ABCA", got)
	}
}

// A full queue fails at once with EAGAIN naming its bound; a caller that
// gives up leaves the queue with ETIMEDOUT naming what it waited for, and
// is never admitted.
func TestAdmissionQueueBoundAndDeadline(t *testing.T) {
	a := newAdmission(4, 1, 2)
	var r admitted
	running := mustEnqueue(t, a, "A", r.ready("A"))
	mustEnqueue(t, a, "B", r.ready("B"))
	short, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, err := a.take(short, "C", "") // the second place in the queue
	if !errnoIs(err, syscall.ETIMEDOUT) || !strings.Contains(err.Error(), "a cold start slot: 1 starts running (max_starts)") {
		t.Fatalf("take behind a full max_starts: %v, want ETIMEDOUT naming max_starts", err)
	}
	mustEnqueue(t, a, "D", r.ready("D"))
	_, err = a.enqueue("E", "", r.ready("E"))
	if !errnoIs(err, syscall.EAGAIN) || !strings.Contains(err.Error(), "2 cold starts wait (max_queued_starts)") {
		t.Fatalf("enqueue on a full queue: %v, want EAGAIN naming max_queued_starts", err)
	}
	a.give(running, &startResult{})
	_, b := r.next()
	_, b = r.next()
	a.give(b, &startResult{})
	_, d := r.next()
	a.give(d, &startResult{})
	if got := strings.Join(r.order, ""); got != "ABD" {
		t.Errorf("admitted %s, want ABD (C gave up, E was refused)", got)
	}
	if a.running != 0 || a.queued != 0 || len(a.targets) != 0 {
		t.Errorf("left running %d, queued %d, targets %d", a.running, a.queued, len(a.targets))
	}
}

// backoffAfter consecutive failures make the next starts fail at once
// with EAGAIN, and those already waiting too; neutral outcomes do not
// count; a success resets.
func TestAdmissionBacksOffAfterFailures(t *testing.T) {
	a := newAdmission(1, 100, 100)
	ctx := context.Background()
	fail := &startResult{err: errorf(syscall.EIO, "start timed out")}
	for i := range backoffAfter - 1 {
		s, err := a.take(ctx, "A", "")
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		a.give(s, fail)
	}
	s, _ := a.take(ctx, "A", "")
	a.give(s, nil) // not the target's failure
	s, err := a.take(ctx, "A", "")
	if err != nil {
		t.Fatalf("after %d failures and a neutral start: %v", backoffAfter-1, err)
	}
	var r admitted
	mustEnqueue(t, a, "A", r.ready("A")) // waits for A's one slot
	a.give(s, fail)
	if len(r.errs) != 1 || !errnoIs(r.errs[0], syscall.EAGAIN) || len(r.order) != 0 {
		t.Fatalf("a start waiting as the backoff began: admitted %v, errors %v; want it refused with EAGAIN", r.order, r.errs)
	}
	_, err = a.take(ctx, "A", "")
	if !errnoIs(err, syscall.EAGAIN) {
		t.Fatalf("after %d failures: %v, want EAGAIN", backoffAfter, err)
	}
	var ce *Error
	errors.As(err, &ce)
	if want := "its last 3 starts failed (the last: start timed out)"; !strings.Contains(ce.Message, want) {
		t.Errorf("backoff error %q does not say %q", ce.Message, want)
	}
	// The backoff ends: the next start is let through, and a success
	// forgets the failures.
	a.mu.Lock()
	a.targets["A"].until = time.Now().Add(-time.Millisecond)
	a.mu.Unlock()
	s, err = a.take(ctx, "A", "")
	if err != nil {
		t.Fatalf("after the backoff: %v", err)
	}
	a.give(s, &startResult{})
	if n := len(a.targets); n != 0 {
		t.Errorf("a success left %d targets remembered", n)
	}
}

// A ticket marked started (a oneshot request now serving) gives its share
// of max_starts back at once, and keeps its target's slot until give.
func TestAdmissionStartedFreesTheGlobalSlot(t *testing.T) {
	a := newAdmission(1, 1, 100)
	var r admitted
	serving := mustEnqueue(t, a, "A", r.ready("A"))
	mustEnqueue(t, a, "A", r.ready("A")) // waits for A's one slot
	mustEnqueue(t, a, "B", r.ready("B")) // waits for the one start slot
	a.started(serving)
	if got := strings.Join(r.order, ""); got != "AB" {
		t.Fatalf("admitted %s once A's start serves, want AB (B starts, A's second waits)", got)
	}
	_, b := r.next()
	_, b = r.next()
	a.give(b, &startResult{})
	if got := strings.Join(r.order, ""); got != "AB" {
		t.Fatalf("admitted %s while A's first still serves, want AB", got)
	}
	a.give(serving, &startResult{})
	if got := strings.Join(r.order, ""); got != "ABA" {
		t.Fatalf("admitted %s once A's first is given back, want ABA", got)
	}
}

// The starts of one account hold at most half of max_starts, whatever
// targets they are for, so that starts a user's own targets make hang
// cannot hold every slot: others are admitted past the user's waiting
// ones, which run as the user's own starts end.
func TestAdmissionBoundsOneAccountToHalfTheSlots(t *testing.T) {
	a := newAdmission(4, 4, 100)
	var r admitted
	var users []*startTicket
	for _, target := range []string{"U1", "U2", "U3", "U4"} {
		tk, err := a.enqueue(target, "uid 1000", r.ready(target))
		if err != nil {
			t.Fatal(err)
		}
		users = append(users, tk)
	}
	if got := strings.Join(r.order, ","); got != "U1,U2" {
		t.Fatalf("admitted %s, want U1,U2: half of 4 slots", got)
	}
	if why := a.why(users[2]); !strings.Contains(why, "uid 1000 runs 2 starts, the most one caller may (half of max_starts 4)") {
		t.Errorf("U3 waits for %q", why)
	}
	mustEnqueue(t, a, "R", r.ready("R")) // charged to nobody: a free slot
	o1, err := a.enqueue("O", "uid 2000", r.ready("O"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.order, ","); got != "U1,U2,R,O" {
		t.Fatalf("admitted %s, want U1,U2,R,O", got)
	}
	a.give(o1, &startResult{}) // a slot, but uid 1000 still runs its half
	if got := strings.Join(r.order, ","); got != "U1,U2,R,O" {
		t.Fatalf("after O: admitted %s, want no more of uid 1000's", got)
	}
	a.give(users[0], &startResult{})
	if got := strings.Join(r.order, ","); got != "U1,U2,R,O,U3" {
		t.Fatalf("after U1: admitted %s, want U3 next", got)
	}
	// A oneshot start that serves gives its account's share back too.
	a.started(users[1])
	if got := strings.Join(r.order, ","); got != "U1,U2,R,O,U3,U4" {
		t.Fatalf("after U2 started: admitted %s, want U4", got)
	}
}
