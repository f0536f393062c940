package handler

import (
	"runtime/debug"
	"sync"
	"time"
)

// idleAfter is how long a plugin process serves nothing before it gives
// its free memory back to the system.
const idleAfter = 2 * time.Second

// idleReturn gives a plugin process's free memory back once it has been
// idle for idleAfter: a warm instance of a quiet target then holds little
// more than its live heap, instead of the heap its busiest moment grew.
// The Go runtime's own scavenger returns memory too, but slowly and only
// above what it expects to need again.
//
// A request costs a lock and two field writes; the timer is armed only
// when the process goes idle and nothing armed it yet.
type idleReturn struct {
	mu       sync.Mutex
	inflight int
	last     time.Time // when the last request ended
	armed    bool
	timer    *time.Timer
}

func (r *idleReturn) begin() {
	r.mu.Lock()
	r.inflight++
	r.mu.Unlock()
}

func (r *idleReturn) end() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inflight--
	r.last = time.Now()
	if r.inflight == 0 && !r.armed {
		r.arm(idleAfter)
	}
}

// arm starts the timer. Called with mu held.
func (r *idleReturn) arm(d time.Duration) {
	r.armed = true
	if r.timer == nil {
		r.timer = time.AfterFunc(d, r.fire)
	} else {
		r.timer.Reset(d)
	}
}

func (r *idleReturn) fire() {
	r.mu.Lock()
	if r.inflight > 0 {
		r.armed = false // end re-arms it
		r.mu.Unlock()
		return
	}
	if left := idleAfter - time.Since(r.last); left > 0 {
		r.arm(left) // served meanwhile: wait out the rest
		r.mu.Unlock()
		return
	}
	r.armed = false
	r.mu.Unlock()
	debug.FreeOSMemory()
}
