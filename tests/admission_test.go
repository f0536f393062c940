package tests

import (
	"context"
	"errors"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// A target whose plugin starts hang, hammered with requests that cannot
// share a start (each acts for other credentials), holds at most
// max_starts_per_target of max_instances: another target's requests are
// served meanwhile. After repeated failures its starts fail at once,
// without a process, until the backoff ends.
func TestHangingStartsDoNotStarveOtherTargets(t *testing.T) {
	bin := sdkBuild(t, "./testdata/stallstart")
	hostile := newTarget(t, sandbox.Options{Rootless: true, Hostname: "stall-starts"})
	benign := newTarget(t, sandbox.Options{Rootless: true})
	d, _ := newDispatcher(t, `max_instances = 4
max_starts_per_target = 2
[[plugin]]
name = "stallstart"
path = "`+bin+`"
sha256 = "`+sha256File(t, bin)+`"
start_timeout = "2s"
request_timeout = "30s"
`)
	call := func(ctx context.Context, pid int, uid uint32) error {
		_, err := d.Dispatch(ctx, core.Request{PID: pid, Type: "stallstart.ping", Credentials: &core.Credentials{UID: uid, GID: 0}})
		return err
	}

	const hammer = 12
	var wg sync.WaitGroup
	hostileErrs := make([]error, hammer)
	for i := range hammer {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hostileErrs[i] = call(context.Background(), hostile.PID(), uint32(i))
		}()
	}
	// Once the hostile target's starts are under way (processes exist),
	// the benign target is served, cold and warm, by other credentials
	// too: the cap is not the hostile target's to take.
	waitFor(t, "the hostile target's starts to begin", func() bool { return len(pluginChildren()) >= 2 })
	for i := range 6 {
		if err := call(context.Background(), benign.PID(), uint32(i%3)); err != nil {
			t.Errorf("benign target, request %d, while the hostile one is hammered: %v", i, err)
		}
	}
	wg.Wait()
	for i, err := range hostileErrs {
		if err == nil {
			t.Errorf("hostile request %d succeeded; its start should have hung", i)
		}
	}

	// Backing off: no process is started for the hostile target now.
	before := len(pluginChildren())
	err := call(context.Background(), hostile.PID(), 99)
	var ce *core.Error
	if !errors.As(err, &ce) || ce.Errno != syscall.EAGAIN || !strings.Contains(ce.Message, "starts failed") {
		t.Errorf("hostile target after repeated failures: %v, want EAGAIN naming the failed starts", err)
	}
	if after := len(pluginChildren()); after > before {
		t.Errorf("a request during the backoff started a process (%d plugin processes, %d before)", after, before)
	}
	if err := call(context.Background(), benign.PID(), 0); err != nil {
		t.Errorf("benign target after the hammer: %v", err)
	}
}

// waitFor polls cond until it holds, failing the test after 20 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
