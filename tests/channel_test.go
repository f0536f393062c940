package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/nsplug/nsplug/api/fast"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/wire"
)

// openChannel opens a direct channel for typ to the target, failing the
// test on error; the channel is revoked and closed when the test ends.
func openChannel(t *testing.T, d *core.Dispatcher, pid int, typ string, opts core.ChannelOptions) (*core.Channel, *fast.Channel) {
	t.Helper()
	ch, err := d.OpenChannel(context.Background(), core.Request{PID: pid, Type: typ}, opts)
	if err != nil {
		t.Fatalf("OpenChannel %s: %v", typ, err)
	}
	c := fast.NewChannel(ch.File, typ)
	t.Cleanup(func() { ch.Close(); c.Close() })
	return ch, c
}

func errnoOfErr(err error) syscall.Errno {
	var we *wire.Error
	if errors.As(err, &we) {
		return we.Errno
	}
	var ce *core.Error
	if errors.As(err, &ce) {
		return ce.Errno
	}
	return 0
}

// A channel's requests run in the target's namespaces, in the instance
// that serves the type, without the core: the host sees the handler in
// the target's namespaces, and the core's counts say it served them.
func TestChannelServesInTheTargetsNamespaces(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, Hostname: "chan-target", MountProc: true})
	var mu sync.Mutex
	served := map[string]uint64{}
	failed := map[syscall.Errno]uint64{}
	d, _ := newDispatcherWith(t, "", core.Options{ChannelServed: func(s core.ChannelServed) {
		mu.Lock()
		defer mu.Unlock()
		served[s.Type] += s.Requests
		for errno, n := range s.Errors {
			failed[errno] += n
		}
	}})
	_, c := openChannel(t, d, target.PID(), "probe.whoami", core.ChannelOptions{})
	for i := 0; i < 50; i++ {
		out, files, err := c.Call(context.Background(), nil)
		if err != nil || len(files) != 0 {
			t.Fatalf("call %d on the channel: %v (%d files)", i, err, len(files))
		}
		var w whoami
		if err := json.Unmarshal(out, &w); err != nil || w.Hostname != "chan-target" || w.UID != 0 {
			t.Fatalf("the handler saw %s (%v), want hostname chan-target as root", out, err)
		}
	}
	h := servingPID(t, d, "probe")
	assertNamespaces(t, h, target.PID(), allNS)

	// Another type on this channel is refused by the handler, and counted.
	_, other := openChannel(t, d, target.PID(), "probe.errno", core.ChannelOptions{})
	if _, _, err := other.Call(context.Background(), []byte(`{"errno":2}`)); errnoOfErr(err) != syscall.ENOENT {
		t.Fatalf("probe.errno on its channel: %v, want ENOENT", err)
	}
	if n := liveInstances(d, "probe"); n != 1 {
		t.Errorf("%d probe instances serve two channels of one target, want the one", n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		got, gotErr := served["probe.whoami"], failed[syscall.ENOENT]
		mu.Unlock()
		if got == 50 && gotErr == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ChannelServed counted %d probe.whoami requests and %d ENOENT, want 50 and 1", got, gotErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func liveInstances(d *core.Dispatcher, plugin string) int {
	n := 0
	for _, in := range d.Instances() {
		for _, p := range in.Plugins {
			if p == plugin {
				n++
			}
		}
	}
	return n
}

// What a channel's holder sends is held to the grant: another type is
// refused, and files it attaches never reach the handler.
func TestChannelIsHeldToItsGrant(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d, _ := newDispatcher(t, "")
	ch, c := openChannel(t, d, target.PID(), "probe.whoami", core.ChannelOptions{})

	// A raw request of another type, written on the socket by hand.
	raw := fast.NewChannel(dupFile(t, ch), "probe.crash")
	defer raw.Close()
	_, _, err := raw.Call(context.Background(), nil)
	if errnoOfErr(err) != syscall.EACCES {
		t.Fatalf("probe.crash on a probe.whoami channel: %v, want EACCES", err)
	}
	// A frame carrying an fd: the handler reads with read(2), so the fd is
	// dropped; the request is still served.
	before := countFDsOf(t, servingPID(t, d, "probe"))
	frame, _ := wire.AppendFrame(nil, wire.FrameRequest, "x", mustMarshal(t, &wire.HandleRequest{Type: "probe.whoami", RequestId: "x", Payload: []byte("{}")}))
	if err := unix.Sendmsg(int(ch.File.Fd()), frame, unix.UnixRights(0), nil, 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, wire.MaxFrame)
	if n, err := unix.Read(int(ch.File.Fd()), buf); err != nil || n == 0 {
		t.Fatalf("no answer to a request with an fd attached: %v", err)
	}
	if after := countFDsOf(t, servingPID(t, d, "probe")); after > before {
		t.Errorf("the handler holds %d fds after a request with an fd attached, %d before", after, before)
	}
	if _, _, err := c.Call(context.Background(), nil); err != nil {
		t.Fatalf("the channel after that: %v", err)
	}
}

// A handler that hangs on a channel's request is killed as it would be
// on the core's own: the watch finds it overdue, the instance ends, the
// channel is revoked (EPIPE), and the next request gets a new instance.
func TestChannelHungHandlerIsKilled(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	var mu sync.Mutex
	var kinds []core.EventKind
	d, _ := newDispatcherWith(t, "[defaults]\nrequest_timeout = \"300ms\"\n", core.Options{Events: func(ev core.Event) {
		mu.Lock()
		kinds = append(kinds, ev.Kind)
		mu.Unlock()
	}})
	ch, c := openChannel(t, d, target.PID(), "probe.hang", core.ChannelOptions{})
	h := servingPID(t, d, "probe")
	began := time.Now()
	_, _, err := c.Call(context.Background(), nil)
	if errnoOfErr(err) != syscall.EPIPE {
		t.Fatalf("a hung request on a channel: %v, want EPIPE (revoked)", err)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("the hung request was ended after %v", took)
	}
	select {
	case <-ch.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the channel of a killed instance is not revoked")
	}
	waitGone(t, h, 5*time.Second)
	mu.Lock()
	killed := false
	for _, k := range kinds {
		killed = killed || k == core.InstanceKilled
	}
	mu.Unlock()
	if !killed {
		t.Errorf("events %v: no InstanceKilled", kinds)
	}
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, nil)
}

// A channel whose instance dies is revoked at once: its holder does not
// wait for an answer that cannot come.
func TestChannelOfACrashedInstanceIsRevoked(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d, _ := newDispatcher(t, "")
	ch, c := openChannel(t, d, target.PID(), "probe.whoami", core.ChannelOptions{})
	if _, _, err := c.Call(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	h := servingPID(t, d, "probe")
	if err := unix.Kill(h, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the channel of a crashed instance is not revoked")
	}
	if _, _, err := c.Call(context.Background(), nil); errnoOfErr(err) != syscall.EPIPE {
		t.Fatalf("a call on a revoked channel: %v, want EPIPE", err)
	}
}

// A channel holds its instance; once its holder closes its end the core
// lets go of it (within a watch interval), and it idles out as any other.
func TestClosedChannelReleasesItsInstance(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d, _ := newDispatcher(t, "[defaults]\nidle_timeout = \"500ms\"\n")
	ch, err := d.OpenChannel(context.Background(), core.Request{PID: target.PID(), Type: "probe.whoami"}, core.ChannelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h := servingPID(t, d, "probe")
	time.Sleep(1500 * time.Millisecond) // three idle timeouts
	if liveInstances(d, "probe") != 1 {
		t.Fatal("an instance with a channel open idled out")
	}
	ch.File.Close() // the holder lets go; the core still holds its copy
	select {
	case <-ch.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the core did not notice the holder closed its channel")
	}
	waitGone(t, h, 5*time.Second)
}

// Mode oneshot has no instance to hold a channel to.
func TestChannelNeedsAWarmInstance(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"probe\"\nmode = \"oneshot\"\n")
	_, err := d.OpenChannel(context.Background(), core.Request{PID: target.PID(), Type: "probe.whoami"}, core.ChannelOptions{})
	wantErrno(t, err, syscall.EOPNOTSUPP, "oneshot")
}

func dupFile(t *testing.T, ch *core.Channel) *os.File {
	t.Helper()
	fd, err := unix.FcntlInt(ch.File.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), "dup")
}

func countFDsOf(t *testing.T, pid int) int {
	t.Helper()
	fds, err := listFDs(pid)
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A channel's caller sends one request at a time, of at most the grant's
// size: a request over it is refused (EIO, naming the limit), and parts
// of two requests interleaved end the channel, whose handler holds none
// of them.
func TestChannelBoundsWhatItsCallerSends(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d, _ := newDispatcher(t, "")
	ch, c := openChannel(t, d, target.PID(), "probe.whoami", core.ChannelOptions{MaxRequestBytes: 100 << 10})
	_, _, err := c.Call(context.Background(), []byte(`{"pad":"`+strings.Repeat("x", 200<<10)+`"}`))
	if errnoOfErr(err) != syscall.EIO || !strings.Contains(err.Error(), "channel's limit of 102400 bytes") {
		t.Fatalf("a request of 200 KiB on a channel of 100 KiB: %v", err)
	}
	if _, _, err := c.Call(context.Background(), nil); err != nil {
		t.Fatalf("the channel after a request over its limit: %v", err)
	}
	fd := int(ch.File.Fd())
	for _, id := range []string{"a", "b"} {
		frame, _ := wire.AppendFrame(nil, wire.FrameRequestPart, id, []byte("part"))
		if _, err := unix.Write(fd, frame); err != nil {
			t.Fatal(err)
		}
	}
	unix.SetNonblock(fd, false)
	buf := make([]byte, wire.MaxFrame)
	if n, err := unix.Read(fd, buf); n != 0 || err != nil {
		t.Fatalf("after two requests' parts interleaved the channel reads %d bytes (%v), want its end", n, err)
	}
	select {
	case <-ch.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the core did not let go of a channel its handler ended")
	}
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, nil)
}

// A channel is granted for a target process: once it exits, the channel
// is revoked even where the instance lives on (here it joined the target's
// uts namespace alone, so the target's end does not end it).
func TestChannelOfAnExitedTargetIsRevoked(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Hostname: "gone-soon", MountProc: true})
	d, _ := newDispatcher(t, "")
	ch, err := d.OpenChannel(context.Background(), core.Request{PID: target.PID(), Type: "probe.whoami", Namespaces: []string{"uts"}}, core.ChannelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := fast.NewChannel(ch.File, "probe.whoami")
	defer c.Close()
	h := servingPID(t, d, "probe")
	if err := target.Close(); err != nil {
		t.Logf("closing the target: %v", err)
	}
	select {
	case <-ch.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the channel of an exited target is not revoked")
	}
	if _, _, err := c.Call(context.Background(), nil); errnoOfErr(err) != syscall.EPIPE {
		t.Errorf("a call on it: %v, want EPIPE", err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", h)); err != nil {
		t.Errorf("the instance is gone too (%v): this test no longer tells the target's end from the instance's", err)
	}
}

// Closing a channel ends its caller's Call in flight at once, whatever
// the handler is doing.
func TestClosingAChannelEndsItsCall(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d, _ := newDispatcher(t, "")
	_, c := openChannel(t, d, target.PID(), "probe.wait", core.ChannelOptions{Timeout: 5 * time.Second})
	done := make(chan error, 1)
	go func() {
		_, _, err := c.Call(context.Background(), nil)
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if errnoOfErr(err) != syscall.EPIPE {
			t.Errorf("the call in flight when its channel closed: %v, want EPIPE", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("closing the channel did not end the call in flight")
	}
}

// A caller that closes its channel in the middle of a request ends that
// request in the handler, as a caller of the core's that gives up does:
// the handler's context is cancelled then, not at the grant's timeout.
func TestChannelCallerGoneEndsItsRequest(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	var mu sync.Mutex
	var served []core.ChannelServed
	d, _ := newDispatcherWith(t, "", core.Options{ChannelServed: func(s core.ChannelServed) {
		mu.Lock()
		served = append(served, s)
		mu.Unlock()
	}})
	ch, err := d.OpenChannel(context.Background(), core.Request{PID: target.PID(), Type: "probe.wait"}, core.ChannelOptions{Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	frame, _ := wire.AppendFrame(nil, wire.FrameRequest, "1", mustMarshal(t, &wire.HandleRequest{Type: "probe.wait", RequestId: "1", Payload: []byte("{}")}))
	if _, err := unix.Write(int(ch.File.Fd()), frame); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the handler is waiting in probe.wait
	ch.File.Close()
	began := time.Now()
	for {
		mu.Lock()
		n := len(served)
		mu.Unlock()
		if n > 0 {
			break
		}
		if time.Since(began) > 10*time.Second {
			t.Fatal("the request of a caller that closed its channel was not ended (no counts within 10 s; the grant's timeout is 30 s)")
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	failed := uint64(0)
	for _, n := range served[0].Errors {
		failed += n
	}
	if s := served[0]; s.Requests != 1 || failed != 1 {
		t.Errorf("counts %+v, want one request, ended in error (cancelled)", s)
	}
}
