package core

import (
	"testing"
	"time"
)

// The pool names why each instance ended, with the reason it decided
// first, once per instance and after its stop: with fake instances, the
// decision points alone (the integration tests, tests/events_test.go,
// cover real processes).
func TestPoolEventsNameWhyInstancesEnd(t *testing.T) {
	fp := newFakePool(t, 1, 1)
	ends := make(chan Event, 8)
	fp.events = func(ev Event) { ends <- ev }
	want := func(kind EventKind, plugin string) {
		t.Helper()
		select {
		case ev := <-ends:
			if ev.Kind != kind || ev.Plugin != plugin {
				t.Errorf("event %s of %s, want %s of %s", ev.Kind, ev.Plugin, kind, plugin)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s event of %s after 10s", kind, plugin)
		}
	}

	a := fp.acquireNow("a", fakeInstance("a", time.Hour))
	fp.release(a, false)
	b := fp.acquireNow("b", fakeInstance("b", time.Hour)) // max_instances = 1
	want(InstanceEvicted, "a")

	fp.exited(b) // in flight: its process died under the request
	b.ending(InstanceKilled, nil)
	fp.release(b, true)
	want(InstanceCrashed, "b")

	c := fp.acquireNow("c", fakeInstance("c", time.Millisecond))
	fp.release(c, false)
	want(InstanceIdle, "c")

	e := fp.acquireNow("e", fakeInstance("e", time.Hour))
	fp.release(e, false)
	fp.close()
	want(InstanceClosed, "e")
	select {
	case ev := <-ends:
		t.Errorf("unexpected %s event of %s", ev.Kind, ev.Plugin)
	default:
	}
	if k := fp.killedNames(); len(k) != 4 {
		t.Errorf("killed %v, want each of the 4 instances once", k)
	}
}

func TestEventKindNames(t *testing.T) {
	ends := 0
	for k := InstanceStarted; k <= InstanceDone; k++ {
		if k.String() == "unknown" {
			t.Errorf("kind %d has no name", k)
		}
		if k.Ends() {
			ends++
		}
	}
	if ends != 6 || InstanceStarted.Ends() || InstanceStartFailed.Ends() || EventKind(0).String() != "unknown" {
		t.Errorf("%d kinds end an instance, want 6 (all but the two starts)", ends)
	}
}
