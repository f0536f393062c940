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
// one to make room. Cold starts are admitted per target (see admission):
// a target whose starts hang or fail cannot take the cap from others.
type pool struct {
	mu       sync.Mutex
	max      int
	admit    admission
	warm     map[string]*instance   // reusable instances by key
	starting map[string]*startCall  // shared cold starts in progress, by key
	pending  int                    // cold starts in progress, shared or not
	live     map[*instance]struct{} // started and not yet killed
	idle     *list.List             // idle warm instances, most recently used first
	idleElem map[*instance]*list.Element
	kills    sync.WaitGroup
	starts   sync.WaitGroup
	closed   bool
	// stop ends an instance's process: (*instance).kill. The pool's unit
	// tests replace it, so that their fake instances need no process.
	stop func(inst *instance, abrupt bool)
	// events is Options.Events: told how each instance ended once it is
	// reaped (see killLocked).
	events func(Event)
}

type startCall struct {
	done chan struct{}
	err  error
}

func newPool(max, startsPerTarget int) *pool {
	return &pool{
		max:      max,
		admit:    admission{perTarget: startsPerTarget, targets: make(map[string]*targetStarts)},
		warm:     make(map[string]*instance),
		starting: make(map[string]*startCall),
		live:     make(map[*instance]struct{}),
		idle:     list.New(),
		idleElem: make(map[*instance]*list.Element),
		stop:     (*instance).kill,
	}
}

var errClosed = errorf(syscall.ESHUTDOWN, "dispatcher is closed")

// acquire returns an instance for key: warm if there is one, otherwise
// started by start (concurrent callers of one key share one start).
// target names the target for start admission. (Oneshot instances do not
// come here: they take a slot with reserve.)
func (p *pool) acquire(ctx context.Context, key, target string, start func() (*instance, error)) (*instance, error) {
	p.mu.Lock()
	for {
		for {
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
				break
			}
			p.mu.Unlock()
			select {
			case <-call.done:
				if call.err != nil {
					return nil, call.err
				}
			case <-ctx.Done():
				return nil, errorf(syscall.ETIMEDOUT, "waiting for a plugin instance to start: %v", ctx.Err())
			}
			p.mu.Lock()
		}
		// A cold start: take one of the target's start slots first,
		// then look again, since another caller may have started the
		// instance while this one waited.
		p.mu.Unlock()
		slot, err := p.admit.take(ctx, target)
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		if p.warm[key] == nil && p.starting[key] == nil {
			return p.coldStart(ctx, key, slot, start)
		}
		p.admit.give(slot, nil)
	}
}

// coldStart runs start in a slot the target was admitted to. Called with
// mu held; returns with it released.
func (p *pool) coldStart(ctx context.Context, key string, slot *targetStarts, start func() (*instance, error)) (*instance, error) {
	if p.closed {
		p.mu.Unlock()
		p.admit.give(slot, nil)
		return nil, errClosed
	}
	if len(p.live)+p.pending >= p.max && !p.evictIdle() {
		p.mu.Unlock()
		p.admit.give(slot, nil)
		return nil, errorf(syscall.EAGAIN, "all %d plugin instances are busy (max_instances)", p.max)
	}
	call := &startCall{done: make(chan struct{})}
	p.pending++
	p.starts.Add(1)
	defer p.starts.Done()
	p.starting[key] = call
	p.mu.Unlock()

	inst, err := start()
	p.admit.give(slot, startOutcome(ctx, err))

	p.mu.Lock()
	p.pending--
	delete(p.starting, key)
	call.err = err
	if err == nil {
		inst.key = key
		inst.inflight = 1
		inst.lastUsed = time.Now()
		p.live[inst] = struct{}{}
		if p.closed {
			inst.retired = true
		} else {
			p.warm[key] = inst
		}
	}
	p.mu.Unlock()
	close(call.done)
	return inst, err
}

// reserve takes a slot of the instance cap, and one of target's start
// slots, for a process the pool does not keep (a oneshot one), evicting
// an idle instance if it must. unreserve gives both back with the start's
// outcome.
func (p *pool) reserve(ctx context.Context, target string) (*targetStarts, error) {
	slot, err := p.admit.take(ctx, target)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		p.admit.give(slot, nil)
		return nil, errClosed
	}
	if len(p.live)+p.pending >= p.max && !p.evictIdle() {
		p.admit.give(slot, nil)
		return nil, errorf(syscall.EAGAIN, "all %d plugin instances are busy (max_instances)", p.max)
	}
	p.pending++
	p.starts.Add(1)
	return slot, nil
}

// started gives back a reserved start slot once the process has started
// (or failed to), with the outcome.
func (p *pool) started(ctx context.Context, slot *targetStarts, err error) {
	p.admit.give(slot, startOutcome(ctx, err))
}

func (p *pool) unreserve() {
	p.mu.Lock()
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

// exited is called when an instance's process is gone, however it went.
func (p *pool) exited(inst *instance) {
	p.mu.Lock()
	defer p.mu.Unlock()
	inst.ending(InstanceCrashed, nil) // unless the core meant it
	inst.abrupt = true
	p.retire(inst)
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
	p.kills.Add(1)
	go func(abrupt bool) {
		defer p.kills.Done()
		p.stop(inst, abrupt)
		close(inst.gone)
		emit(p.events, inst.endEvent(false))
	}(inst.abrupt)
}

// close kills every instance and waits until all are reaped.
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
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
