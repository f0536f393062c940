package core

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// A deadlineCtx is a request's context with its deadline (the plugin's
// request_timeout) held as a time, not as a timer. A timer per request
// costs the warm path a thread wake-up: a new timer earlier than the
// runtime poller's sleep interrupts that sleep. The warm path waits in
// poll(2) and takes the deadline as poll's timeout (frameConn.read); a
// timer is made only when something asks for Done, as the slower waits do
// (for a start, for another reader, for the handler after a cancel).
type deadlineCtx struct {
	context.Context // the caller's: its cancellation and values
	at              time.Time

	once   sync.Once
	timed  atomic.Pointer[context.Context] // made by Done
	cancel context.CancelFunc
}

// withDeadlineAt is ctx ending at at, with no timer until Done is asked;
// release frees the timer, if one was made.
func withDeadlineAt(ctx context.Context, at time.Time) (c *deadlineCtx, release func()) {
	c = &deadlineCtx{Context: ctx, at: at}
	return c, func() {
		if c.timed.Load() != nil {
			c.cancel()
		}
	}
}

func (c *deadlineCtx) Deadline() (time.Time, bool) {
	if d, ok := c.Context.Deadline(); ok && d.Before(c.at) {
		return d, true
	}
	return c.at, true
}

func (c *deadlineCtx) Done() <-chan struct{} {
	c.once.Do(func() {
		timed, cancel := context.WithDeadline(c.Context, c.at)
		c.cancel = cancel
		c.timed.Store(&timed)
	})
	return (*c.timed.Load()).Done()
}

func (c *deadlineCtx) Err() error {
	if t := c.timed.Load(); t != nil {
		return (*t).Err()
	}
	if err := c.Context.Err(); err != nil {
		return err
	}
	if !time.Now().Before(c.at) {
		return context.DeadlineExceeded
	}
	return nil
}

// pollTimeout is poll(2)'s timeout, in milliseconds, for a wait that ends
// with ctx: -1 (none) unless ctx is a deadlineCtx, rounded up so that
// the deadline has passed when poll times out. The context whose
// cancellation must wake the wait is returned too: a deadlineCtx's parent,
// which (unlike the deadlineCtx) has no timer to make.
func pollTimeout(ctx context.Context) (timeoutMs int, cancelled context.Context) {
	c, ok := ctx.(*deadlineCtx)
	if !ok || c.timed.Load() != nil {
		return -1, ctx
	}
	left := time.Until(c.at)
	if left <= 0 {
		return 0, c.Context
	}
	return int((left + time.Millisecond - 1) / time.Millisecond), c.Context
}
