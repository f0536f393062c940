package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// The storm phase: many new targets at once, each sent the first request
// of every built-in, all concurrently, under the default timeouts (the
// issue's "warming 256 new targets"). Keys:
//
//   - storm_256_s: time until every request of the storm was answered;
//     storm_targets says how many targets (256 full, 64 quick).
//   - storm_cold_target_ms: the cost of one cold start, measured in the
//     same run just before the storm: the mean time one caller takes to
//     make every built-in warm in one new target (its first request of
//     each, in sequence, nothing else running), over stormCalibration
//     targets. Once the built-ins of a target share one process, that is
//     one process start.
//   - storm_ratio: storm_256_s / (storm_targets × storm_cold_target_ms /
//     cores), the storm against perfect scaling over the CPUs; the target
//     is ≤ 1.3.
//   - storm_failed_requests: requests of the storm that failed (any error).
//   - storm_threads_per_handler (mean) and _max: /proc/PID/status Threads
//     of every handler process once the storm is over.

// firstRequests are a cheap request of each built-in plugin.
var firstRequests = []struct{ typ, payload string }{
	{"procfs.read", `{"path":"` + File + `"}`},
	{"sysctl.get", `{"name":"kernel.hostname"}`},
	{"ids.user", `{"id":0}`},
	{"mount.info", `{}`},
	{"fs.listxattr", `{"path":"/"}`},
}

// stormSize is the number of storm targets and of calibration targets:
// 256 in full mode, 64 in quick mode, a handful otherwise (the smoke test).
func stormSize(mode string) (targets, calibration int) {
	switch mode {
	case "full":
		return 256, 8
	case "quick":
		return 64, 4
	}
	return 4, 1
}

// warmAll sends pid the first request of every built-in, in sequence.
func warmAll(ctx context.Context, d *core.Dispatcher, pid int) error {
	for _, r := range firstRequests {
		if _, err := d.Dispatch(ctx, core.Request{PID: pid, Type: r.typ, Payload: json.RawMessage(r.payload)}); err != nil {
			return fmt.Errorf("%s: %w", r.typ, err)
		}
	}
	return nil
}

// stormPhase measures the storm and the cold start it is compared with.
func stormPhase(e *Env, mode string, say func(string, ...any), v map[string]any) error {
	n, calib := stormSize(mode)
	builtins := len(firstRequests)
	cfg := fmt.Sprintf("max_instances = %d\n", n*builtins+16) // the cap is not what is measured

	say("storm: one cold start, %d targets in sequence", calib)
	d, err := e.Dispatcher(cfg)
	if err != nil {
		return err
	}
	var cold time.Duration
	for range calib {
		t, err := NewTarget()
		if err != nil {
			return err
		}
		start := time.Now()
		err = warmAll(context.Background(), d, t.PID())
		cold += time.Since(start)
		t.Close()
		if err != nil {
			return fmt.Errorf("storm calibration: %w", err)
		}
	}
	d.Close()
	coldTarget := cold / time.Duration(calib)

	say("storm: starting %d targets", n)
	targets := make([]*sandbox.Sandbox, 0, n)
	defer func() {
		for _, t := range targets {
			t.Close()
		}
	}()
	for range n {
		t, err := NewTarget()
		if err != nil {
			return err
		}
		targets = append(targets, t)
	}
	if d, err = e.Dispatcher(cfg); err != nil {
		return err
	}
	defer d.Close()
	say("storm: %d first requests at once", n*builtins)
	var failed atomic.Int64
	var firstErr sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for _, t := range targets {
		for _, r := range firstRequests {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := d.Dispatch(context.Background(), core.Request{PID: t.PID(), Type: r.typ, Payload: json.RawMessage(r.payload)})
				if err != nil {
					failed.Add(1)
					firstErr.Do(func() { say("storm: first failure: %s in pid %d: %v", r.typ, t.PID(), err) })
				}
			}()
		}
	}
	wg.Wait()
	storm := time.Since(start)

	var threads, most, handlers int
	for _, in := range d.Instances() {
		if n := procThreads(in.PID); n > 0 {
			threads += n
			most = max(most, n)
			handlers++
		}
	}
	cores := runtime.NumCPU()
	ideal := time.Duration(n) * coldTarget / time.Duration(cores)
	v["storm_targets"] = n
	v["storm_requests"] = n * builtins
	v["storm_256_s"] = round(storm.Seconds(), 2)
	v["storm_cold_target_ms"] = round(float64(coldTarget)/float64(time.Millisecond), 1)
	v["storm_ideal_s"] = round(ideal.Seconds(), 2)
	v["storm_ratio"] = round(storm.Seconds()/ideal.Seconds(), 2)
	v["storm_failed_requests"] = failed.Load()
	if handlers > 0 {
		v["storm_threads_per_handler"] = round(float64(threads)/float64(handlers), 2)
		v["storm_threads_per_handler_max"] = most
	}
	return nil
}

// procThreads is the Threads line of /proc/PID/status (0: unknown).
func procThreads(pid int) int {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(rest))
			return n
		}
	}
	return 0
}

// stormCheck is the storm target, when the storm ran.
func stormCheck(v map[string]any) (Check, bool) {
	if _, ok := v["storm_ratio"]; !ok {
		return Check{}, false
	}
	note := fmt.Sprintf("%v targets: %.2fs vs ideal %.2fs (%v × one cold start %.1f ms / %v cores); %v of %v requests failed",
		v["storm_targets"], num(v, "storm_256_s"), num(v, "storm_ideal_s"), v["storm_targets"], num(v, "storm_cold_target_ms"), runtime.NumCPU(), v["storm_failed_requests"], v["storm_requests"])
	if n := v["storm_targets"]; n != 256 {
		note += fmt.Sprintf(" (storm_256_s is for %v targets)", n)
	}
	c := Check{Name: "storm: all warm <= 1.3 x ideal, no request failed", Value: num(v, "storm_ratio"), Limit: 1.3, Unit: "x", AtMost: true, Note: note}
	c.Pass = c.Value <= c.Limit && num(v, "storm_failed_requests") == 0
	return c, true
}
