package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/internal/spawner"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/server"
	"github.com/nsplug/nsplug/wire"
)

// freeLoopbackAddr is a loopback TCP address nothing listens on now.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// prometheusServer is a real Prometheus (Debian's prometheus package),
// started by the test on loopback.
type prometheusServer struct {
	addr   string
	client *http.Client
}

// startPrometheus starts Prometheus scraping target every second; it is
// stopped and reaped when the test ends, its storage removed.
func startPrometheus(t *testing.T, target string) *prometheusServer {
	t.Helper()
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("the metrics test scrapes with a real Prometheus: install Debian's prometheus package (%v)", err)
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: nsplug
    static_configs:
      - targets: [%q]
`, target)), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &prometheusServer{addr: freeLoopbackAddr(t), client: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}}
	logPath := filepath.Join(dir, "prometheus.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+p.addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // from the spawner thread: see internal/spawner
	if err := spawner.Start(cmd); err != nil {
		t.Fatalf("starting prometheus: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("prometheus's log:\n%s", out)
		}
	})
	waitFor(t, "prometheus to be ready", func() bool {
		select {
		case err := <-exited:
			exited <- err
			out, _ := os.ReadFile(logPath)
			t.Fatalf("prometheus exited: %v\n%s", err, out)
		default:
		}
		resp, err := p.client.Get("http://" + p.addr + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// query evaluates an instant PromQL query through Prometheus's HTTP API
// and returns each series' value, keyed by its labels as "k=v,..."
// (sorted as Prometheus sorts them; "" for a series without labels).
func (p *prometheusServer) query(t *testing.T, q string) map[string]float64 {
	t.Helper()
	resp, err := p.client.Get("http://" + p.addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil || r.Status != "success" || r.Data.ResultType != "vector" {
		t.Fatalf("query %s: %s %v (%s)", q, resp.Status, err, body)
	}
	out := make(map[string]float64)
	for _, s := range r.Data.Result {
		var labels []string
		for _, k := range slices.Sorted(maps.Keys(s.Metric)) {
			if k != "__name__" && k != "instance" && k != "job" {
				labels = append(labels, k+"="+s.Metric[k])
			}
		}
		v, _ := s.Value[1].(string)
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			t.Fatalf("query %s: value %q: %v", q, v, err)
		}
		out[strings.Join(labels, ",")] = f
	}
	return out
}

// waitValue waits until the query's series with labels has the value
// want, as Prometheus scraped it.
func (p *prometheusServer) waitValue(t *testing.T, q, labels string, want float64) {
	t.Helper()
	var got map[string]float64
	deadline := time.Now().Add(30 * time.Second)
	for {
		got = p.query(t, q)
		if v, ok := got[labels]; ok && v == want {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("prometheus: %s {%s} = %v, want %v", q, labels, got, want)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A real Prometheus scrapes the daemon's metrics, served from a real
// dispatcher doing real requests in a sandbox target (through the
// Metrics API, as the gRPC service calls it): requests by type and
// result, a quantile of the duration histogram, instance starts, exits
// and count, denials and requests in flight all read as they happened.
func TestMetricsScrapedByPrometheus(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{})
	var current atomic.Pointer[core.Dispatcher]
	m := server.NewMetrics(current.Load)
	d, _ := newDispatcherWith(t, "[[plugin]]\nname = \"probe\"\nrequest_timeout = \"5m\"\n"+ownProcess, core.Options{Events: m.CoreEvents()})
	current.Store(d)
	addr := freeLoopbackAddr(t)
	stop, err := m.Serve(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(context.Background()); err != nil {
			t.Errorf("stopping the metrics server: %v", err)
		}
	})

	call := func(ctx context.Context, typ, payload string) error {
		done := m.StartCall(typ)
		_, err := d.Dispatch(ctx, core.Request{PID: target.PID(), Type: typ, Payload: []byte(payload)})
		done(err)
		return err
	}
	for range 5 {
		if err := call(context.Background(), "probe.whoami", `{}`); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		wantErrno(t, call(context.Background(), "probe.errno", `{"errno": 2}`), syscall.ENOENT)
	}
	wantErrno(t, call(context.Background(), "no.such.type", `{}`), syscall.EOPNOTSUPP)
	// A denied call, as the service accounts for one.
	m.Denied("type")
	m.StartCall("probe.whoami")(wire.Errorf(syscall.EACCES, "denied"))
	// A crash, then a fresh instance.
	wantErrno(t, call(context.Background(), "probe.crash", `{}`), syscall.EIO)
	if err := call(context.Background(), "probe.whoami", `{}`); err != nil {
		t.Fatal(err)
	}
	// One request stays in flight while Prometheus scrapes.
	ctx, cancel := context.WithCancel(context.Background())
	waited := make(chan error, 1)
	done := m.StartCall("probe.wait")
	go func() {
		_, err := d.Dispatch(ctx, core.Request{PID: target.PID(), Type: "probe.wait"})
		done(err)
		waited <- err
	}()
	defer func() { cancel(); <-waited }()

	p := startPrometheus(t, addr)
	p.waitValue(t, `up{job="nsplug"}`, "", 1)
	p.waitValue(t, "nsplug_requests_in_flight", "", 1)
	requests := "nsplug_requests_total"
	p.waitValue(t, requests, "result=ok,type=probe.whoami", 6)
	p.waitValue(t, requests, "result=EACCES,type=probe.whoami", 1)
	p.waitValue(t, requests, "result=ENOENT,type=probe.errno", 2)
	p.waitValue(t, requests, "result=EIO,type=probe.crash", 1)
	p.waitValue(t, requests, "result=ENOTSUP,type=other", 1) // EOPNOTSUPP: the same number, which the errno table names ENOTSUP
	p.waitValue(t, `nsplug_request_duration_seconds_count{type="probe.whoami"}`, "type=probe.whoami", 7)
	p.waitValue(t, "nsplug_denials_total", "reason=type", 1)
	p.waitValue(t, "nsplug_instance_starts_total", "plugin=probe", 2)
	p.waitValue(t, "nsplug_instance_exits_total", "plugin=probe,reason=crashed", 1)
	p.waitValue(t, "nsplug_instance_exits_total", "plugin=probe,reason=evicted", 0)
	p.waitValue(t, "nsplug_instances", "plugin=probe", 1)
	p.waitValue(t, "nsplug_instances", "plugin=procfs", 0)
	p.waitValue(t, `nsplug_instance_start_duration_seconds_count{plugin="probe"}`, "plugin=probe", 2)

	// The median of seven whoami requests, five of them warm: within the
	// histogram's range, and no more than the slowest (the cold one).
	quantile := func(q float64) float64 {
		res := p.query(t, fmt.Sprintf(`histogram_quantile(%g, sum by (le) (nsplug_request_duration_seconds_bucket{type="probe.whoami"}))`, q))
		v, ok := res[""]
		if !ok || math.IsNaN(v) {
			t.Fatalf("quantile %g: %v", q, res)
		}
		return v
	}
	median, top := quantile(0.5), quantile(1)
	t.Logf("probe.whoami through Prometheus: median %.6fs, slowest below %.6fs", median, top)
	if median <= 0 || median > server.RequestBuckets[len(server.RequestBuckets)-1] || median > top {
		t.Errorf("median %v, slowest %v: want 0 < median <= slowest <= 10s", median, top)
	}
	for _, std := range []string{"go_goroutines", "process_open_fds"} {
		if v := p.query(t, std); len(v) != 1 || v[""] <= 0 {
			t.Errorf("%s: %v, want one positive value", std, v)
		}
	}

	cancel()
	wantErrno(t, <-waited, syscall.ECANCELED)
	waited <- nil // for the deferred wait
	p.waitValue(t, "nsplug_requests_in_flight", "", 0)
	p.waitValue(t, requests, "result=ECANCELED,type=probe.wait", 1)
}
