package tests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/server"
)

// A target whose plugin starts hang, hammered with requests that cannot
// share a start (each acts for other credentials), holds at most
// max_starts_per_target of max_instances: another target's requests are
// served meanwhile. After repeated failures its starts fail at once,
// without a process, until the backoff ends.
func TestHangingStartsDoNotStarveOtherTargets(t *testing.T) {
	d, hostile, benign := stallSetup(t, "max_instances = 4\nmax_starts_per_target = 2", `start_timeout = "2s"
request_timeout = "30s"`)
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

// stallSetup is a dispatcher of top-level keys top and the stallstart
// plugin (keys of its entry: plugin), a target where its starts hang and
// one where they do not.
func stallSetup(t *testing.T, top, plugin string) (d *core.Dispatcher, hostile, benign *sandbox.Sandbox) {
	t.Helper()
	bin := sdkBuild(t, "./testdata/stallstart")
	hostile = newTarget(t, sandbox.Options{Rootless: true, Hostname: "stall-starts"})
	benign = newTarget(t, sandbox.Options{Rootless: true})
	d, _ = newDispatcher(t, fmt.Sprintf("%s\n[[plugin]]\nname = \"stallstart\"\npath = %q\nsha256 = %q\n%s\n", top, bin, sha256File(t, bin), plugin))
	return d, hostile, benign
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

// Starts that a user's targets make hang hold at most half of max_starts:
// with max_starts = 2, a user's four hanging starts (each for other
// credentials, so none shares another's) run one at a time, and root's
// first request into another container is admitted past them, long
// before their start_timeout would free a slot; so is another user's.
func TestOneUsersHangingStartsLeaveSlotsForOthers(t *testing.T) {
	parallel(t)
	d, hostile, benign := stallSetup(t, "max_starts = 2", `start_timeout = "8s"
request_timeout = "30s"`)
	rule := config.AllowRule{UIDs: []uint32{4848, 4949}, Types: []string{"stallstart.*"}, Targets: config.TargetsAny}
	g := &server.Gate{Policy: server.NewPolicy([]config.AllowRule{rule}).WithInstancesPerUser(16), Registry: d}
	callAs := func(ctx context.Context, c server.Caller, pid int, creds *core.Credentials) error {
		_, _, err := g.Call(c, core.Request{PID: pid, Type: "stallstart.ping", Credentials: creds}, func(r core.Request) (*core.Response, error) { return d.Call(ctx, r) })
		return err
	}
	user := server.Caller{UID: 4848, GID: 4848, PID: int32(os.Getpid())}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			callAs(ctx, user, hostile.PID(), &core.Credentials{UID: uint32(i), GID: 0})
		}()
	}
	// A start under way is a process in the hostile target's uts
	// namespace other than the target itself.
	uts, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/uts", hostile.PID()))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the user's first start to begin", func() bool {
		dirs, _ := os.ReadDir("/proc")
		for _, e := range dirs {
			if pid, err := strconv.Atoi(e.Name()); err == nil && pid != hostile.PID() {
				if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/uts", pid)); l == uts {
					return true
				}
			}
		}
		return false
	})

	// Well within the user's start_timeout of 8s, which is when a slot
	// they held would come free.
	for _, who := range []server.Caller{{}, {UID: 4949, GID: 4949, PID: int32(os.Getpid())}} {
		short, done := context.WithTimeout(ctx, 4*time.Second)
		err := callAs(short, who, benign.PID(), nil)
		done()
		if err != nil {
			t.Errorf("uid %d's first request into another container, behind the user's hanging starts: %v", who.UID, err)
		}
	}
}
