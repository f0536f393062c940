package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// lastNum is the last element of a list of numbers in v, 0 if none.
// pauseNote is one target's p50 after the caller's pauses (pausePhase).
func pauseNote(v map[string]any) string {
	pauses, _ := v["scale_pause_us"].([]int)
	p50s, _ := v["scale_p50_after_pause_us"].([]float64)
	if len(pauses) == 0 || len(pauses) != len(p50s) {
		return ""
	}
	var b strings.Builder
	b.WriteString("after a pause of")
	for i, p := range pauses {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, " %d µs %.1f", p, p50s[i])
	}
	fmt.Fprintf(&b, " µs (guest_halt_poll_ns %v)", v["guest_halt_poll_ns"])
	return b.String()
}

func lastNum(v map[string]any, key string) float64 {
	switch l := v[key].(type) {
	case []float64:
		if len(l) > 0 {
			return l[len(l)-1]
		}
	case []int:
		if len(l) > 0 {
			return float64(l[len(l)-1])
		}
	}
	return 0
}

func num(v map[string]any, key string) float64 {
	switch x := v[key].(type) {
	case float64:
		return x
	case int:
		return float64(x)
	case int64:
		return float64(x)
	}
	return 0
}

// checks evaluates the targets on one run's values.
func checks(v map[string]any) []Check {
	warm, nsenter, floor := num(v, "warm_p50_us"), num(v, "nsenter_cli_p50_us"), num(v, "floor_p50_us")
	cold, bare, oneshot := num(v, "cold_p50_us"), num(v, "bare_plugin_p50_us"), num(v, "oneshot_p50_us")
	tp1, tp64 := num(v, "throughput_1_rps"), num(v, "throughput_64_rps")
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return round(a/b, 2)
	}
	type check struct {
		Check
		needs []string
	}
	all := []check{
		{Check{Name: "warm p50 <= nsenter_cli p50 / 40", Value: warm, Limit: round(nsenter/40, 1), Unit: "µs", AtMost: true,
			Note: fmt.Sprintf("nsenter_cli/warm = %.1fx (want >= 40x)", ratio(nsenter, warm))},
			[]string{"warm_p50_us", "nsenter_cli_p50_us"}},
		{Check{Name: "warm p50 <= 3 x floor p50", Value: warm, Limit: round(3*floor, 1), Unit: "µs", AtMost: true,
			Note: fmt.Sprintf("warm/floor = %.1fx (want <= 3x)", ratio(warm, floor))},
			[]string{"warm_p50_us", "floor_p50_us"}},
		{Check{Name: "cold p50 <= 1.2 x bare_plugin p50", Value: cold, Limit: round(1.2*bare, 1), Unit: "µs", AtMost: true,
			Note: fmt.Sprintf("cold/bare_plugin = %.2fx (want <= 1.2x)", ratio(cold, bare))},
			[]string{"cold_p50_us", "bare_plugin_p50_us"}},
		{Check{Name: "oneshot p50 <= nsenter_cli p50", Value: oneshot, Limit: nsenter, Unit: "µs", AtMost: true,
			Note: fmt.Sprintf("oneshot/nsenter_cli = %.2fx (want <= 1x)", ratio(oneshot, nsenter))},
			[]string{"oneshot_p50_us", "nsenter_cli_p50_us"}},
		{Check{Name: "cli_standalone p50 <= 3 x nsenter_cli p50", Value: num(v, "cli_standalone_p50_us"), Limit: round(3*num(v, "cli_standalone_nsenter_p50_us"), 1), Unit: "µs", AtMost: true,
			Note: fmt.Sprintf("cli_standalone/nsenter_cli = %.2fx over paired runs (want <= 3x)", num(v, "cli_standalone_vs_nsenter_cli"))},
			[]string{"cli_standalone_p50_us", "cli_standalone_nsenter_p50_us"}},
		{Check{Name: "daemon_call p50 <= 1.5 x warm p50", Value: num(v, "daemon_call_p50_us"), Limit: round(1.5*warm, 1), Unit: "µs", AtMost: true,
			Note: fmt.Sprintf("daemon_call (on a direct channel)/warm = %.2fx (want <= 1.5x); relayed by the daemon: %.2fx", ratio(num(v, "daemon_call_p50_us"), warm), ratio(num(v, "daemon_relay_p50_us"), warm))},
			[]string{"daemon_call_p50_us", "warm_p50_us"}},
		{Check{Name: "daemon_call p50 <= nsenter_cli p50 / 25", Value: num(v, "daemon_call_p50_us"), Limit: round(nsenter/25, 1), Unit: "µs", AtMost: true,
			Note: fmt.Sprintf("nsenter_cli/daemon_call = %.1fx (want >= 25x)", ratio(nsenter, num(v, "daemon_call_p50_us")))},
			[]string{"daemon_call_p50_us", "nsenter_cli_p50_us"}},
		{Check{Name: "cli_daemon p50 <= nsenter_cli p50", Value: num(v, "cli_daemon_p50_us"), Limit: num(v, "cli_daemon_nsenter_p50_us"), Unit: "µs", AtMost: true,
			Note: fmt.Sprintf("cli_daemon/nsenter_cli = %.2fx over paired runs (want <= 1x)", num(v, "cli_daemon_vs_nsenter_cli"))},
			[]string{"cli_daemon_p50_us", "cli_daemon_nsenter_p50_us"}},
		{Check{Name: "throughput 64 callers/16 targets >= 1.6 x 1 caller", Value: tp64, Limit: round(1.6*tp1, 0), Unit: "req/s",
			Note: fmt.Sprintf("64x16 / 1x1 = %.2fx (want >= 1.6x)", ratio(tp64, tp1))},
			[]string{"throughput_1_rps", "throughput_64_rps"}},
		{Check{Name: "warm instance RSS <= 12 MiB", Value: num(v, "instance_rss_mib"), Limit: 12, Unit: "MiB", AtMost: true,
			Note: fmt.Sprintf("anon %.1f + shmem %.1f + file (text) %.1f MiB; bare go-plugin plugin %.1f MiB", num(v, "instance_rss_anon_mib"), num(v, "instance_rss_shmem_mib"), num(v, "instance_rss_file_mib"), num(v, "bare_plugin_rss_mib"))},
			[]string{"instance_rss_mib"}},
		{Check{Name: "per-target PSS <= 4 MiB", Value: num(v, "per_target_pss_mib"), Limit: 4, Unit: "MiB", AtMost: true,
			Note: fmt.Sprintf("every built-in warm, %v requests each, waiters included", v["scale_requests"])},
			[]string{"per_target_pss_mib"}},
		{Check{Name: "instance anon <= 1.3 x bare go-plugin plugin", Value: num(v, "instance_anon_mib"), Limit: round(1.3*num(v, "bare_plugin_anon_mib"), 2), Unit: "MiB", AtMost: true,
			Note: fmt.Sprintf("bare plugin %.2f MiB after %v requests", num(v, "bare_plugin_anon_mib"), v["scale_requests"])},
			[]string{"instance_anon_mib", "bare_plugin_anon_mib"}},
		{Check{Name: "core RSS per target <= 256 KiB", Value: num(v, "core_rss_per_target_kib"), Limit: 256, Unit: "KiB", AtMost: true,
			Note: fmt.Sprintf("fds %.2f, goroutines %.2f per target", num(v, "core_fds_per_target"), num(v, "core_goroutines_per_target"))},
			[]string{"core_rss_per_target_kib"}},
		{Check{Name: "core fds per target <= 8", Value: num(v, "core_fds_per_target"), Limit: 8, Unit: "fds", AtMost: true},
			[]string{"core_fds_per_target"}},
		{Check{Name: "procfs.read p50 round-robin <= 1.3 x one target", Value: lastNum(v, "scale_p50_us"), Limit: round(1.3*num(v, "scale_p50_single_us"), 1), Unit: "µs", AtMost: true,
			Note: fmt.Sprintf("over %v targets; one target %.1f µs, %s; %s", lastNum(v, "scale_targets"), num(v, "scale_p50_single_us"), pauseNote(v), floorNote(v))},
			[]string{"scale_p50_us", "scale_p50_single_us"}},
		{Check{Name: fmt.Sprintf("core RSS growth over %v requests <= 5 %%", v["core_requests"]), Value: num(v, "core_rss_growth_pct"), Limit: 5, Unit: "%", AtMost: true,
			Note: fmt.Sprintf("%.1f -> %.1f MiB; with GC before reading: %+.2f %%", num(v, "core_rss_before_mib"), num(v, "core_rss_after_mib"), num(v, "core_rss_growth_gc_pct"))},
			[]string{"core_rss_growth_pct"}},
	}
	var out []Check
next:
	for _, c := range all {
		for _, k := range c.needs {
			if _, ok := v[k]; !ok {
				continue next // not measured in this run
			}
		}
		if c.AtMost {
			c.Pass = c.Value <= c.Limit
		} else {
			c.Pass = c.Value >= c.Limit
		}
		out = append(out, c.Check)
	}
	if c, ok := stormCheck(v); ok {
		out = append(out, c)
	}
	return out
}

// PrintTable writes the run's table: latencies, throughput, memory and
// the targets, each pass or fail.
func PrintTable(w io.Writer, mode string, r *Results) {
	v := r.Values
	commit := ""
	if c, ok := v["commit"].(string); ok && len(c) >= 12 {
		commit = ", commit " + c[:12]
		if v["commit_modified"] == true {
			commit += "+changes"
		}
	}
	fmt.Fprintf(w, "nsplug bench: mode %s, %v rounds, %v CPUs (GOMAXPROCS %v), linux %v, %v%s, %v, took %vs\n\n",
		mode, v["rounds"], v["cpus"], v["gomaxprocs"], v["kernel"], v["go"], commit, v["date"], v["duration_s"])

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "latency (µs)\tn\tp50\tp90\tp99\tmin\tmean\tp50 vs floor\t")
	floor := r.Summary["floor"].P50
	for _, name := range []string{"floor", "warm", "nsenter_cli", "oneshot", "cold", "bare_plugin", "bare_plugin_start_call", "cli_standalone", "cli_standalone_nsenter", "daemon_call", "daemon_relay", "daemon_grpc_call", "cli_daemon", "cli_daemon_nsenter", "warm_long"} {
		s, ok := r.Summary[name]
		if !ok {
			continue
		}
		label := name
		switch name {
		case "bare_plugin_start_call":
			label = "  (bare: until the call returned, no kill)"
		case "cli_standalone_nsenter":
			label = "  (cli: the nsenter_cli run paired with each)"
		case "cli_daemon_nsenter":
			label = "  (cli_daemon: the nsenter_cli run paired with each)"
		case "warm_long":
			label = fmt.Sprintf("  (warm: %d in a row, memory phase)", s.N)
		}
		rel := ""
		if floor > 0 {
			rel = fmt.Sprintf("%.1fx", float64(s.P50)/float64(floor))
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n", label, s.N, f1(s.P50), f1(s.P90), f1(s.P99), f1(s.Min), f1(s.Mean), rel)
	}
	tw.Flush()
	if _, ok := v["warm_core_cpu_us_per_req"]; ok {
		fmt.Fprintf(w, "\nper warm request (memory phase): CPU core %.1f µs, plugin instance %.1f µs; context switches core %.2f, plugin %.2f\n",
			num(v, "warm_core_cpu_us_per_req"), num(v, "warm_plugin_cpu_us_per_req"), num(v, "warm_core_ctxsw_per_req"), num(v, "warm_plugin_ctxsw_per_req"))
	}

	if _, ok := v["throughput_1_rps"]; ok {
		printThroughput(w, v)
	}
	if _, ok := v["instance_rss_mib"]; ok {
		printMemory(w, v)
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "target\tvalue\tlimit\tresult\t")
	for _, c := range r.Checks {
		res := "FAIL"
		if c.Pass {
			res = "pass"
		}
		fmt.Fprintf(tw, "%s\t%s %s\t%s %s\t%s\t%s\n", c.Name, trim(c.Value), c.Unit, trim(c.Limit), c.Unit, res, c.Note)
	}
	tw.Flush()
}

func printThroughput(w io.Writer, v map[string]any) {
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := "throughput (req/s)\t"
	for _, t := range ThroughputTargets {
		header += fmt.Sprintf("%d target%s\t", t, plural(t))
	}
	fmt.Fprintln(tw, header)
	for _, c := range ThroughputCallers {
		row := fmt.Sprintf("%d caller%s\t", c, plural(c))
		for _, t := range ThroughputTargets {
			row += fmt.Sprintf("%.0f\t", num(v, fmt.Sprintf("throughput_%dx%d_rps", c, t)))
		}
		fmt.Fprintln(tw, row)
	}
	tw.Flush()
}

func printMemory(w io.Writer, v map[string]any) {
	fmt.Fprintln(w)
	fmt.Fprintf(w, "memory: warm instance (serving process) VmRSS %.2f MiB (anon %.2f, shmem %.2f, file %.2f; PSS %.2f)",
		num(v, "instance_rss_mib"), num(v, "instance_rss_anon_mib"), num(v, "instance_rss_shmem_mib"), num(v, "instance_rss_file_mib"), num(v, "instance_pss_mib"))
	if _, ok := v["instance_waiter_rss_mib"]; ok {
		fmt.Fprintf(w, ", its pid-namespace waiter %.2f MiB", num(v, "instance_waiter_rss_mib"))
	}
	fmt.Fprintf(w, "; bare go-plugin plugin %.2f MiB (anon %.2f)", num(v, "bare_plugin_rss_mib"), num(v, "bare_plugin_rss_anon_mib"))
	if _, ok := v["instance_pss_in_pool_mib"]; ok {
		fmt.Fprintf(w, "\n        per instance among %v warm ones (waiter included): PSS %.2f MiB, anon %.2f MiB", v["pool_instances"], num(v, "instance_pss_in_pool_mib"), num(v, "instance_anon_in_pool_mib"))
	}
	fmt.Fprintf(w, "\n        core (this process) over %v warm requests after %v to warm up (%.2f MiB at the first): %.2f -> %.2f MiB (%+.2f %%); GC'd before each reading: %.2f -> %.2f MiB (%+.2f %%)\n",
		v["core_requests"], v["core_warmup_requests"], num(v, "core_rss_initial_mib"), num(v, "core_rss_before_mib"), num(v, "core_rss_after_mib"), num(v, "core_rss_growth_pct"),
		num(v, "core_rss_gc_before_mib"), num(v, "core_rss_gc_after_mib"), num(v, "core_rss_growth_gc_pct"))
}

func f1(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Microsecond)) }

func trim(x float64) string {
	s := fmt.Sprintf("%.2f", x)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// floorNote is the same round-robin against a C process per target.
func floorNote(v map[string]any) string {
	rr, one := num(v, "scale_floor_p50_us"), num(v, "scale_floor_p50_single_us")
	if one == 0 {
		return "no floor measured"
	}
	return fmt.Sprintf("a C process per target: %.1f µs round-robin, %.1f µs one target (%.2fx)", rr, one, rr/one)
}
