package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/nsplug/nsplug/bench/internal/bare"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/wire"
)

// The scale phase: the cost of a target (issue 11). One core, targets
// added in steps (Params.ScaleTargets), every built-in warm in each:
// Prepare, then Params.ScaleRequests requests of each built-in's type. At each step: the procfs.read p50 round-robin over
// all targets against one target (interleaved), and at the last step
// the plugin processes' PSS per target, the core's RSS, fds and
// goroutines per target, and one serving process's anonymous memory
// against a bare go-plugin plugin's after as many requests; and the same
// round-robin against a C process per target (floor.go).

// scaleMix is one request of each built-in: every one of them warm.
var scaleMix = []core.Request{
	{Type: "procfs.read", Payload: readPayload},
	{Type: "sysctl.get", Payload: json.RawMessage(`{"name":"kernel.hostname"}`)},
	{Type: "ids.user", Payload: json.RawMessage(`{"id":0}`)},
	{Type: "fs.listxattr", Payload: json.RawMessage(`{"path":"/"}`)},
	{Type: "mount.info", Payload: json.RawMessage(`{}`)},
}

// scalePhase runs the scale phase and fills v.
func scalePhase(e *Env, p Params, say func(string, ...any), v map[string]any) error {
	steps, samples := p.ScaleTargets, p.ScaleSamples
	if len(steps) == 0 {
		return fmt.Errorf("scale: no steps")
	}
	v["scale_requests"] = p.ScaleRequests
	// Every target's instances live through the phase.
	d, err := e.Dispatcher("max_instances = 4096\n[defaults]\nidle_timeout = \"10m\"\n")
	if err != nil {
		return err
	}
	defer d.Close()
	ctx := context.Background()
	// All targets first: what sandbox holds for them (they are this
	// process's children: fds, goroutines) is not the core's, and is in
	// the base reading.
	var targets []*sandbox.Sandbox
	for len(targets) < steps[len(steps)-1] {
		t, err := NewTarget()
		if err != nil {
			return err
		}
		defer t.Close()
		targets = append(targets, t)
	}
	base := coreCost()
	// Each target's processes right after its requests, before they idle.
	var busyPSS, busyAnon int64
	var p50s, p50Singles []float64
	var single []time.Duration
	warm := 0
	for _, n := range steps {
		say("scale: %d targets, every built-in warm, %d requests each", n, p.ScaleRequests)
		var (
			wg       sync.WaitGroup
			mu       sync.Mutex
			firstErr error
		)
		// New targets are warmed two at a time: the machine has two cores.
		sem := make(chan struct{}, 2)
		last := n == steps[len(steps)-1]
		for ; warm < n; warm++ {
			t := targets[warm]
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				pss, anon, err := warmTarget(ctx, d, t.PID(), p.ScaleRequests)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					firstErr = err
				}
				if last {
					busyPSS += pss
					busyAnon += anon
				}
			}()
		}
		wg.Wait()
		if firstErr != nil {
			return firstErr
		}
		targets := targets[:n]
		// Round-robin and single-target samples, interleaved in blocks.
		var rr, one []time.Duration
		const block = 100
		for k := 0; len(rr) < samples; k++ {
			for i := 0; i < block; i++ {
				pid := targets[(k*block+i)%len(targets)].PID()
				start := time.Now()
				if err := read(ctx, d, pid); err != nil {
					return err
				}
				rr = append(rr, time.Since(start))
			}
			for i := 0; i < block; i++ {
				start := time.Now()
				if err := read(ctx, d, targets[0].PID()); err != nil {
					return err
				}
				one = append(one, time.Since(start))
			}
		}
		p50s = append(p50s, us(Summarize(rr).P50))
		p50Singles = append(p50Singles, us(Summarize(one).P50))
		single = append(single, one...)
	}
	v["scale_targets"] = steps
	v["scale_p50_us"] = p50s
	v["scale_p50_single_steps_us"] = p50Singles
	v["scale_p50_single_us"] = us(Summarize(single).P50)
	if err := pausePhase(ctx, d, targets[0].PID(), samples/4, v); err != nil {
		return err
	}
	if err := floorPhase(e, targets, samples, v); err != nil {
		return err
	}

	// Memory at the last step: every plugin process (waiters included).
	n := len(targets)
	var pss, anon, threads int64
	var serving int
	insts := d.Instances()
	for _, in := range insts {
		m, err := ReadProcMem(strconv.Itoa(in.PID))
		if err != nil {
			return err
		}
		pss += m.PSS
		anon += m.RSSAnon
		threads += m.Threads
		serving++
		if in.RunnerPID != in.PID {
			if w, err := ReadProcMem(strconv.Itoa(in.RunnerPID)); err == nil {
				pss += w.PSS
			}
		}
	}
	if serving == 0 {
		return fmt.Errorf("scale: no live instances")
	}
	// Busy: read as each target's requests ended (of the targets of the
	// last step); idle: at the end, the earlier ones idle by then.
	warmed := int64(n)
	if len(steps) > 1 {
		warmed -= int64(steps[len(steps)-2])
	}
	v["scale_processes"] = serving
	v["per_target_pss_mib"] = MiB(busyPSS / warmed)
	v["instance_anon_mib"] = MiB(busyAnon / warmed)
	v["per_target_pss_idle_mib"] = MiB(pss / int64(n))
	v["instance_anon_idle_mib"] = MiB(anon / int64(serving))
	v["handler_threads"] = round(float64(threads)/float64(serving), 1)
	c := coreCost()
	v["core_rss_per_target_kib"] = round(float64(c.rss-base.rss)/float64(n), 1)
	v["core_fds_per_target"] = round(float64(c.fds-base.fds)/float64(n), 2)
	v["core_goroutines_per_target"] = round(float64(c.goroutines-base.goroutines)/float64(n), 2)

	bm, err := bareAfter(e, p.ScaleRequests)
	if err != nil {
		return err
	}
	v["bare_plugin_anon_mib"] = MiB(bm.RSSAnon)
	return nil
}

// scalePauses are the caller's busy pauses before each request of
// pausePhase, in µs.
var scalePauses = []int{0, 20, 200, 1000}

// pausePhase measures what round-robin over targets costs without
// another target: the p50 against one warm target when the caller pauses
// before each request (spinning, so that its own CPU stays busy). A
// target's handler that has waited a while for its next request is
// slower to answer; round-robin over n targets makes every handler wait
// for n-1 others. Also recorded: the guest's halt polling, which decides
// whether an idle vCPU halts at once (bench/README, "Why spreading
// requests over targets costs about 2×").
func pausePhase(ctx context.Context, d *core.Dispatcher, pid, samples int, v map[string]any) error {
	var p50s []float64
	for _, pause := range scalePauses {
		wait := time.Duration(pause) * time.Microsecond
		var got []time.Duration
		for i := 0; i < samples; i++ {
			for start := time.Now(); time.Since(start) < wait; {
			}
			start := time.Now()
			if err := read(ctx, d, pid); err != nil {
				return err
			}
			got = append(got, time.Since(start))
		}
		p50s = append(p50s, us(Summarize(got).P50))
	}
	v["scale_pause_us"] = scalePauses
	v["scale_p50_after_pause_us"] = p50s
	v["guest_halt_poll_ns"] = guestHaltPollNs()
	return nil
}

// guestHaltPollNs is the haltpoll cpuidle driver's polling time before an
// idle vCPU halts (0: it halts at once), or -1 without that driver.
func guestHaltPollNs() int64 {
	b, err := os.ReadFile("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// warmTarget starts every built-in's instance in the target, has each
// built-in serve requests requests, and returns the PSS (waiters
// included) and anonymous memory of the target's plugin processes then.
func warmTarget(ctx context.Context, d *core.Dispatcher, pid, requests int) (pss, anon int64, err error) {
	if err := d.Prepare(ctx, core.Target{PID: pid}); err != nil {
		return 0, 0, err
	}
	for i := 0; i < requests; i++ {
		for _, r := range scaleMix {
			r.PID = pid
			if _, err := d.Dispatch(ctx, r); err != nil {
				return 0, 0, fmt.Errorf("scale: %s in target %d: %w", r.Type, pid, err)
			}
		}
	}
	for _, in := range d.Instances() {
		if in.Target != pid {
			continue
		}
		m, err := ReadProcMem(strconv.Itoa(in.PID))
		if err != nil {
			return 0, 0, err
		}
		pss, anon = pss+m.PSS, anon+m.RSSAnon
		if in.RunnerPID != in.PID {
			w, _ := ReadProcMem(strconv.Itoa(in.RunnerPID))
			pss += w.PSS
		}
	}
	return pss, anon, nil
}

func countFDs() int {
	fds, _ := os.ReadDir("/proc/self/fd")
	return len(fds)
}

// cost is what the core holds: its RSS (after a GC that returns freed
// memory), open fds and goroutines.
type cost struct {
	rss        int64 // KiB
	fds        int
	goroutines int
}

func coreCost() cost {
	freeOSMemory()
	m, _ := ReadProcMem("self")
	return cost{rss: m.RSS, fds: countFDs(), goroutines: runtime.NumGoroutine()}
}

// bareAfter starts the bare go-plugin plugin, calls it n times and
// reads its memory.
func bareAfter(e *Env, n int) (ProcMem, error) {
	path, err := e.BarePlugin()
	if err != nil {
		return ProcMem{}, err
	}
	cmd := exec.Command(path)
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  bare.Handshake,
		Plugins:          bare.Plugins(bare.Server{}),
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           e.Log.Named("bare"),
	})
	defer client.Kill()
	proto, err := client.Client()
	if err != nil {
		return ProcMem{}, err
	}
	raw, err := proto.Dispense(bare.Key)
	if err != nil {
		return ProcMem{}, err
	}
	for i := 0; i < n; i++ {
		resp, err := raw.(*bare.Client).Handle(context.Background(), &wire.HandleRequest{Type: "bare.read", Payload: []byte(File)})
		if err != nil {
			return ProcMem{}, err
		}
		if resp.Error != nil {
			return ProcMem{}, fmt.Errorf("bare plugin read %s: %v", File, resp.Error)
		}
	}
	return ReadProcMem(strconv.Itoa(cmd.Process.Pid))
}
