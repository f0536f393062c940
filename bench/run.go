package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/core"
)

// Params size a run.
type Params struct {
	Rounds int // the latency cases are interleaved over this many rounds
	// Samples per latency case over the whole run.
	Floor, Warm, Nsenter, Oneshot, Cold, Bare int
	// CLI whole nsplug call processes, each paired with an nsenter (as
	// many through the daemon, with --addr); Daemon Calls through it.
	CLI, Daemon int
	// MemRequests sequential warm requests between the two readings of
	// the core's RSS, after MemWarmup.
	MemRequests, MemWarmup int
	// Each throughput configuration runs ThroughputWarmup (not counted),
	// then ThroughputDur.
	ThroughputWarmup, ThroughputDur time.Duration
	// ColdProfile cold starts are made under the CPU profiler when
	// Config.ProfileDir is set.
	ColdProfile int
	// The scale phase's steps (targets), round-robin requests (and as
	// many against one target) at each step, and requests of each
	// built-in's type per target before memory is read.
	ScaleTargets                []int
	ScaleSamples, ScaleRequests int
}

// Quick finishes within two minutes on two cores.
var Quick = Params{
	Rounds: 4, Floor: 4000, Warm: 4000, Nsenter: 80, Oneshot: 80, Cold: 40, Bare: 80, CLI: 60, Daemon: 4000,
	MemRequests: 100_000, MemWarmup: 50_000, ThroughputWarmup: 300 * time.Millisecond, ThroughputDur: 1500 * time.Millisecond,
	ColdProfile: 40, ScaleTargets: []int{1, 16, 64}, ScaleSamples: 2000, ScaleRequests: 1000,
}

// Full takes about two minutes.
var Full = Params{
	Rounds: 10, Floor: 50000, Warm: 50000, Nsenter: 2000, Oneshot: 2000, Cold: 1000, Bare: 2000, CLI: 400, Daemon: 50000,
	MemRequests: 100_000, MemWarmup: 50_000, ThroughputWarmup: 500 * time.Millisecond, ThroughputDur: 5 * time.Second,
	ColdProfile: 200, ScaleTargets: []int{1, 16, 64, 256}, ScaleSamples: 5000, ScaleRequests: 1000,
}

// Config says how to run.
type Config struct {
	Mode        string    // "quick" or "full" (names Params in the output)
	Params      Params    // zero: by Mode
	Out         io.Writer // the table; progress goes to Progress
	Progress    io.Writer // nil: none
	ResultsPath string    // results.json; empty: not written
	BarePlugin  string    // a built bench/bareplugin; empty: built on the spot
	NsplugCLI   string    // a built bin/nsplug; empty: built on the spot
	ProfileDir  string    // when set: CPU profiles of the core (warm.pprof, cold.pprof)
	Only        []string  // run only these of Phases (experiments, profiling); nil: all
}

// Phases are the parts of a run: the latency cases, memory and throughput.
var Phases = []string{"floor", "warm", "nsenter_cli", "oneshot", "cold", "bare_plugin", "cli_standalone", "daemon", "memory", "throughput", "storm", "scale"}

// Throughput configurations: callers × targets.
var (
	ThroughputCallers = []int{1, 8, 64}
	ThroughputTargets = []int{1, 16}
)

// Check is one target ratio of the issue, evaluated on one run.
type Check struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Limit  float64 `json:"limit"`
	Unit   string  `json:"unit"`
	AtMost bool    `json:"at_most"` // Value ≤ Limit passes; else Value ≥ Limit
	Pass   bool    `json:"pass"`
	Note   string  `json:"note"`
}

// Results are what a run measured; Values is written as results.json.
type Results struct {
	Values  map[string]any
	Summary map[string]Summary
	Checks  []Check
}

// Run takes every measurement in this process, prints the table and
// writes results.json.
func Run(cfg Config) (*Results, error) {
	p := cfg.Params
	if p.Rounds == 0 {
		switch cfg.Mode {
		case "quick":
			p = Quick
		case "full", "":
			p, cfg.Mode = Full, "full"
		default:
			return nil, fmt.Errorf("bench: unknown mode %q (quick or full)", cfg.Mode)
		}
	}
	progress := cfg.Progress
	if progress == nil {
		progress = io.Discard
	}
	say := func(format string, args ...any) {
		fmt.Fprintf(progress, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	begin := time.Now()

	env, err := NewEnv()
	if err != nil {
		return nil, err
	}
	defer env.Close()
	if cfg.BarePlugin != "" {
		env.SetBarePlugin(cfg.BarePlugin)
	}
	if cfg.NsplugCLI != "" {
		env.SetNsplugCLI(cfg.NsplugCLI)
	}
	if cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return nil, err
		}
	}

	want := func(name string) bool { return len(cfg.Only) == 0 || slices.Contains(cfg.Only, name) }
	for _, name := range cfg.Only {
		if !slices.Contains(Phases, name) {
			return nil, fmt.Errorf("bench: unknown phase %q (phases: %s)", name, strings.Join(Phases, ", "))
		}
	}
	res := &Results{Values: map[string]any{}, Summary: map[string]Summary{}}
	v := res.Values

	say("setting up: building the bare plugin, starting cores and targets")
	type latencyCase struct {
		c *Case
		n int
	}
	var latency []latencyCase
	add := func(c *Case, n int) {
		latency = append(latency, latencyCase{c, n})
	}
	var (
		warm     *Case
		warmD    *core.Dispatcher
		cold     *Case
		bareCase *BareCase
		cliCase  *CLICase
	)
	if want("floor") {
		floor, err := env.FloorCase()
		if err != nil {
			return nil, err
		}
		defer floor.Close()
		add(floor, p.Floor)
	}
	if want("warm") || want("memory") {
		if warm, warmD, _, err = env.WarmCase(); err != nil {
			return nil, err
		}
		defer warm.Close()
		if want("warm") {
			add(warm, p.Warm)
		}
	}
	if want("nsenter_cli") {
		nsenter, err := env.NsenterCase()
		if err != nil {
			return nil, err
		}
		defer nsenter.Close()
		add(nsenter, p.Nsenter)
	}
	if want("oneshot") {
		oneshot, err := env.OneshotCase()
		if err != nil {
			return nil, err
		}
		defer oneshot.Close()
		add(oneshot, p.Oneshot)
	}
	if want("cold") {
		if cold, err = env.ColdCase(); err != nil {
			return nil, err
		}
		defer cold.Close()
		add(cold, p.Cold)
	}
	if want("bare_plugin") || want("memory") {
		if bareCase, err = env.BarePluginCase(); err != nil {
			return nil, err
		}
		defer bareCase.Close()
		if want("bare_plugin") {
			add(bareCase.Case, p.Bare)
		}
	}

	if want("cli_standalone") {
		if cliCase, err = env.CLICase(); err != nil {
			return nil, err
		}
		defer cliCase.Close()
		add(cliCase.Case, p.CLI)
	}

	var cliDaemon *CLICase
	if want("daemon") {
		daemon, err := env.StartDaemon()
		if err != nil {
			return nil, err
		}
		defer daemon.Close()
		call, err := env.DaemonCallCase(daemon)
		if err != nil {
			return nil, err
		}
		add(call, p.Daemon)
		relay, err := env.DaemonRelayCase(daemon)
		if err != nil {
			return nil, err
		}
		add(relay, p.Daemon)
		grpcCall, err := env.DaemonGRPCCallCase(daemon)
		if err != nil {
			return nil, err
		}
		add(grpcCall, p.Daemon)
		if cliDaemon, err = env.CLIDaemonCase(daemon); err != nil {
			return nil, err
		}
		add(cliDaemon.Case, p.CLI)
	}

	// Two untimed operations each: page cache, first-use allocations.
	for _, l := range latency {
		if _, err := l.c.Sample(2, nil); err != nil {
			return nil, err
		}
	}
	if bareCase != nil {
		bareCase.Splits = bareCase.Splits[:0]
	}
	if cliCase != nil {
		cliCase.Splits = cliCase.Splits[:0]
	}
	if cliDaemon != nil {
		cliDaemon.Splits = cliDaemon.Splits[:0]
	}

	// Memory: one warm instance, and the core over MemRequests requests.
	if want("memory") {
		say("memory: %d sequential warm requests", p.MemRequests)
		if err := memoryPhase(cfg, p, warm, warmD, bareCase, res); err != nil {
			return nil, err
		}
	}

	// Latency, interleaved so that the machine's noise falls on every
	// case alike: each round takes its share of every case's samples,
	// the order rotating from round to round.
	samples := make(map[string][]time.Duration)
	for r := 0; r < p.Rounds && len(latency) > 0; r++ {
		say("latency round %d/%d", r+1, p.Rounds)
		for i := range latency {
			l := latency[(i+r)%len(latency)]
			n := l.n / p.Rounds
			if r == p.Rounds-1 {
				n = l.n - n*(p.Rounds-1)
			}
			if samples[l.c.Name], err = l.c.Sample(n, samples[l.c.Name]); err != nil {
				return nil, err
			}
		}
	}
	for name, s := range samples {
		sum := Summarize(s)
		res.Summary[name] = sum
		v[name+"_p50_us"] = us(sum.P50)
		v[name+"_p90_us"] = us(sum.P90)
		v[name+"_p99_us"] = us(sum.P99)
		v[name+"_min_us"] = us(sum.Min)
		v[name+"_mean_us"] = us(sum.Mean)
		v[name+"_n"] = sum.N
	}
	if want("bare_plugin") {
		split := Summarize(bareCase.Splits)
		res.Summary["bare_plugin_start_call"] = split
		v["bare_plugin_start_call_p50_us"] = us(split.P50)
	}

	if cliCase != nil {
		pairs := Summarize(cliCase.Splits)
		res.Summary["cli_standalone_nsenter"] = pairs
		v["cli_standalone_nsenter_p50_us"] = us(pairs.P50)
		if pairs.P50 > 0 {
			v["cli_standalone_vs_nsenter_cli"] = round(float64(res.Summary["cli_standalone"].P50)/float64(pairs.P50), 2)
		}
	}

	// The daemon's two ways in, against the in-process warm path of the
	// same run.
	if w := res.Summary["warm"].P50; w > 0 {
		for _, name := range []string{"daemon_call", "daemon_relay", "daemon_grpc_call"} {
			if s, ok := res.Summary[name]; ok {
				v[name+"_vs_warm"] = round(float64(s.P50)/float64(w), 2)
			}
		}
	}

	if cliDaemon != nil {
		pairs := Summarize(cliDaemon.Splits)
		res.Summary["cli_daemon_nsenter"] = pairs
		v["cli_daemon_nsenter_p50_us"] = us(pairs.P50)
		if pairs.P50 > 0 {
			v["cli_daemon_vs_nsenter_cli"] = round(float64(res.Summary["cli_daemon"].P50)/float64(pairs.P50), 2)
		}
	}

	if cold != nil && cfg.ProfileDir != "" && p.ColdProfile > 0 {
		say("profiling %d cold starts", p.ColdProfile)
		err := profile(filepath.Join(cfg.ProfileDir, "cold.pprof"), func() error {
			_, err := cold.Sample(p.ColdProfile, nil)
			return err
		})
		if err != nil {
			return nil, err
		}
	}

	// Throughput: warm instances in 16 targets, many callers.
	if want("throughput") {
		say("throughput: starting %d targets", ThroughputTargets[len(ThroughputTargets)-1])
		pool, err := env.NewPool(ThroughputTargets[len(ThroughputTargets)-1])
		if err != nil {
			return nil, err
		}
		for _, targets := range ThroughputTargets {
			for _, callers := range ThroughputCallers {
				say("throughput: %d callers over %d targets", callers, targets)
				rps, err := pool.Throughput(callers, targets, p.ThroughputWarmup, p.ThroughputDur)
				if err != nil {
					return nil, err
				}
				v[fmt.Sprintf("throughput_%dx%d_rps", callers, targets)] = round(rps, 0)
			}
		}
		v["throughput_1_rps"] = v["throughput_1x1_rps"]
		v["throughput_64_rps"] = v["throughput_64x16_rps"]
		// What one more instance costs: the memfd's text and data are
		// shared by every instance, so with 16 of them PSS (each shared
		// page divided among its users) is the marginal cost.
		var pss, anon int64
		insts := pool.D.Instances()
		for _, in := range insts {
			for _, pid := range []int{in.PID, in.RunnerPID} {
				if m, err := ReadProcMem(strconv.Itoa(pid)); err == nil {
					pss += m.PSS
					anon += m.RSSAnon
				}
				if in.RunnerPID == in.PID {
					break
				}
			}
		}
		if len(insts) > 0 {
			v["pool_instances"] = len(insts)
			v["instance_pss_in_pool_mib"] = MiB(pss / int64(len(insts)))
			v["instance_anon_in_pool_mib"] = MiB(anon / int64(len(insts)))
		}
	}

	// The storm: many new targets at once (see storm.go).
	if want("storm") {
		if err := stormPhase(env, cfg.Mode, say, v); err != nil {
			return nil, err
		}
	}

	// Scale: the cost of a target, up to hundreds of them (scale.go).
	if want("scale") {
		if err := scalePhase(env, p, say, v); err != nil {
			return nil, err
		}
	}

	res.Checks = checks(v)
	pass := map[string]bool{}
	for _, c := range res.Checks {
		pass[c.Name] = c.Pass
	}
	v["checks"] = pass
	v["mode"] = cfg.Mode
	v["rounds"] = p.Rounds
	v["go"] = runtime.Version()
	v["cpus"] = runtime.NumCPU()
	v["gomaxprocs"] = runtime.GOMAXPROCS(0)
	v["kernel"] = kernelRelease()
	if rev, modified := vcsRevision(); rev != "" {
		v["commit"] = rev
		v["commit_modified"] = modified
	}
	v["date"] = time.Now().UTC().Format(time.RFC3339)
	v["duration_s"] = round(time.Since(begin).Seconds(), 1)

	if cfg.Out != nil {
		PrintTable(cfg.Out, cfg.Mode, res)
	}
	if cfg.ResultsPath != "" {
		data, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(cfg.ResultsPath, append(data, '\n'), 0o644); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// memoryPhase reads the RSS of the warm instance, and the core's RSS
// before and after p.MemRequests sequential warm requests, each way:
// as it stands, and after a forced GC that returns freed memory to the
// system. The requests' latencies are kept as warm_long_*.
func memoryPhase(cfg Config, p Params, warm *Case, d *core.Dispatcher, bc *BareCase, res *Results) error {
	v := res.Values
	// The latencies' slice is touched before the first reading: its
	// pages must not count as growth.
	lat := make([]time.Duration, p.MemRequests)
	for i := range lat {
		lat[i] = 1
	}
	lat = lat[:0]
	// The core grows by about a MiB over its first tens of thousands of
	// requests (heap spans and runtime metadata touched once as the heap
	// cycles towards its goal) and then stays flat (checked over 400,000
	// requests): "before" is read after MemWarmup requests, so that the
	// growth measured is what is left, a leak. The initial RSS is kept too.
	initial, err := ReadProcMem("self")
	if err != nil {
		return err
	}
	if _, err := warm.Sample(p.MemWarmup, nil); err != nil {
		return err
	}
	before, err := ReadProcMem("self")
	if err != nil {
		return err
	}
	freeOSMemory()
	beforeGC, err := ReadProcMem("self")
	if err != nil {
		return err
	}
	var inst *core.InstanceInfo
	for _, in := range d.Instances() {
		if slices.Contains(in.Plugins, "procfs") {
			inst = &in
		}
	}
	if inst == nil {
		return fmt.Errorf("memory: no live procfs instance: %+v", d.Instances())
	}
	// CPU per request on each side, over the same requests.
	var coreCPU, pluginCPU time.Duration
	var coreCS, pluginCS int64
	servingPID := strconv.Itoa(inst.PID)
	run := func() error {
		core0, plugin0 := SelfCPU(), taskCPU(inst)
		coreCS0, pluginCS0 := ContextSwitches("self"), ContextSwitches(servingPID)
		var err error
		lat, err = warm.Sample(p.MemRequests, lat)
		coreCPU, pluginCPU = SelfCPU()-core0, taskCPU(inst)-plugin0
		coreCS, pluginCS = ContextSwitches("self")-coreCS0, ContextSwitches(servingPID)-pluginCS0
		return err
	}
	if cfg.ProfileDir != "" {
		err = profile(filepath.Join(cfg.ProfileDir, "warm.pprof"), run)
	} else {
		err = run()
	}
	if err != nil {
		return err
	}
	after, err := ReadProcMem("self")
	if err != nil {
		return err
	}
	freeOSMemory()
	afterGC, err := ReadProcMem("self")
	if err != nil {
		return err
	}
	growth := func(a, b ProcMem) float64 { return round(100*float64(b.RSS-a.RSS)/float64(a.RSS), 2) }
	v["core_requests"] = p.MemRequests
	v["core_warmup_requests"] = p.MemWarmup
	v["core_rss_initial_mib"] = MiB(initial.RSS)
	v["core_rss_before_mib"] = MiB(before.RSS)
	v["core_rss_after_mib"] = MiB(after.RSS)
	v["core_rss_growth_pct"] = growth(before, after)
	v["core_rss_gc_before_mib"] = MiB(beforeGC.RSS)
	v["core_rss_gc_after_mib"] = MiB(afterGC.RSS)
	v["core_rss_growth_gc_pct"] = growth(beforeGC, afterGC)

	long := Summarize(lat)
	res.Summary["warm_long"] = long
	v["warm_long_p50_us"] = us(long.P50)
	v["warm_long_p99_us"] = us(long.P99)

	n := time.Duration(p.MemRequests)
	v["warm_core_cpu_us_per_req"] = us(coreCPU / n)
	v["warm_plugin_cpu_us_per_req"] = us(pluginCPU / n)
	v["warm_core_ctxsw_per_req"] = round(float64(coreCS)/float64(p.MemRequests), 2)
	v["warm_plugin_ctxsw_per_req"] = round(float64(pluginCS)/float64(p.MemRequests), 2)

	// The instance, after serving all of that.
	m, err := ReadProcMem(strconv.Itoa(inst.PID))
	if err != nil {
		return fmt.Errorf("memory: instance pid %d: %w", inst.PID, err)
	}
	v["instance_rss_mib"] = MiB(m.RSS)
	v["instance_rss_anon_mib"] = MiB(m.RSSAnon)
	v["instance_rss_file_mib"] = MiB(m.RSSFile)
	v["instance_rss_shmem_mib"] = MiB(m.RSSShmem)
	v["instance_pss_mib"] = MiB(m.PSS)
	if inst.RunnerPID != inst.PID {
		if w, err := ReadProcMem(strconv.Itoa(inst.RunnerPID)); err == nil {
			v["instance_waiter_rss_mib"] = MiB(w.RSS)
		}
	}
	// go-plugin's own floor, for comparison: the bare plugin after its
	// first call.
	bm, err := bc.MeasureRSS()
	if err != nil {
		return err
	}
	v["bare_plugin_rss_mib"] = MiB(bm.RSS)
	v["bare_plugin_rss_anon_mib"] = MiB(bm.RSSAnon)
	return nil
}

// taskCPU is the CPU time of an instance: its serving process and, when
// it forked into a pid namespace, the waiter.
func taskCPU(inst *core.InstanceInfo) time.Duration {
	t, _ := TaskCPU(inst.PID)
	if inst.RunnerPID != inst.PID {
		w, _ := TaskCPU(inst.RunnerPID)
		t += w
	}
	return t
}

// vcsRevision is the commit the binary was built from when the go command
// stamped it, else the checkout in the working directory (best effort:
// the binary may be older than the checkout).
func vcsRevision() (rev string, modified bool) {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if rev != "" {
		return rev, modified
	}
	out, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		return "", false
	}
	// Changes to go files outside bench/ would make it another build.
	dirty := exec.Command("git", "diff", "--quiet", "HEAD", "--", "*.go", "*.c", "*.h", ":!bench").Run() != nil
	return strings.TrimSpace(string(out)), dirty
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func profile(path string, fn func() error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	err = fn()
	pprof.StopCPUProfile()
	return err
}

func freeOSMemory() {
	runtime.GC()
	debug.FreeOSMemory()
}
