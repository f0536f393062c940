package core

import "context"

// Pending is a request running in the background: sent without waiting
// for its answer, to be waited for or terminated later (sysbox-fs's
// asynchronous events, e.g. a long-lived handler that holds a mount or a
// file open while a container runs).
type Pending struct {
	done   chan struct{}
	cancel context.CancelFunc
	resp   *Response
	err    error
}

// Go starts req in the background. ctx bounds it as it bounds Call.
func (d *Dispatcher) Go(ctx context.Context, req Request) *Pending {
	ctx, cancel := context.WithCancel(ctx)
	p := &Pending{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(p.done)
		defer cancel()
		p.resp, p.err = d.Call(ctx, req)
	}()
	return p
}

// Done is closed when the request has finished.
func (p *Pending) Done() <-chan struct{} { return p.done }

// Wait waits for the request and returns what Call would have.
func (p *Pending) Wait() (*Response, error) {
	<-p.done
	return p.resp, p.err
}

// Terminate ends the request: its handler's context is cancelled; a
// handler that does not stop within a short grace is killed with its
// instance (which is reaped), so the next request gets a healthy one.
// Terminate returns once all that is done; files a finished request handed
// back are closed.
func (p *Pending) Terminate() {
	p.cancel()
	<-p.done
	if p.resp != nil {
		closeFiles(p.resp.Files)
	}
}
