package tests

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// A request sent without waiting can be terminated later. A handler that
// honours the cancellation keeps its instance; one that hangs is killed
// with it; either way the next request gets a healthy instance.
func TestPendingRequestsCanBeTerminated(t *testing.T) {
	target := newTarget(t, sandbox.Options{MountProc: true})
	d, _ := newDispatcher(t, "")
	pid := target.PID()
	for _, typ := range []string{"probe.wait", "probe.hang"} {
		p := d.Go(context.Background(), core.Request{PID: pid, Type: typ})
		// Let it reach the handler.
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if in := d.Instances(); len(in) == 1 && in[0].Inflight == 1 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		select {
		case <-p.Done():
			t.Fatalf("%s finished on its own", typ)
		default:
		}
		h := servingPID(t, d, "probe")
		p.Terminate()
		_, err := p.Wait()
		wantErrno(t, err, syscall.ECANCELED, typ)
		if typ == "probe.wait" {
			// It stopped when told to: the instance is kept.
			mustCall(t, d, pid, "probe.whoami", `{}`, nil)
			if got := servingPID(t, d, "probe"); got != h {
				t.Errorf("a handler that honoured cancellation lost its instance (%d, now %d)", h, got)
			}
			continue
		}
		// It did not: killed with its instance, nothing left in the target.
		waitGone(t, h, 5*time.Second)
		if procs := processesInPIDNamespaceOf(t, pid); len(procs) != 1 {
			t.Errorf("after terminating %s, the target's pid namespace holds %v", typ, procs)
		}
		mustCall(t, d, pid, "probe.whoami", `{}`, nil)
	}
	// A finished pending request returns its answer.
	p := d.Go(context.Background(), core.Request{PID: pid, Type: "probe.whoami"})
	if resp, err := p.Wait(); err != nil || len(resp.Payload) == 0 {
		t.Errorf("pending whoami: %v", err)
	}
}

// A request is served by an instance while another request of the same
// instance waits in its handler: the handler process reads on while a
// request blocks (sdk/handler/frames.go, handOff), and the waiting
// request is still there to be cancelled afterwards.
func TestRequestServedWhileAnotherWaits(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d, _ := newDispatcher(t, "")
	pid := target.PID()
	mustCall(t, d, pid, "probe.whoami", `{}`, nil)
	h := servingPID(t, d, "probe")
	for round := 0; round < 3; round++ {
		p := d.Go(context.Background(), core.Request{PID: pid, Type: "probe.wait"})
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if in := d.Instances(); len(in) == 1 && in[0].Inflight == 1 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := d.Dispatch(ctx, core.Request{PID: pid, Type: "probe.whoami"})
		cancel()
		if err != nil {
			t.Fatalf("round %d: probe.whoami while probe.wait waits: %v", round, err)
		}
		if got := servingPID(t, d, "probe"); got != h {
			t.Errorf("round %d: served by pid %d, not the instance %d that holds the waiting request", round, got, h)
		}
		select {
		case <-p.Done():
			t.Fatalf("round %d: probe.wait ended on its own", round)
		default:
		}
		p.Terminate()
		_, err = p.Wait()
		wantErrno(t, err, syscall.ECANCELED, "probe.wait")
	}
}
