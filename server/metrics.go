package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/wire"
)

// Metrics are the daemon's Prometheus metrics, in a registry of their own
// (never the process-wide default one, so that an embedding program's
// metrics do not mix with them), served over HTTP on /metrics by Serve:
//
//	nsplug_requests_total{type,result}          counter: Call requests ended, by message type and
//	                                            result ("ok", or the errno name: "ENOENT", "EACCES")
//	nsplug_request_duration_seconds{type}       histogram: how long each Call took, whatever its result
//	                                            (buckets from 20µs, a warm request, to 10s)
//	nsplug_requests_in_flight                   gauge: Call requests being served now
//	nsplug_denials_total{reason}                counter: calls refused by authorization, by what was
//	                                            missing ("type", "target", ...)
//	nsplug_instances{plugin}                    gauge: live plugin processes, read at each scrape
//	nsplug_instance_starts_total{plugin}        counter: plugin instances started
//	nsplug_instance_start_failures_total{plugin} counter: starts that failed
//	nsplug_instance_start_duration_seconds{plugin} histogram: how long a successful cold start took
//	nsplug_instance_exits_total{plugin,reason}  counter: instances ended, by reason: "crashed" (exited
//	                                            of itself, or broke mid-request), "killed" (a request's
//	                                            deadline or cancellation the handler ignored), "evicted"
//	                                            (max_instances), "idle" (idle_timeout), "closed"
//	                                            (shutdown, reload), "done" (a oneshot instance)
//
// plus the standard go_* and process_* collectors. The type label is
// a registered message type or "other": a client cannot grow the metrics
// by sending made-up type names; nor the result label with errno numbers
// that have no name (they count as "other").
type Metrics struct {
	dispatcher func() *core.Dispatcher
	reg        *prometheus.Registry

	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	inFlight      prometheus.Gauge
	denials       *prometheus.CounterVec
	instances     *prometheus.Desc
	starts        *prometheus.CounterVec
	startFailures *prometheus.CounterVec
	startDuration *prometheus.HistogramVec
	exits         *prometheus.CounterVec
	transports    [3]prometheus.Counter // by transport: viaGRPC, viaFast, viaChannel
	channels      prometheus.Gauge

	known atomic.Pointer[knownTypes]
}

// RequestBuckets are the bounds of nsplug_request_duration_seconds: a
// warm request takes tens of microseconds, a cold one tens of
// milliseconds, a slow handler up to its request_timeout.
var RequestBuckets = []float64{
	20e-6, 50e-6, 100e-6, 200e-6, 500e-6,
	1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3, 200e-3, 500e-3,
	1, 2, 5, 10,
}

// startBuckets are the bounds of nsplug_instance_start_duration_seconds:
// a cold start takes milliseconds, a slow one up to its start_timeout.
var startBuckets = []float64{1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3, 200e-3, 500e-3, 1, 2, 5, 10, 30}

// The values of nsplug_requests_total's labels for what has no name of
// its own.
const (
	resultOK    = "ok"
	labelOther  = "other" // a type not registered, an errno without a name
	resultNoErr = "error" // an error without an errno
)

// NewMetrics makes the daemon's metrics. dispatcher returns the core
// whose instances nsplug_instances counts and whose types label requests
// (it may change on reload, and be nil before the first one).
func NewMetrics(dispatcher func() *core.Dispatcher) *Metrics {
	m := &Metrics{
		dispatcher: dispatcher,
		reg:        prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nsplug_requests_total",
			Help: `Call requests ended, by message type ("other" for an unregistered one) and result ("ok" or the errno name).`,
		}, []string{"type", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "nsplug_request_duration_seconds",
			Help:    "How long Call requests took, whatever their result, by message type.",
			Buckets: RequestBuckets,
		}, []string{"type"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "nsplug_requests_in_flight",
			Help: "Call requests being served.",
		}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nsplug_denials_total",
			Help: "Calls refused by authorization, by what the caller lacked.",
		}, []string{"reason"}),
		instances: prometheus.NewDesc("nsplug_instances",
			"Live plugin processes, by plugin.", []string{"plugin"}, nil),
		starts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nsplug_instance_starts_total",
			Help: "Plugin instances started, by plugin.",
		}, []string{"plugin"}),
		startFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nsplug_instance_start_failures_total",
			Help: "Plugin instance starts that failed, by plugin.",
		}, []string{"plugin"}),
		startDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "nsplug_instance_start_duration_seconds",
			Help:    "How long successful cold starts took, by plugin.",
			Buckets: startBuckets,
		}, []string{"plugin"}),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nsplug_instance_exits_total",
			Help: "Plugin instances ended, by plugin and reason: crashed, killed, evicted, idle, closed, done.",
		}, []string{"plugin", "reason"}),
	}
	byTransport := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nsplug_requests_by_transport_total",
		Help: `Call requests begun, by the transport they came over: "grpc", "fast" (the fast path, api/fast) or "channel" (a direct channel, counted as its handler reports them).`,
	}, []string{"transport"})
	m.transports = [3]prometheus.Counter{viaGRPC: byTransport.WithLabelValues("grpc"), viaFast: byTransport.WithLabelValues("fast"),
		viaChannel: byTransport.WithLabelValues("channel")}
	m.channels = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nsplug_channels_open",
		Help: "Direct channels open (api/fast, Channels).",
	})
	m.reg.MustRegister(m.requests, m.duration, m.inFlight, m.denials, instanceCollector{m},
		m.starts, m.startFailures, m.startDuration, m.exits, byTransport, m.channels,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// knownTypes are the message types of one dispatcher, which label
// requests, with their series looked up once (the warm path of a request
// is tens of microseconds: no label hashing on it).
type knownTypes struct {
	d     *core.Dispatcher
	types map[string]*typeSeries
	other *typeSeries
}

type typeSeries struct {
	label    string
	duration prometheus.Observer
	ok       prometheus.Counter
}

func (m *Metrics) series(typ string) *typeSeries {
	return &typeSeries{label: typ, duration: m.duration.WithLabelValues(typ), ok: m.requests.WithLabelValues(typ, resultOK)}
}

// current returns the dispatcher and its types, read again when the
// dispatcher changed (a reload). The first look at a dispatcher also
// makes its plugins' counters exist at zero, so that a first crash shows
// as an increase.
func (m *Metrics) current() (*core.Dispatcher, *knownTypes) {
	d := m.dispatcher()
	if k := m.known.Load(); k != nil && k.d == d {
		return d, k
	}
	k := &knownTypes{d: d, types: make(map[string]*typeSeries), other: m.series(labelOther)}
	if d != nil {
		for _, t := range d.Types() {
			k.types[t.Name] = m.series(t.Name)
		}
		for _, p := range d.Plugins() {
			m.starts.WithLabelValues(p.Name)
			m.startFailures.WithLabelValues(p.Name)
			for k := core.InstanceStarted; k.String() != "unknown"; k++ {
				if k.Ends() {
					m.exits.WithLabelValues(p.Name, k.String())
				}
			}
		}
	}
	m.known.Store(k)
	return d, k
}

// StartCall accounts for one Call request of message type typ, from
// now: it is in flight until the returned func is called with the
// request's outcome (nil, or an error carrying its errno, as core's
// errors and a denial do), which records its duration and result. Call
// it for every request, denied ones too (their result is EACCES).
func (m *Metrics) StartCall(typ string) (done func(err error)) {
	_, known := m.current()
	ts := known.types[typ]
	if ts == nil {
		ts = known.other
	}
	m.inFlight.Inc()
	began := time.Now()
	var ended atomic.Bool
	return func(err error) {
		if ended.Swap(true) {
			return // once
		}
		m.inFlight.Dec()
		ts.duration.Observe(time.Since(began).Seconds())
		if err == nil {
			ts.ok.Inc()
		} else {
			m.requests.WithLabelValues(ts.label, resultOf(err)).Inc()
		}
	}
}

// resultOf is the result label of a request's outcome.
func resultOf(err error) string {
	if err == nil {
		return resultOK
	}
	e := wire.AsError(err)
	if e.Errno == 0 {
		return resultNoErr
	}
	if name := unix.ErrnoName(e.Errno); name != "" {
		return name
	}
	return labelOther
}

// ChannelServed is the core.Options.ChannelServed that counts a direct
// channel's requests in nsplug_requests_total as their handler reports
// them (about once a second); their durations are the client's to
// measure, so the histogram has none of them.
func (m *Metrics) ChannelServed() func(core.ChannelServed) {
	return func(s core.ChannelServed) {
		_, known := m.current()
		ts := known.types[s.Type]
		if ts == nil {
			ts = known.other
		}
		failed := uint64(0)
		for errno, n := range s.Errors {
			failed += n
			m.requests.WithLabelValues(ts.label, resultOf(wire.Errorf(errno, ""))).Add(float64(n))
		}
		if s.Requests > failed {
			ts.ok.Add(float64(s.Requests - failed))
		}
		m.transports[viaChannel].Add(float64(s.Requests))
	}
}

// Over counts a Call request begun over transport t.
func (m *Metrics) Over(t transport) { m.transports[t].Inc() }

// Denied counts a call refused by authorization; reason is a fixed word
// for what the caller lacked ("type", "target", ...), never input.
func (m *Metrics) Denied(reason string) { m.denials.WithLabelValues(reason).Inc() }

// CoreEvents is the core.Options.Events that keeps the instance counters.
func (m *Metrics) CoreEvents() func(core.Event) {
	return func(ev core.Event) {
		switch {
		case ev.Kind == core.InstanceStarted:
			m.starts.WithLabelValues(ev.Plugin).Inc()
			m.startDuration.WithLabelValues(ev.Plugin).Observe(ev.Duration.Seconds())
		case ev.Kind == core.InstanceStartFailed:
			m.startFailures.WithLabelValues(ev.Plugin).Inc()
		case ev.Kind.Ends():
			m.exits.WithLabelValues(ev.Plugin, ev.Kind.String()).Inc()
		}
	}
}

// instanceCollector reports nsplug_instances from Dispatcher.Instances at
// each scrape: the pool's own count, which no event can get out of step
// with. Every configured plugin is reported, 0 when it has none.
type instanceCollector struct{ m *Metrics }

func (c instanceCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.m.instances }

func (c instanceCollector) Collect(ch chan<- prometheus.Metric) {
	d, _ := c.m.current()
	if d == nil {
		return
	}
	count := make(map[string]int)
	for _, in := range d.Instances() {
		count[in.Plugin]++
	}
	for _, p := range d.Plugins() {
		ch <- prometheus.MustNewConstMetric(c.m.instances, prometheus.GaugeValue, float64(count[p.Name]), p.Name)
	}
}

// Handler serves the metrics in the Prometheus text format (or
// OpenMetrics, when asked), with promhttp's own counters of it.
func (m *Metrics) Handler() http.Handler {
	return promhttp.InstrumentMetricHandler(m.reg, promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		Registry:            m.reg, // promhttp_metric_handler_errors_total
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
		EnableOpenMetrics:   true,
	}))
}

// metricsSocketMode is the unix socket's mode: only the daemon's user
// connects. Prometheus scrapes TCP; the socket form is for an agent or
// proxy that runs as that user, so other local users see nothing (on a
// loopback TCP port every local user can read the metrics).
const metricsSocketMode = 0o600

// Serve serves /metrics over HTTP on addr, a [server] metrics_address as
// package config validates it: a loopback host:port, or the absolute path
// of a unix socket (mode 0600). An address in use is an error that says
// so; a socket file that nothing listens on (a daemon that died) is
// replaced. stop ends the server, waiting for scrapes in progress within
// ctx, and removes the socket file.
func (m *Metrics) Serve(addr string) (stop func(ctx context.Context) error, err error) {
	ln, cleanup, err := listenMetrics(addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	return func(ctx context.Context) error {
		err := srv.Shutdown(ctx)
		if err != nil {
			srv.Close() // scrapes still in progress
		}
		<-served
		cleanup()
		return err
	}, nil
}

// listenMetrics listens on a metrics address; cleanup removes what the
// listener left on disk.
func listenMetrics(addr string) (ln net.Listener, cleanup func(), err error) {
	if !filepath.IsAbs(addr) {
		ln, err := net.Listen("tcp", addr)
		if errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, fmt.Errorf("metrics_address %s: the address is in use by another process", addr)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("metrics_address %s: %w", addr, err)
		}
		return ln, func() {}, nil
	}
	return listenUnix(addr)
}

// listenUnix listens on a unix socket at path. The socket is bound under
// a temporary name in path's directory, given its mode, then renamed onto
// path, so that path never names a socket with a wider mode, and a stale
// one is replaced at once. cleanup removes path if it is still this
// socket.
func listenUnix(path string) (net.Listener, func(), error) {
	fail := func(format string, args ...any) (net.Listener, func(), error) {
		return nil, nil, fmt.Errorf("metrics_address %s: "+format, append([]any{path}, args...)...)
	}
	if len(path) > maxSunPath {
		return fail("longer than a unix socket's path may be (%d bytes)", maxSunPath)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return fail("exists and is not a socket; not replacing it")
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return fail("the socket is in use by another process")
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fail("%v", err)
	}
	dir, err := os.OpenFile(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return fail("%v", err)
	}
	defer dir.Close()
	dfd, tmp := int(dir.Fd()), ".metrics-"+strconv.Itoa(os.Getpid())
	unix.Unlinkat(dfd, tmp, 0) // a leftover of a predecessor with this pid
	// Through the directory's fd: the temporary name may not fit in a
	// sun_path beside a long path.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: fmt.Sprintf("/proc/self/fd/%d/%s", dfd, tmp), Net: "unix"})
	if err != nil {
		return fail("%v", err)
	}
	ln.SetUnlinkOnClose(false) // the socket lives at path, removed by cleanup
	if err := unix.Fchmodat(dfd, tmp, metricsSocketMode, 0); err != nil {
		ln.Close()
		unix.Unlinkat(dfd, tmp, 0)
		return fail("%v", err)
	}
	if err := unix.Renameat(dfd, tmp, dfd, filepath.Base(path)); err != nil {
		ln.Close()
		unix.Unlinkat(dfd, tmp, 0)
		return fail("%v", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		ln.Close()
		return fail("%v", err)
	}
	cleanup := func() {
		// Not a socket some other daemon put there since.
		if now, err := os.Lstat(path); err == nil && os.SameFile(fi, now) {
			os.Remove(path)
		}
	}
	return ln, cleanup, nil
}

// maxSunPath is the longest path a unix socket address holds.
const maxSunPath = len(unix.RawSockaddrUnix{}.Path) - 1
