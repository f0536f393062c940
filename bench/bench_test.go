package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsplug/nsplug/plugins/builtin"
)

// The Benchmark functions time the same operations as Run, one per
// benchmark, under `go test -bench . ./bench/`. They only run with -bench;
// the Tests below are quick and assert no timing.

func TestMain(m *testing.M) {
	// The core starts procfs by re-executing this test binary.
	builtin.Main()
	os.Exit(m.Run())
}

func newEnv(tb testing.TB) *Env {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root")
	}
	env, err := NewEnv()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(env.Close)
	return env
}

// runCase times c.Op b.N times (c.Prep, if any, outside the timer).
func runCase(b *testing.B, c *Case, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Sample(1, nil); err != nil { // warm-up, untimed
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if c.Prep != nil {
			b.StopTimer()
			if err := c.Prep(); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		if err := c.Op(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFloor: a direct host read of the file plus one unix-socket
// echo round trip.
func BenchmarkFloor(b *testing.B) {
	c, err := newEnv(b).FloorCase()
	runCase(b, c, err)
}

// BenchmarkWarm: sequential requests to one warm pooled instance.
func BenchmarkWarm(b *testing.B) {
	c, _, _, err := newEnv(b).WarmCase()
	runCase(b, c, err)
}

// BenchmarkOneshot: one fresh plugin process per request.
func BenchmarkOneshot(b *testing.B) {
	c, err := newEnv(b).OneshotCase()
	runCase(b, c, err)
}

// BenchmarkCold: the first request into a new target (target creation
// not timed).
func BenchmarkCold(b *testing.B) {
	c, err := newEnv(b).ColdCase()
	runCase(b, c, err)
}

// BenchmarkBarePlugin: start, handshake, call and kill of a bare
// go-plugin plugin.
func BenchmarkBarePlugin(b *testing.B) {
	bc, err := newEnv(b).BarePluginCase()
	var c *Case
	if bc != nil {
		c = bc.Case
	}
	runCase(b, c, err)
}

// BenchmarkNsenterCLI: nsenter -t PID -a cat FILE per request.
func BenchmarkNsenterCLI(b *testing.B) {
	c, err := newEnv(b).NsenterCase()
	runCase(b, c, err)
}

// BenchmarkCLIStandalone: a whole `nsplug call --pid PID procfs.read`
// process per request (each after an untimed nsenter, as in Run).
func BenchmarkCLIStandalone(b *testing.B) {
	cc, err := newEnv(b).CLICase()
	var c *Case
	if cc != nil {
		c = cc.Case
	}
	runCase(b, c, err)
}

// daemonCase runs a case against a real nsplug serve, started for it.
func daemonCase(b *testing.B, mk func(*Env, *Daemon) (*Case, error)) {
	env := newEnv(b)
	d, err := env.StartDaemon()
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	c, err := mk(env, d)
	runCase(b, c, err)
}

// BenchmarkDaemonCall: requests from this process on a direct channel the
// daemon opened (daemon_call).
func BenchmarkDaemonCall(b *testing.B) { daemonCase(b, (*Env).DaemonCallCase) }

// BenchmarkDaemonRelay: the same requests as Calls through the daemon's
// fast path (daemon_relay).
func BenchmarkDaemonRelay(b *testing.B) { daemonCase(b, (*Env).DaemonRelayCase) }

// BenchmarkThroughput: b.N requests spread over concurrent callers and
// warm instances in 1 or 16 targets; reports requests per second.
func BenchmarkThroughput(b *testing.B) {
	env := newEnv(b)
	pool, err := env.NewPool(ThroughputTargets[len(ThroughputTargets)-1])
	if err != nil {
		b.Fatal(err)
	}
	for _, targets := range ThroughputTargets {
		for _, callers := range ThroughputCallers {
			b.Run(fmt.Sprintf("callers=%d/targets=%d", callers, targets), func(b *testing.B) {
				start := time.Now()
				if err := pool.Requests(b.N, callers, targets); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
			})
		}
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 100; i++ {
		d = append(d, time.Duration(i))
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50}, {99, 99}, {100, 100}, {1, 1}, {0, 1}} {
		if got := Percentile(d, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	s := Summarize([]time.Duration{3, 1, 2})
	if s.N != 3 || s.Min != 1 || s.P50 != 2 || s.Max != 3 || s.Mean != 2 {
		t.Errorf("Summarize = %+v", s)
	}
}

func TestChecks(t *testing.T) {
	v := map[string]any{
		"warm_p50_us": 100.0, "nsenter_cli_p50_us": 3000.0, "floor_p50_us": 40.0,
		"cold_p50_us": 8000.0, "bare_plugin_p50_us": 7000.0, "oneshot_p50_us": 9000.0,
		"throughput_1_rps": 1000.0, "throughput_64_rps": 1700.0,
		"instance_rss_mib": 11.0, "core_rss_growth_pct": 6.0,
		"cli_standalone_p50_us": 16000.0, "cli_standalone_nsenter_p50_us": 5000.0,
	}
	want := []bool{false, true, true, false, false, true, true, false}
	cs := checks(v)
	if len(cs) != len(want) {
		t.Fatalf("%d checks, want %d", len(cs), len(want))
	}
	for i, c := range cs {
		if c.Pass != want[i] {
			t.Errorf("%s: value %v limit %v: pass %v, want %v", c.Name, c.Value, c.Limit, c.Pass, want[i])
		}
	}
}

// TestRunSmoke runs the whole suite with a handful of samples: every case
// works, the table prints, results.json has every key. No timing is
// asserted.
func TestRunSmoke(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if testing.Short() {
		t.Skip("starts targets and plugin processes, builds the bare plugin")
	}
	out := filepath.Join(t.TempDir(), "results.json")
	var table bytes.Buffer
	_, err := Run(Config{
		Mode: "smoke",
		Params: Params{
			Rounds: 1, Floor: 20, Warm: 20, Nsenter: 2, Oneshot: 1, Cold: 2, Bare: 2, CLI: 2,
			MemRequests: 50, MemWarmup: 10, ThroughputWarmup: 20 * time.Millisecond, ThroughputDur: 50 * time.Millisecond,
			ScaleTargets: []int{1, 2}, ScaleSamples: 20, ScaleRequests: 5,
		},
		Out:         &table,
		ResultsPath: out,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", table.String())
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"nsenter_cli_p50_us", "oneshot_p50_us", "warm_p50_us", "warm_p99_us", "cold_p50_us",
		"bare_plugin_p50_us", "floor_p50_us", "throughput_1_rps", "throughput_64_rps", "instance_rss_mib", "core_rss_growth_pct",
		"storm_256_s", "storm_ratio", "storm_cold_target_ms",
		"cli_standalone_p50_us", "cli_standalone_nsenter_p50_us", "cli_standalone_vs_nsenter_cli"} {
		x, ok := got[k].(float64)
		if !ok {
			t.Errorf("results.json: %s missing or not a number: %v", k, got[k])
		} else if x <= 0 && k != "core_rss_growth_pct" {
			t.Errorf("results.json: %s = %v", k, x)
		}
	}
	for _, want := range []string{"warm p50 <= nsenter_cli p50 / 40", "cli_standalone p50 <= 3 x nsenter_cli p50", "throughput (req/s)", "memory:"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q", want)
		}
	}
}
