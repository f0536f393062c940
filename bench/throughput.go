package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// Pool is a pooled core with warm instances in several targets, for
// throughput runs.
type Pool struct {
	D       *core.Dispatcher
	Targets []*sandbox.Sandbox
}

// NewPool starts a core and n targets and warms one instance in each.
func (e *Env) NewPool(n int) (*Pool, error) {
	d, err := e.Dispatcher("")
	if err != nil {
		return nil, err
	}
	p := &Pool{D: d}
	for i := 0; i < n; i++ {
		t, err := e.Target()
		if err != nil {
			return nil, err
		}
		if err := read(context.Background(), d, t.PID()); err != nil {
			return nil, err
		}
		p.Targets = append(p.Targets, t)
	}
	return p, nil
}

// target is the target of a caller's k-th request: the callers' requests
// are spread evenly over the first targets targets.
func (p *Pool) target(caller, callers, k, targets int) int {
	return p.Targets[(caller+k*callers)%targets].PID()
}

// Throughput runs callers concurrent sequential callers against the
// first targets targets for warmup (not counted) and then dur, and
// returns the completed requests per second.
func (p *Pool) Throughput(callers, targets int, warmup, dur time.Duration) (float64, error) {
	if targets > len(p.Targets) {
		return 0, fmt.Errorf("throughput: %d targets asked, %d started", targets, len(p.Targets))
	}
	var (
		done     atomic.Int64
		stop     atomic.Bool
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	ctx := context.Background()
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; !stop.Load(); k++ {
				_, err := p.D.Dispatch(ctx, core.Request{PID: p.target(c, callers, k, targets), Type: "procfs.read", Payload: readPayload})
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					stop.Store(true)
					return
				}
				done.Add(1)
			}
		}()
	}
	time.Sleep(warmup)
	n0, t0 := done.Load(), time.Now()
	time.Sleep(dur)
	// A window so short that no request completed in it (a loaded
	// machine, a race build) says nothing: extend it to the first
	// completion, within reason.
	for deadline := time.Now().Add(10 * time.Second); done.Load() == n0 && !stop.Load() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	n1, t1 := done.Load(), time.Now()
	stop.Store(true)
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	return float64(n1-n0) / t1.Sub(t0).Seconds(), nil
}

// Requests runs n requests in total over callers concurrent callers and
// the first targets targets (for testing.B).
func (p *Pool) Requests(n, callers, targets int) error {
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	ctx := context.Background()
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ; k++ {
				if next.Add(1) > int64(n) {
					return
				}
				if _, err := p.D.Dispatch(ctx, core.Request{PID: p.target(c, callers, k, targets), Type: "procfs.read", Payload: readPayload}); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}
