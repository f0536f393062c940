package core

import (
	"container/list"
	"context"
	"sync"
	"syscall"
	"time"
)

// pool keeps warm instances, one per key (plugin, joined namespaces,
// credentials), kills them after their idle timeout, and caps how many
// plugin processes live at once, evicting the least recently used idle
// one to make room. Cold starts go through admission: bounded per target
// and in all, queued fairly across targets. Instances started for an
// Account count against its MaxInstances (charge).
//
// A cold start belongs to the pool, not to the request that asked for it:
// every caller of its key waits for it within its own deadline, and a
// start whose callers all gave up still ends in a warm instance (the
// caller retries, and in a storm the work is not wasted), unless it
// was still queued (it then leaves the queue).
type pool struct {
	mu       sync.Mutex
	max      int
	admit    *admission
	warm     map[string]*instance   // reusable instances by key
	starting map[string]*startCall  // cold starts queued or running, by key
	pending  int                    // cold starts running, shared or not
	live     map[*instance]struct{} // started and not yet killed
	idle     *list.List             // idle warm instances, most recently used first
	idleElem map[*instance]*list.Element
	charged  map[string]int // instances running or starting, by account name
	kills    sync.WaitGroup
	starts   sync.WaitGroup // cold starts queued or running, and reserved oneshot slots
	closed   bool
	// stop ends an instance's process: (*instance).end. The pool's unit
	// tests replace it, so that their fake instances need no process.
	stop func(inst *instance, abrupt bool)
	// events is Options.Events: told how each instance ended once it is
	// reaped (see killLocked).
	events func(Event)
}

// startFunc starts an instance. It may run after the request that asked
// for it has returned, so it must hold what it uses (see hold).
type startFunc func() (*instance, error)

// hold is what acquire is given to make a cold start: it is called, under
// the pool's lock, only when the caller is the first of its key, and
// returns the start and what lets go of what the start holds. The pool
// calls exactly one of the two, once.
type hold func() (start startFunc, drop func())

// startCall is one cold start, shared by every caller of its key.
type startCall struct {
	key     string
	done    chan struct{}
	ticket  *startTicket // its place in admission
	account string       // charged for it: the account of the caller that queued it
	start   startFunc
	drop    func()
	waiters int  // callers waiting for it (under mu)
	running bool // admitted and started (under mu)
	// Set before done is closed.
	inst *instance
	err  error
}

func newPool(max int, admit *admission) *pool {
	return &pool{
		max:      max,
		admit:    admit,
		warm:     make(map[string]*instance),
		starting: make(map[string]*startCall),
		live:     make(map[*instance]struct{}),
		idle:     list.New(),
		idleElem: make(map[*instance]*list.Element),
		charged:  make(map[string]int),
		stop:     (*instance).end,
	}
}

var errClosed = errorf(syscall.ESHUTDOWN, "dispatcher is closed")

// acquire returns an instance for key: warm if there is one, otherwise
// started with what hold makes (concurrent callers of one key share one
// start), within ctx: every wait ends with ctx. target names the target
// for admission; a start is charged to acct. (Oneshot instances do not
// come here: they take a slot with reserve.)
func (p *pool) acquire(ctx context.Context, key, target string, acct *Account, h hold) (*instance, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errClosed
	}
	if inst := p.warm[key]; inst != nil {
		p.use(inst)
		p.mu.Unlock()
		return inst, nil
	}
	call := p.starting[key]
	if call == nil {
		var err error
		if call, err = p.queue(key, target, acct, h); err != nil {
			p.mu.Unlock()
			return nil, err
		}
	}
	call.waiters++
	p.mu.Unlock()

	select {
	case <-call.done:
		return call.inst, call.err // counted in the instance's inflight
	case <-ctx.Done():
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-call.done: // it ended meanwhile, counting this caller
		if call.err == nil {
			p.releaseLocked(call.inst, false)
		}
	default:
		call.waiters--
	}
	why := "a plugin instance to start"
	if !call.running && !isClosed(call.done) {
		if call.waiters == 0 {
			// Nobody waits for it: it leaves the queue, unless it has
			// just been admitted.
			if w, cancelled := p.admit.cancel(call.ticket); cancelled {
				why = w
				p.finish(call, nil, errorf(syscall.ETIMEDOUT, "abandoned while waiting for %s", w))
			}
		} else {
			why = p.admit.why(call.ticket)
		}
	}
	return nil, errorf(syscall.ETIMEDOUT, "waiting for %s: %v", why, ctx.Err())
}

// queue registers a cold start of key and queues it for admission; begin
// runs it once admitted. Called with mu held.
func (p *pool) queue(key, target string, acct *Account, h hold) (*startCall, error) {
	if len(p.live)+p.pending >= p.max && p.idle.Len() == 0 {
		return nil, p.full()
	}
	if err := p.charge(acct); err != nil {
		return nil, err
	}
	call := &startCall{key: key, done: make(chan struct{}), account: acct.name()}
	call.start, call.drop = h()
	ticket, err := p.admit.enqueue(target, acct.name(), func(t *startTicket, err error) { go p.begin(call, t, err) })
	if err != nil {
		p.uncharge(call.account)
		call.drop()
		return nil, err
	}
	call.ticket = ticket
	p.starting[key] = call
	p.starts.Add(1)
	return call, nil
}

func (p *pool) full() error {
	return errorf(syscall.EAGAIN, "all %d plugin instances are busy (max_instances)", p.max)
}

// charge counts one more instance against acct (nil: nobody), first
// ending its least recently used idle instance when it holds its most.
// Called with mu held.
func (p *pool) charge(acct *Account) error {
	if acct == nil {
		return nil
	}
	if n := p.charged[acct.Name]; n >= acct.MaxInstances && !p.evictIdleOf(acct.Name) {
		setting := ""
		if acct.Setting != "" {
			setting = " (" + acct.Setting + ")"
		}
		return errorf(syscall.EAGAIN, "%s has %d plugin instances running or starting, the most it may%s, and none of them is idle", acct.Name, n, setting)
	}
	p.charged[acct.Name]++
	return nil
}

// uncharge gives back one instance of account name. Called with mu held.
func (p *pool) uncharge(name string) {
	if name == "" {
		return
	}
	if p.charged[name]--; p.charged[name] <= 0 {
		delete(p.charged, name)
	}
}

// begin runs an admitted cold start (refused, when err is set: its target
// began a backoff).
func (p *pool) begin(call *startCall, t *startTicket, err error) {
	p.mu.Lock()
	if err == nil && p.closed {
		err = errClosed
	}
	if err == nil && len(p.live)+p.pending >= p.max && !p.evictIdle() {
		err = p.full()
	}
	if err != nil {
		if t.state == ticketRunning {
			p.admit.give(t, nil)
		}
		p.finish(call, nil, err)
		p.mu.Unlock()
		return
	}
	p.pending++
	call.running = true
	p.mu.Unlock()

	inst, err := call.start()
	p.admit.give(t, startOutcome(context.Background(), err))

	p.mu.Lock()
	p.pending--
	if err == nil && p.closed {
		inst.key = call.key
		p.live[inst] = struct{}{}
		inst.retired = true
		p.killLocked(inst)
		inst, err = nil, errClosed
	}
	p.finish(call, inst, err)
	p.mu.Unlock()
}

// finish ends a cold start that its drop, or its start, has ended: a
// started instance goes warm, in use by every caller still waiting, or
// idle when none is. Called with mu held.
func (p *pool) finish(call *startCall, inst *instance, err error) {
	if !call.running {
		call.drop()
	}
	delete(p.starting, call.key)
	if err == nil && inst.retired { // exited as it started (see exited)
		if !inst.killed {
			p.live[inst] = struct{}{}
			p.killLocked(inst)
		}
		inst, err = nil, errorf(syscall.EIO, "the plugin instance exited as soon as it started")
	}
	call.inst, call.err = inst, err
	if err != nil {
		p.uncharge(call.account)
	} else {
		inst.account = call.account // the start's charge is the instance's now
		inst.key = call.key
		inst.lastUsed = time.Now()
		p.live[inst] = struct{}{}
		p.warm[call.key] = inst
		inst.inflight = call.waiters + 1
		p.releaseLocked(inst, false) // the start's own reference: idle if nobody waits
	}
	close(call.done)
	p.starts.Done()
}

// reserve takes a slot of the instance cap, and one of target's start
// slots, for a process the pool does not keep (a oneshot one), evicting
// an idle instance if it must, and charges it to acct. started gives the
// start slot back with the start's outcome, unreserve the slot of the cap
// and the charge.
func (p *pool) reserve(ctx context.Context, target string, acct *Account) (*startTicket, error) {
	ticket, err := p.admit.take(ctx, target, acct.name())
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.admit.give(ticket, nil)
		return nil, errClosed
	}
	if len(p.live)+p.pending >= p.max && !p.evictIdle() {
		p.admit.give(ticket, nil)
		return nil, p.full()
	}
	if err := p.charge(acct); err != nil {
		p.admit.give(ticket, nil)
		return nil, err
	}
	p.pending++
	p.starts.Add(1)
	return ticket, nil
}

// running gives back the share of max_starts a reserved slot holds, once
// the process has started and serves.
func (p *pool) running(ticket *startTicket) { p.admit.started(ticket) }

// started gives back a reserved start slot once the process has served
// (or failed to start or serve), with the outcome.
func (p *pool) started(ctx context.Context, ticket *startTicket, err error) {
	p.admit.give(ticket, startOutcome(ctx, err))
}

func (p *pool) unreserve(acct *Account) {
	p.mu.Lock()
	p.uncharge(acct.name())
	p.pending--
	p.mu.Unlock()
	p.starts.Done()
}

// use marks a warm instance busy. Called with mu held.
func (p *pool) use(inst *instance) {
	inst.inflight++
	if e := p.idleElem[inst]; e != nil {
		p.idle.Remove(e)
		delete(p.idleElem, inst)
	}
	if inst.idle != nil {
		inst.idle.Stop()
	}
}

// release returns an instance after a request. broken retires it.
func (p *pool) release(inst *instance, broken bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.releaseLocked(inst, broken)
}

// releaseLocked is release with mu held.
func (p *pool) releaseLocked(inst *instance, broken bool) {
	inst.inflight--
	inst.lastUsed = time.Now()
	if broken {
		inst.abrupt = true // a hung or dead handler gets no grace
		p.retire(inst)
	}
	if inst.inflight > 0 {
		return
	}
	if inst.retired {
		p.killLocked(inst)
		return
	}
	p.idleElem[inst] = p.idle.PushFront(inst)
	timeout := inst.plugin.settings.IdleTimeout.Duration
	if inst.idle == nil {
		inst.idle = time.AfterFunc(timeout, func() { p.expire(inst) })
	} else {
		inst.idle.Reset(timeout)
	}
}

// expire kills an instance whose idle timeout passed, unless it was
// picked up again meanwhile.
func (p *pool) expire(inst *instance) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if inst.inflight == 0 && !inst.killed && time.Since(inst.lastUsed) >= inst.plugin.settings.IdleTimeout.Duration {
		inst.ending(InstanceIdle, nil)
		p.retire(inst)
		p.killLocked(inst)
	}
}

// retire takes an instance out of reuse. Called with mu held.
func (p *pool) retire(inst *instance) {
	inst.retired = true
	if p.warm[inst.key] == inst {
		delete(p.warm, inst.key)
	}
	if e := p.idleElem[inst]; e != nil {
		p.idle.Remove(e)
		delete(p.idleElem, inst)
	}
}

// evictIdle kills the least recently used idle instance to make room.
// Called with mu held.
func (p *pool) evictIdle() bool {
	e := p.idle.Back()
	if e == nil {
		return false
	}
	inst := e.Value.(*instance)
	inst.ending(InstanceEvicted, nil)
	p.retire(inst)
	p.killLocked(inst)
	return true
}

// evictIdleOf is evictIdle among the idle instances charged to account
// name. Called with mu held.
func (p *pool) evictIdleOf(name string) bool {
	for e := p.idle.Back(); e != nil; e = e.Prev() {
		if inst := e.Value.(*instance); inst.account == name {
			inst.ending(InstanceEvicted, nil)
			p.retire(inst)
			p.killLocked(inst)
			return true
		}
	}
	return false
}

// exited is called when an instance's process is gone, however it went.
func (p *pool) exited(inst *instance) {
	p.mu.Lock()
	defer p.mu.Unlock()
	inst.ending(InstanceCrashed, nil) // unless the core meant it
	inst.abrupt = true
	p.retire(inst)
	if len(inst.channels) > 0 {
		go p.revokeChannels(inst) // each holds it: released, it is killed
	}
	if inst.inflight == 0 {
		p.killLocked(inst) // reaps go-plugin's side, removes the socket dir
	}
}

// killLocked kills an instance in the background (the wait group lets
// Close wait for it). It leaves the live set at once, so that its slot is
// free. Called with mu held.
func (p *pool) killLocked(inst *instance) {
	if inst.killed {
		return
	}
	inst.ending(InstanceClosed, nil) // a kill with no other reason: Close's
	inst.killed = true
	if inst.idle != nil {
		inst.idle.Stop()
	}
	delete(p.live, inst)
	p.uncharge(inst.account)
	inst.account = ""
	p.kills.Add(1)
	go func(abrupt bool) {
		defer p.kills.Done()
		p.stop(inst, abrupt)
		p.revokeChannels(inst)
		close(inst.gone)
		emit(p.events, inst.endEvent(false))
	}(inst.abrupt)
}

// close kills every instance and waits until all are reaped.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	for _, call := range p.starting {
		if !call.running {
			if _, cancelled := p.admit.cancel(call.ticket); cancelled {
				p.finish(call, nil, errClosed)
			}
		}
	}
	p.mu.Unlock()
	p.starts.Wait()
	p.mu.Lock()
	for inst := range p.live {
		p.retire(inst)
		p.killLocked(inst)
	}
	p.mu.Unlock()
	p.kills.Wait()
}
