package server

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/wire"
)

func noDispatcher() *core.Dispatcher { return nil }

// value is the value of the metric name with exactly the given labels in
// m's registry, and whether it exists.
func value(t *testing.T, m *Metrics, name string, labels ...string) (float64, bool) {
	t.Helper()
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, mt := range f.GetMetric() {
			if !hasLabels(mt, labels) {
				continue
			}
			switch {
			case mt.Counter != nil:
				return mt.Counter.GetValue(), true
			case mt.Gauge != nil:
				return mt.Gauge.GetValue(), true
			case mt.Histogram != nil:
				return float64(mt.Histogram.GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func hasLabels(mt *dto.Metric, labels []string) bool {
	if len(mt.GetLabel())*2 != len(labels) {
		return false
	}
	for i, l := range mt.GetLabel() {
		if l.GetName() != labels[2*i] || l.GetValue() != labels[2*i+1] {
			return false
		}
	}
	return true
}

// A request's result is "ok" or its errno's name; what a client could
// make up (a type that is not registered, an errno without a name) does
// not become a label of its own.
func TestMetricsLabelsAreBounded(t *testing.T) {
	m := NewMetrics(noDispatcher)
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, "ok"},
		{wire.Errorf(syscall.ENOENT, "no such file"), "ENOENT"},
		{wire.Errorf(syscall.EACCES, "denied"), "EACCES"},
		{&os.PathError{Op: "open", Path: "/x", Err: syscall.ENOTDIR}, "ENOTDIR"},
		{wire.Errorf(syscall.Errno(4000), "made up"), "other"},
		{io.EOF, "error"},
	} {
		m.StartCall("made.up")(c.err)
		if v, ok := value(t, m, "nsplug_requests_total", "result", c.want, "type", "other"); !ok || v != 1 {
			t.Errorf("%v: nsplug_requests_total{result=%q,type=\"other\"} = %v (present %v), want 1", c.err, c.want, v, ok)
		}
	}
	if v, _ := value(t, m, "nsplug_request_duration_seconds", "type", "other"); v != 6 {
		t.Errorf("duration samples: %v, want 6", v)
	}
	if _, ok := value(t, m, "nsplug_requests_total", "result", "ok", "type", "made.up"); ok {
		t.Error("an unregistered type became a label")
	}
}

// A request is in flight until its done func is called, once: a second
// call counts nothing.
func TestMetricsInFlight(t *testing.T) {
	m := NewMetrics(noDispatcher)
	done := m.StartCall("a")
	m.StartCall("b")
	if v, _ := value(t, m, "nsplug_requests_in_flight"); v != 2 {
		t.Errorf("in flight: %v, want 2", v)
	}
	done(nil)
	done(nil)
	if v, _ := value(t, m, "nsplug_requests_in_flight"); v != 1 {
		t.Errorf("in flight after one ended (its done called twice): %v, want 1", v)
	}
	if v, _ := value(t, m, "nsplug_requests_total", "result", "ok", "type", "other"); v != 1 {
		t.Errorf("requests: %v, want 1", v)
	}
	m.Denied("type")
	m.Denied("type")
	if v, _ := value(t, m, "nsplug_denials_total", "reason", "type"); v != 2 {
		t.Errorf("denials: %v, want 2", v)
	}
}

// unixClient is an HTTP client whose every connection goes to the unix
// socket at path (Prometheus itself scrapes only TCP).
func unixClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
}

func scrape(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, body)
	}
	return string(body)
}

// On a unix socket path, the metrics are served to its owner only (mode
// 0600), and stop removes the socket.
func TestMetricsServeUnixSocket(t *testing.T) {
	m := NewMetrics(noDispatcher)
	path := filepath.Join(t.TempDir(), "metrics.sock")
	stop, err := m.Serve(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket of mode 0600", fi.Mode())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".metrics-*")); len(left) > 0 {
		t.Errorf("temporary socket names left: %v", left)
	}
	m.StartCall("x")(wire.Errorf(syscall.ENOENT, "gone"))
	body := scrape(t, unixClient(path), "http://metrics/metrics")
	for _, want := range []string{`nsplug_requests_total{result="ENOENT",type="other"} 1`, "nsplug_requests_in_flight 0", "go_goroutines ", "process_open_fds "} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q:\n%s", want, body)
		}
	}
	if err := stop(context.Background()); err != nil {
		t.Errorf("stop: %v", err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after stop: %v", err)
	}
}

// A busy address is refused saying so; a socket nothing listens on (left
// by a daemon that died) is replaced; a file that is not a socket is left
// alone.
func TestMetricsServeAddresses(t *testing.T) {
	m := NewMetrics(noDispatcher)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if _, err := m.Serve(busy.Addr().String()); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Errorf("busy TCP address: %v, want an error saying it is in use", err)
	}

	dir := t.TempDir()
	sock := filepath.Join(dir, "m.sock")
	stop, err := m.Serve(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Serve(sock); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Errorf("busy socket: %v, want an error saying it is in use", err)
	}
	scrape(t, unixClient(sock), "http://metrics/metrics") // the first server still serves
	stop(context.Background())

	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	stop, err = m.Serve(stale)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	scrape(t, unixClient(stale), "http://metrics/metrics")
	stop(context.Background())

	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep"), 0o644)
	if _, err := m.Serve(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file: %v, want an error saying it is not a socket", err)
	}
	if data, _ := os.ReadFile(file); string(data) != "keep" {
		t.Errorf("the regular file was changed: %q", data)
	}
	long := "/" + strings.Repeat("x", maxSunPath)
	if _, err := m.Serve(long); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("path of %d bytes: %v", len(long), err)
	}
}

// BenchmarkStartCall is what accounting for one request costs the Call
// path: in flight, duration and result.
func BenchmarkStartCall(b *testing.B) {
	m := NewMetrics(noDispatcher)
	for b.Loop() {
		m.StartCall("procfs.read")(nil)
	}
}
