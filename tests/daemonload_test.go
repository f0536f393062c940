package tests

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/nsplug/nsplug/api/fast"
	apiv1 "github.com/nsplug/nsplug/api/v1"
	apisvc "github.com/nsplug/nsplug/api/v1/service"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/server"
)

// loadDuration is how long TestDaemonUnderLoad keeps its clients calling:
// 30 s, or $NSPLUG_LOAD_DURATION (a Go duration) for a shorter or longer
// run by hand.
func loadDuration(t *testing.T) time.Duration {
	if s := os.Getenv("NSPLUG_LOAD_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("NSPLUG_LOAD_DURATION: %v", err)
		}
		return d
	}
	return 30 * time.Second
}

// 64 concurrent clients, each on its own connection (half over gRPC, a
// quarter on the fast path, a quarter on direct channels), call the daemon over 16 targets for 30 s: no
// call fails, and afterwards the daemon holds no more fds, goroutines,
// threads, processes or socket files than once its targets were warm, and
// its memory stays bounded. (Serial: it takes both CPUs.)
func TestDaemonUnderLoad(t *testing.T) {
	const clients, targets = 64, 16
	metrics := freeLoopbackAddr(t)
	d := startDaemon(t, fmt.Sprintf("metrics_address = %q", metrics), "")
	var pids []int
	for range targets {
		pids = append(pids, newTarget(t, sandbox.Options{Hostname: "load", MountProc: true}).PID())
	}
	kinds := []struct{ typ, payload string }{
		{"procfs.read", `{"path":"/proc/sys/kernel/hostname"}`},
		{"sysctl.get", `{"name":"kernel.hostname"}`},
		{"procfs.stat", `{"path":"/proc/self"}`},
	}
	call := func(c apisvc.NsplugClient, i int) error {
		k := kinds[i%len(kinds)]
		_, err := c.Call(context.Background(), &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(pids[i%targets])}, Type: k.typ, Payload: []byte(k.payload)})
		return err
	}
	warm := d.client(t)
	for i := range targets * len(kinds) {
		if err := call(warm, i); err != nil {
			t.Fatalf("warming: %v", err)
		}
	}
	// A first round of the same load (not judged) lets the pools and caches
	// reach their size; then the judged one.
	load(t, d.addr, clients, time.Now().Add(2*time.Second), call)
	before := daemonUsage(t, d, metrics)
	calls, failures, firstErr := load(t, d.addr, clients, time.Now().Add(loadDuration(t)), call)
	t.Logf("%d calls by %d clients over %d targets, %d failed", calls, clients, targets, failures)
	if failures > 0 {
		t.Errorf("%d of %d calls failed, the first: %v", failures, calls, firstErr)
	}
	if calls < clients {
		t.Errorf("only %d calls in all", calls)
	}

	// The clients' connections are closed: what the daemon held for them
	// must be gone too.
	after := daemonUsage(t, d, metrics)
	for deadline := time.Now().Add(20 * time.Second); !after.within(before) && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		after = daemonUsage(t, d, metrics)
	}
	t.Logf("before the load: %+v; after: %+v", before, after)
	if !after.within(before) {
		t.Errorf("the daemon grew under load: before %+v, after %+v; fds %v", before, after, d.fdList())
	}
}

// usage is what the daemon holds.
type usage struct {
	FDs, Goroutines, Threads, Children, RuntimeEntries int
	RSSKiB                                             int
}

// within reports whether u holds no more than base, but for fds, which
// may differ by a pidfd or two (a target's cached pin is renewed every
// second, and a renewal caught mid-way holds both), memory and
// threads, which may grow to twice base (the heap finds its size, and the
// Go runtime keeps the threads it made, idle), and goroutines, which may
// differ by the couple the runtime and gRPC start and stop on their own.
func (u usage) within(base usage) bool {
	return u.FDs <= base.FDs+2 && u.Goroutines <= base.Goroutines+2 && u.Threads <= 2*base.Threads &&
		u.Children <= base.Children && u.RuntimeEntries <= base.RuntimeEntries && u.RSSKiB <= 2*base.RSSKiB
}

// daemonUsage reads the daemon's fds, threads and children from /proc,
// its goroutines from its own metrics (go_goroutines).
func daemonUsage(t *testing.T, d *daemon, metrics string) usage {
	t.Helper()
	u := usage{FDs: d.fds(t), Children: len(childrenOf(d.pid()))}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.pid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			switch f[0] {
			case "Threads:":
				u.Threads, _ = strconv.Atoi(f[1])
			case "VmRSS:":
				u.RSSKiB, _ = strconv.Atoi(f[1])
			}
		}
	}
	ents, _ := os.ReadDir(d.runDir)
	u.RuntimeEntries = len(ents)
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			u.Goroutines, _ = strconv.Atoi(v)
		}
	}
	io.Copy(io.Discard, resp.Body)
	return u
}

// load runs clients callers, each on its own connection (half of them
// over gRPC, a quarter on the fast path, a quarter on direct channels
// opened on the fast path), each calling call(c, i) for i =
// its index, +clients, ... until deadline; their connections are closed
// when it returns.
func load(t *testing.T, addr string, clients int, deadline time.Time, call func(apisvc.NsplugClient, int) error) (calls, failures int64, firstErr error) {
	t.Helper()
	var n, failed atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	var conns []io.Closer
	for k := range clients {
		var c apisvc.NsplugClient
		if k%2 == 1 {
			fc, err := fast.Dial(addr)
			if err != nil {
				t.Fatal(err)
			}
			c = fastNsplug{c: fc}
			var closer io.Closer = fc
			if k%4 == 3 {
				cn := channelNsplug{c: fast.NewChannels(fc, 0)}
				c, closer = cn, cn
			}
			conns = append(conns, closer)
		} else {
			_, conn, err := server.Dial(addr)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, conn)
			c = apisvc.NewNsplugClient(conn)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := k; time.Now().Before(deadline); i += clients {
				if err := call(c, i); err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err)
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	for _, c := range conns {
		c.Close()
	}
	firstErr, _ = first.Load().(error)
	return n.Load(), failed.Load(), firstErr
}

// fastNsplug is a fast-path client as an apisvc.NsplugClient, for Call
// alone (the other calls are gRPC's only).
type fastNsplug struct {
	apisvc.NsplugClient // nil
	c                   *fast.Client
}

func (f fastNsplug) Call(ctx context.Context, in *apiv1.CallRequest, _ ...grpc.CallOption) (*apiv1.CallResponse, error) {
	resp, files, err := f.c.Call(ctx, in)
	for _, file := range files {
		file.Close()
	}
	return resp, err
}

// channelNsplug calls through fast.Channels: a direct channel per target
// and type, opened on first use on its fast-path connection.
type channelNsplug struct {
	apisvc.NsplugClient // nil
	c                   *fast.Channels
}

func (f channelNsplug) Close() error { return f.c.Close() }

func (f channelNsplug) Call(ctx context.Context, in *apiv1.CallRequest, _ ...grpc.CallOption) (*apiv1.CallResponse, error) {
	resp, files, err := f.c.Call(ctx, in)
	for _, file := range files {
		file.Close()
	}
	return resp, err
}
