package core

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nsplug/nsplug/config"
)

// The pool's unit tests drive acquire, release and close with fake starts:
// instances without a process, whose kill (pool.stop) is recorded. They
// synchronise on channels and on the moment a caller first asks its
// context for Done (see watchCtx), never on sleeps.

// fakePool is a pool whose instances are fakes.
type fakePool struct {
	*pool
	t      *testing.T
	starts atomic.Int32
	// held counts the starts the pool made (hold), ended those it ran or
	// dropped.
	held, ended atomic.Int32

	killMu sync.Mutex
	killed []*instance // in the order the pool killed them
}

func newFakePool(t *testing.T, max, startsPerTarget int) *fakePool {
	// No global bound on starts: the tests of admission's own bounds
	// use their own.
	fp := &fakePool{pool: newPool(max, newAdmission(startsPerTarget, 1<<20, 1<<20)), t: t}
	fp.stop = func(inst *instance, abrupt bool) {
		fp.killMu.Lock()
		defer fp.killMu.Unlock()
		for _, k := range fp.killed {
			if k == inst {
				t.Errorf("instance %s killed twice", inst.plugin.name)
			}
		}
		fp.killed = append(fp.killed, inst)
	}
	t.Cleanup(func() {
		closed := make(chan struct{})
		go func() { fp.close(); close(closed) }()
		waitFor(t, closed, "close")
		if h, e := fp.held.Load(), fp.ended.Load(); h != e {
			t.Errorf("%d starts held, %d of them started or dropped: the pool must end each exactly once", h, e)
		}
	})
	return fp
}

// fakeInstance is an instance with no process, named name, whose idle
// timeout is idle.
func fakeInstance(name string, idle time.Duration) *instance {
	e := &pluginEntry{name: name, settings: config.Settings{IdleTimeout: config.Duration{Duration: idle}}}
	return &instance{plugin: e, gone: make(chan struct{})}
}

// start returns a start func that counts itself, then waits for gate
// (when not nil) and returns inst or err. With neither, no start is
// expected: it fails.
func (fp *fakePool) start(inst *instance, err error, gate <-chan struct{}) hold {
	return fp.hold(fp.startFn(inst, err, gate))
}

// hold makes a hold of start that counts what the pool does with it.
func (fp *fakePool) hold(start startFunc) hold {
	return func() (startFunc, func()) {
		fp.held.Add(1)
		var once atomic.Bool
		end := func() {
			if once.Swap(true) {
				fp.t.Error("a held start was started or dropped twice")
			}
			fp.ended.Add(1)
		}
		return func() (*instance, error) { end(); return start() }, end
	}
}

// startFn is the start func of start.
func (fp *fakePool) startFn(inst *instance, err error, gate <-chan struct{}) startFunc {
	if inst == nil && err == nil {
		err = errorf(syscall.EIO, "unexpected start")
	}
	return func() (*instance, error) {
		fp.starts.Add(1)
		if gate != nil {
			<-gate
		}
		return inst, err
	}
}

func (fp *fakePool) killedNames() []string {
	fp.killMu.Lock()
	defer fp.killMu.Unlock()
	var names []string
	for _, k := range fp.killed {
		names = append(names, k.plugin.name)
	}
	return names
}

// acquireNow acquires key on target "T" with a start that returns inst at
// once, failing the test on error.
func (fp *fakePool) acquireNow(key string, inst *instance) *instance {
	fp.t.Helper()
	got, err := fp.acquire(context.Background(), key, "T", nil, fp.start(inst, nil, nil))
	if err != nil {
		fp.t.Fatalf("acquire %s: %v", key, err)
	}
	return got
}

// watchCtx is a context that reports, by closing asked, the first time
// its Done is called: a caller of acquire does so where it blocks (in the
// select that waits for a shared start or a start slot).
type watchCtx struct {
	context.Context
	once  sync.Once
	asked chan struct{}
}

func newWatchCtx(parent context.Context) *watchCtx {
	return &watchCtx{Context: parent, asked: make(chan struct{})}
}

func (c *watchCtx) Done() <-chan struct{} {
	c.once.Do(func() { close(c.asked) })
	return c.Context.Done()
}

// waitFor waits for ch to close, failing the test after a while instead of
// hanging it (the time-out is a safety net, not synchronisation).
func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("still waiting for %s after 10s", what)
	}
}

// result waits for an acquire started by goAcquire, as waitFor does.
func result(t *testing.T, ch <-chan acquired) acquired {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("acquire has not returned after 10s")
		return acquired{}
	}
}

type acquired struct {
	inst *instance
	err  error
}

// goAcquire runs acquire in a goroutine; its result arrives on the channel.
func (fp *fakePool) goAcquire(ctx context.Context, key, target string, start hold) <-chan acquired {
	ch := make(chan acquired, 1)
	go func() {
		inst, err := fp.acquire(ctx, key, target, nil, start)
		ch <- acquired{inst, err}
	}()
	return ch
}

// startedShared begins a cold start of key that waits for gate, and
// returns once the start func runs (the start is then registered, so
// that later callers of key share it).
func (fp *fakePool) startedShared(key string, inst *instance, gate <-chan struct{}) <-chan acquired {
	fp.t.Helper()
	running := make(chan struct{})
	start := fp.startFn(inst, nil, gate)
	ch := fp.goAcquire(context.Background(), key, "T", fp.hold(func() (*instance, error) {
		close(running)
		return start()
	}))
	waitFor(fp.t, running, "the start to run")
	return ch
}

// wantShared checks that every caller got inst, and that inst counts them
// all as in flight.
func (fp *fakePool) wantShared(inst *instance, callers ...<-chan acquired) {
	fp.t.Helper()
	for i, ch := range callers {
		if r := result(fp.t, ch); r.err != nil || r.inst != inst {
			fp.t.Fatalf("caller %d: %v, %v; want the shared instance", i, r.inst, r.err)
		}
	}
	fp.pool.mu.Lock()
	defer fp.pool.mu.Unlock()
	if inst.inflight != len(callers) {
		fp.t.Errorf("inflight %d, want %d", inst.inflight, len(callers))
	}
}

// Concurrent callers of one key share one start: it runs once and every
// caller gets its instance.
func TestPoolSharesOneColdStart(t *testing.T) {
	fp := newFakePool(t, 16, 8) // room for 8 starts, were they not shared
	inst := fakeInstance("a", time.Hour)
	gate := make(chan struct{})
	first := fp.startedShared("k", inst, gate)
	var waiters []<-chan acquired
	for range 7 {
		ctx := newWatchCtx(context.Background())
		waiters = append(waiters, fp.goAcquire(ctx, "k", "T", fp.start(fakeInstance("other", time.Hour), nil, nil)))
		waitFor(t, ctx.asked, "a caller to block") // it waits for the shared start
	}
	close(gate)
	fp.wantShared(inst, append(waiters, first)...)
	if n := fp.starts.Load(); n != 1 {
		t.Errorf("%d starts for 8 concurrent callers of one key, want 1", n)
	}
}

// A failed shared start fails every caller waiting for it with its error,
// and is not remembered: the next caller starts afresh.
func TestPoolSharedStartFailureFailsAllWaiters(t *testing.T) {
	fp := newFakePool(t, 4, 1)
	boom := errorf(syscall.EIO, "starting plugin a: boom")
	gate := make(chan struct{})
	running := make(chan struct{})
	first := fp.goAcquire(context.Background(), "k", "T", fp.hold(func() (*instance, error) {
		close(running)
		return fp.startFn(nil, boom, gate)()
	}))
	waitFor(t, running, "the start to run")
	var waiters []<-chan acquired
	for range 5 {
		ctx := newWatchCtx(context.Background())
		waiters = append(waiters, fp.goAcquire(ctx, "k", "T", fp.start(fakeInstance("other", time.Hour), nil, nil)))
		waitFor(t, ctx.asked, "a caller to block")
	}
	close(gate)
	for i, ch := range append(waiters, first) {
		if r := result(t, ch); r.err != boom || r.inst != nil {
			t.Errorf("caller %d: %v, %v; want the start's error %v", i, r.inst, r.err, boom)
		}
	}
	if n := fp.starts.Load(); n != 1 {
		t.Errorf("%d starts, want 1", n)
	}
	inst := fakeInstance("a", time.Hour)
	if got := fp.acquireNow("k", inst); got != inst {
		t.Errorf("after a failed start: %v, want a fresh start", got)
	}
}

// max_instances caps live instances: with every instance busy a cold start
// is EAGAIN; with an idle one, the least recently used idle instance is
// killed to make room, and the others stay warm.
func TestPoolCapEvictsLeastRecentlyUsed(t *testing.T) {
	fp := newFakePool(t, 2, 4)
	a, b := fakeInstance("a", time.Hour), fakeInstance("b", time.Hour)
	fp.release(fp.acquireNow("a", a), false)
	fp.release(fp.acquireNow("b", b), false)
	// Using a again makes b the least recently used.
	if got := fp.acquireNow("a", nil); got != a {
		t.Fatalf("warm a: got %v", got)
	}
	fp.release(a, false)

	c := fakeInstance("c", time.Hour)
	if got := fp.acquireNow("c", c); got != c {
		t.Fatalf("c: got %v", got)
	}
	waitFor(t, b.gone, "b to be killed")
	if got := fp.killedNames(); len(got) != 1 || got[0] != "b" {
		t.Fatalf("killed %v to make room, want [b]", got)
	}
	if got := fp.acquireNow("a", nil); got != a {
		t.Fatalf("a after the eviction: got %v, want it still warm", got)
	}
	// a and c are busy: no room.
	_, err := fp.acquire(context.Background(), "d", "T", nil, fp.start(fakeInstance("d", time.Hour), nil, nil))
	if !errnoIs(err, syscall.EAGAIN) || !strings.Contains(err.Error(), "all 2 plugin instances are busy (max_instances)") {
		t.Fatalf("cold start with every instance busy: %v, want EAGAIN naming max_instances", err)
	}
	if n := fp.starts.Load(); n != 3 {
		t.Errorf("%d starts, want 3 (a, b, c)", n)
	}
	// A start in progress counts against the cap too.
	fp.release(c, false)
	gate := make(chan struct{})
	e := fakeInstance("e", time.Hour)
	pending := fp.startedShared("e", e, gate) // evicts c, the only idle one
	waitFor(t, c.gone, "c to be killed")
	_, err = fp.acquire(context.Background(), "f", "T", nil, fp.start(fakeInstance("f", time.Hour), nil, nil))
	if !errnoIs(err, syscall.EAGAIN) {
		t.Errorf("cold start while a busy and e starting: %v, want EAGAIN", err)
	}
	close(gate)
	if r := result(t, pending); r.inst != e {
		t.Fatalf("e: %v", r.err)
	}
	if got := fp.killedNames(); strings.Join(got, ",") != "b,c" {
		t.Errorf("killed %v, want [b c]", got)
	}
}

// An idle instance is killed once its idle timeout passes and a later
// caller starts a new one; one in use, or used again since, is not.
func TestPoolIdleExpiry(t *testing.T) {
	fp := newFakePool(t, 4, 4)
	short := fakeInstance("short", time.Millisecond)
	fp.release(fp.acquireNow("s", short), false)
	waitFor(t, short.gone, "short to be killed") // the idle timer killed it
	again := fakeInstance("short2", time.Hour)
	if got := fp.acquireNow("s", again); got != again {
		t.Fatalf("after expiry: got %v, want a new start", got)
	}

	// A timer that fires for an instance in use, or used after it was
	// set, leaves it alone.
	long := fakeInstance("long", time.Hour)
	fp.acquireNow("l", long)
	fp.expire(long)
	fp.release(long, false)
	fp.expire(long)
	fp.pool.mu.Lock()
	killed := long.killed
	fp.pool.mu.Unlock()
	if killed {
		t.Fatal("expire killed an instance in use, or before its idle timeout")
	}
}

// close waits for a start in progress; the instance it started is
// killed, and every caller waiting for it, and every later caller, gets
// ESHUTDOWN.
func TestPoolCloseWhileStarting(t *testing.T) {
	fp := newFakePool(t, 4, 4)
	inst := fakeInstance("a", time.Hour)
	gate := make(chan struct{})
	first := fp.startedShared("k", inst, gate)
	ctx := newWatchCtx(context.Background())
	sharer := fp.goAcquire(ctx, "k", "T", fp.start(nil, nil, nil))
	waitFor(t, ctx.asked, "a caller to block")

	closed := make(chan struct{})
	go func() { fp.close(); close(closed) }()
	for {
		fp.pool.mu.Lock()
		c := fp.closed
		fp.pool.mu.Unlock()
		if c {
			break
		}
		select {
		case <-closed:
			t.Fatal("close returned while a start was in progress")
		default:
			runtime.Gosched() // close sets closed first thing
		}
	}
	_, err := fp.acquire(context.Background(), "other", "T", nil, fp.start(fakeInstance("x", time.Hour), nil, nil))
	if !errnoIs(err, syscall.ESHUTDOWN) {
		t.Errorf("acquire while closing: %v, want ESHUTDOWN", err)
	}
	select {
	case <-closed:
		t.Fatal("close returned while a start was in progress")
	default:
	}
	close(gate)
	waitFor(t, closed, "close to return")
	if !isClosed(inst.gone) {
		t.Error("close returned before the instance it waited for was killed")
	}
	for i, ch := range []<-chan acquired{first, sharer} {
		if r := result(t, ch); !errnoIs(r.err, syscall.ESHUTDOWN) {
			t.Errorf("caller %d of the start: %v, %v; want ESHUTDOWN", i, r.inst, r.err)
		}
	}
	if _, err := fp.acquire(context.Background(), "k", "T", nil, fp.start(nil, nil, nil)); !errnoIs(err, syscall.ESHUTDOWN) {
		t.Errorf("acquire after close: %v, want ESHUTDOWN", err)
	}
	if n := fp.starts.Load(); n != 1 {
		t.Errorf("%d starts, want 1", n)
	}
	if got := fp.killedNames(); len(got) != 1 {
		t.Errorf("killed %v, want [a] once", got)
	}
}

// A caller whose context ends while it waits for a shared start gets
// ETIMEDOUT; the start goes on for the others.
func TestPoolWaiterGivesUpWhileStartGoesOn(t *testing.T) {
	fp := newFakePool(t, 4, 4)
	inst := fakeInstance("a", time.Hour)
	gate := make(chan struct{})
	first := fp.startedShared("k", inst, gate)
	cctx, cancel := context.WithCancel(context.Background())
	impatient := newWatchCtx(cctx)
	quitter := fp.goAcquire(impatient, "k", "T", fp.start(nil, nil, nil))
	patient := newWatchCtx(context.Background())
	stayer := fp.goAcquire(patient, "k", "T", fp.start(nil, nil, nil))
	waitFor(t, impatient.asked, "a caller to block")
	waitFor(t, patient.asked, "a caller to block")
	cancel()
	if r := result(t, quitter); !errnoIs(r.err, syscall.ETIMEDOUT) || !strings.Contains(r.err.Error(), "waiting for a plugin instance to start") {
		t.Fatalf("caller whose context ended: %v, %v; want ETIMEDOUT", r.inst, r.err)
	}
	close(gate)
	fp.wantShared(inst, first, stayer) // the caller that gave up holds none
}

// A target's start slots (max_starts_per_target) bound its concurrent
// cold starts across keys, while other targets start as usual; repeated
// failures make its starts fail at once, without calling start.
func TestPoolStartSlotsBoundColdStartsPerTarget(t *testing.T) {
	fp := newFakePool(t, 10, 2)
	gate := make(chan struct{})
	var running []chan struct{}
	var calls []<-chan acquired
	for _, key := range []string{"k1", "k2"} {
		r := make(chan struct{})
		running = append(running, r)
		start := fp.startFn(fakeInstance(key, time.Hour), nil, gate)
		calls = append(calls, fp.goAcquire(context.Background(), key, "T", fp.hold(func() (*instance, error) {
			close(r)
			return start()
		})))
	}
	for _, r := range running {
		waitFor(t, r, "a start to run")
	}
	// T's two slots are taken: a third key of T waits for one.
	cctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctx := newWatchCtx(cctx)
	third := fp.goAcquire(ctx, "k3", "T", fp.start(fakeInstance("k3", time.Hour), nil, nil))
	waitFor(t, ctx.asked, "a caller to block")
	// Another target is not held up.
	u := fakeInstance("u", time.Hour)
	if got, err := fp.acquire(context.Background(), "ku", "U", nil, fp.start(u, nil, nil)); got != u || err != nil {
		t.Fatalf("target U while T's slots are taken: %v, %v", got, err)
	}
	cancel()
	if r := result(t, third); !errnoIs(r.err, syscall.ETIMEDOUT) || !strings.Contains(r.err.Error(), "start slots (max_starts_per_target)") {
		t.Fatalf("third start of T: %v, %v; want ETIMEDOUT naming max_starts_per_target", r.inst, r.err)
	}
	if n := fp.starts.Load(); n != 3 {
		t.Fatalf("%d starts, want 3: k1, k2 of T and ku of U, not k3", n)
	}
	close(gate)
	for _, ch := range calls {
		if r := result(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
	// The slots are back: k3 starts now.
	k3 := fakeInstance("k3", time.Hour)
	if got := fp.acquireNow("k3", k3); got != k3 {
		t.Fatalf("k3 once T's slots are back: %v", got)
	}

	// After backoffAfter failed starts, T's starts fail at once.
	fail := errorf(syscall.EIO, "start timed out")
	for i := range backoffAfter {
		if _, err := fp.acquire(context.Background(), "bad", "T", nil, fp.start(nil, fail, nil)); err != fail {
			t.Fatalf("failing start %d: %v", i, err)
		}
	}
	before := fp.starts.Load()
	_, err := fp.acquire(context.Background(), "bad", "T", nil, fp.start(nil, fail, nil))
	if !errnoIs(err, syscall.EAGAIN) || !strings.Contains(err.Error(), "start timed out") {
		t.Fatalf("start after %d failures: %v, want EAGAIN with the last failure", backoffAfter, err)
	}
	if fp.starts.Load() != before {
		t.Error("a start was made during the backoff")
	}
	if got := fp.acquireNow("k1", nil); got == nil || got.plugin.name != "k1" {
		t.Errorf("a warm instance of T during its backoff: %v", got)
	}
	if _, err := fp.acquire(context.Background(), "ku2", "U", nil, fp.start(fakeInstance("u2", time.Hour), nil, nil)); err != nil {
		t.Errorf("target U during T's backoff: %v", err)
	}
}

// A caller's deadline holds while the start it asked for runs: it gets
// ETIMEDOUT then, and the start goes on without it, ending in a warm
// instance for the next caller.
func TestPoolColdStartKeepsTheDeadline(t *testing.T) {
	fp := newFakePool(t, 4, 4)
	inst := fakeInstance("a", time.Hour)
	gate := make(chan struct{})
	running := make(chan struct{})
	start := fp.startFn(inst, nil, gate)
	cctx, cancel := context.WithCancel(context.Background())
	ctx := newWatchCtx(cctx)
	first := fp.goAcquire(ctx, "k", "T", fp.hold(func() (*instance, error) {
		close(running)
		return start()
	}))
	waitFor(t, running, "the start to run")
	waitFor(t, ctx.asked, "the caller to block")
	cancel() // its deadline, while the start hangs
	if r := result(t, first); !errnoIs(r.err, syscall.ETIMEDOUT) || !strings.Contains(r.err.Error(), "waiting for a plugin instance to start") {
		t.Fatalf("caller whose deadline passed during its start: %v, %v; want ETIMEDOUT", r.inst, r.err)
	}
	close(gate)
	// The next caller shares the start, or finds it warm: no new start.
	if got := fp.acquireNow("k", nil); got != inst {
		t.Fatalf("after the first caller gave up: %v, want the instance its start made", got)
	}
	fp.pool.mu.Lock()
	if inst.inflight != 1 {
		t.Errorf("inflight %d, want 1: the caller that gave up holds none", inst.inflight)
	}
	fp.pool.mu.Unlock()
	if n := fp.starts.Load(); n != 1 {
		t.Errorf("%d starts, want 1", n)
	}
}

// newQueuePool is a fake pool whose admission runs one start at a time
// over all targets.
func newQueuePool(t *testing.T) *fakePool {
	fp := newFakePool(t, 64, 4)
	fp.admit = newAdmission(4, 1, 64)
	return fp
}

// A start queued behind max_starts leaves the queue when its only caller
// gives up: ETIMEDOUT naming max_starts, and it never runs.
func TestPoolQueuedStartLeavesWithItsCaller(t *testing.T) {
	fp := newQueuePool(t)
	gate := make(chan struct{})
	busy := fp.startedShared("k1", fakeInstance("k1", time.Hour), gate)
	cctx, cancel := context.WithCancel(context.Background())
	ctx := newWatchCtx(cctx)
	queued := fp.goAcquire(ctx, "k2", "U", fp.start(fakeInstance("k2", time.Hour), nil, nil))
	waitFor(t, ctx.asked, "the caller to block")
	cancel()
	if r := result(t, queued); !errnoIs(r.err, syscall.ETIMEDOUT) || !strings.Contains(r.err.Error(), "(max_starts)") {
		t.Fatalf("caller of a queued start: %v, %v; want ETIMEDOUT naming max_starts", r.inst, r.err)
	}
	close(gate)
	if r := result(t, busy); r.err != nil {
		t.Fatal(r.err)
	}
	if n := fp.starts.Load(); n != 1 {
		t.Errorf("%d starts, want 1: the abandoned one must not run", n)
	}
	fp.pool.mu.Lock()
	defer fp.pool.mu.Unlock()
	if len(fp.starting) != 0 || fp.admit.queued != 0 {
		t.Errorf("left %d starts registered, %d queued", len(fp.starting), fp.admit.queued)
	}
}

// One target with many waiting starts does not hold up another target's
// first: starts are admitted round-robin over targets.
func TestPoolNewTargetIsNotStarved(t *testing.T) {
	fp := newQueuePool(t)
	var mu sync.Mutex
	var order []string
	starter := func(key string) hold {
		return fp.hold(func() (*instance, error) {
			mu.Lock()
			order = append(order, key)
			mu.Unlock()
			return fakeInstance(key, time.Hour), nil
		})
	}
	gate := make(chan struct{})
	busy := fp.startedShared("a0", fakeInstance("a0", time.Hour), gate)
	var calls []<-chan acquired
	for _, c := range []struct{ key, target string }{{"a1", "A"}, {"a2", "A"}, {"a3", "A"}, {"a4", "A"}, {"b1", "B"}} {
		ctx := newWatchCtx(context.Background())
		calls = append(calls, fp.goAcquire(ctx, c.key, c.target, starter(c.key)))
		waitFor(t, ctx.asked, "a caller to queue") // in this order
	}
	close(gate)
	for _, ch := range append(calls, busy) {
		if r := result(t, ch); r.err != nil {
			t.Fatal(r.err)
		}
	}
	if got, want := strings.Join(order, " "), "a1 b1 a2 a3 a4"; got != want {
		t.Errorf("started %s, want %s", got, want)
	}
}

// An account holds at most its MaxInstances: a start beyond them ends its
// own least recently used idle instance, never another's, and fails with
// EAGAIN naming the account when all of its instances are busy. A failed
// start and a killed instance give their charge back.
func TestPoolAccountCapsItsOwnInstances(t *testing.T) {
	fp := newFakePool(t, 100, 4)
	user := &Account{Name: "uid 1000", MaxInstances: 2, Setting: "server.max_instances_per_user"}
	acquireAs := func(key string, acct *Account, inst *instance) (*instance, error) {
		return fp.acquire(context.Background(), key, "T", acct, fp.start(inst, nil, nil))
	}
	root := fakeInstance("root", time.Hour)
	fp.release(fp.acquireNow("root", root), false) // the least recently used of all, charged to nobody
	u1, u2, u3 := fakeInstance("u1", time.Hour), fakeInstance("u2", time.Hour), fakeInstance("u3", time.Hour)
	for _, inst := range []*instance{u1, u2} {
		got, err := acquireAs(inst.plugin.name, user, inst)
		if err != nil || got != inst {
			t.Fatalf("%s: %v", inst.plugin.name, err)
		}
		fp.release(got, false)
	}
	if got, err := acquireAs("u3", user, u3); err != nil || got != u3 {
		t.Fatalf("u3: %v", err)
	}
	waitFor(t, u1.gone, "u1, the account's least recently used, to be killed")
	if got := fp.killedNames(); strings.Join(got, ",") != "u1" {
		t.Fatalf("killed %v, want [u1]: root's idle instance is not the account's to end", got)
	}
	// u3 busy, u2 taken again: nothing of the account's is idle.
	if got, err := acquireAs("u2", user, nil); err != nil || got != u2 {
		t.Fatalf("warm u2: %v", err)
	}
	_, err := acquireAs("u4", user, fakeInstance("u4", time.Hour))
	if !errnoIs(err, syscall.EAGAIN) || !strings.Contains(err.Error(), "uid 1000 has 2 plugin instances running or starting, the most it may (server.max_instances_per_user), and none of them is idle") {
		t.Fatalf("third busy instance: %v, want EAGAIN naming the account and its setting", err)
	}
	// Warm instances serve whoever maps to them, uncharged; others start.
	if got, err := acquireAs("root", user, nil); err != nil || got != root {
		t.Fatalf("root's warm instance for the account: %v", err)
	}
	fp.release(root, false)
	other := &Account{Name: "uid 2000", MaxInstances: 1}
	o1 := fakeInstance("o1", time.Hour)
	if got, err := acquireAs("o1", other, o1); err != nil || got != o1 {
		t.Fatalf("another account: %v", err)
	}
	// A failed start gives its charge back.
	fp.release(o1, false)
	fail := errorf(syscall.EIO, "boom")
	if _, err := fp.acquire(context.Background(), "o2", "T", other, fp.start(nil, fail, nil)); err != fail {
		t.Fatalf("failing start: %v", err)
	}
	fp.mu.Lock()
	charged := fmt.Sprint(fp.charged)
	fp.mu.Unlock()
	// o1 was evicted to make room for o2's start, which failed.
	if charged != "map[uid 1000:2]" {
		t.Errorf("charges %s, want map[uid 1000:2] (uid 2000's instance ended, its failed start gave its charge back)", charged)
	}
	fp.release(u2, false)
	fp.release(u3, false)
	fp.close()
	fp.mu.Lock()
	defer fp.mu.Unlock()
	if len(fp.charged) != 0 {
		t.Errorf("charges after close: %v", fp.charged)
	}
}
