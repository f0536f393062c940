package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsplug/nsplug/api/fast"
	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/sandbox"
)

// Direct channels through the daemon (api/fast, "Channels"): the client's
// requests reach the handler in the target's namespaces with no daemon on
// the way, are counted in the metrics as the handler reports them, and
// stop being served the moment the daemon reloads; a type that changes
// state is never put on a channel; nothing is left in the daemon.
func TestDaemonChannel(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Hostname: "chan-daemon", MountProc: true})
	metrics := freeLoopbackAddr(t)
	d := startDaemon(t, fmt.Sprintf("metrics_address = %q", metrics), "")
	g := d.client(t)
	client, err := fast.Dial(d.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	tg := &apiv1.Target{Pid: int32(target.PID())}
	ch, err := client.OpenChannel(context.Background(), &apiv1.CallRequest{Target: tg, Type: "procfs.read"})
	if err != nil {
		t.Fatalf("OpenChannel: %v", err)
	}
	const n = 200
	for i := 0; i < n; i++ {
		out, _, err := ch.Call(context.Background(), []byte(`{"path":"/proc/sys/kernel/hostname"}`))
		if err != nil {
			t.Fatalf("call %d on the channel: %v", i, err)
		}
		var r struct{ Data []byte }
		if err := json.Unmarshal(out, &r); err != nil || string(r.Data) != "chan-daemon\n" {
			t.Fatalf("procfs.read on the channel: %s %v", out, err)
		}
	}
	var serving int
	for _, in := range d.instances(t, g) {
		if slices.Contains(in.Plugins, "procfs") {
			serving = int(in.Pid)
			if in.Channels != 1 || in.Inflight != 1 {
				t.Errorf("the instance serving the channel reports %d channels, %d in flight; want 1 and 1", in.Channels, in.Inflight)
			}
		}
	}
	assertNamespaces(t, serving, target.PID(), noUserNS)
	if got := scrape(t, metrics, "nsplug_channels_open"); got != 1 {
		t.Errorf("nsplug_channels_open = %v, want 1", got)
	}
	// The handler reports what it served about once a second.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if got := scrape(t, metrics, `nsplug_requests_by_transport_total{transport="channel"}`); got == n {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("channel requests counted: %v, want %d", got, n)
		}
	}

	// A type that changes state is audited call by call: no channel.
	_, err = client.OpenChannel(context.Background(), &apiv1.CallRequest{Target: tg, Type: "mount.mount"})
	if errnoOfErr(err) != syscall.EOPNOTSUPP || !strings.Contains(err.Error(), "changes state") {
		t.Errorf("a channel for mount.mount: %v, want EOPNOTSUPP", err)
	}

	// A reload revokes every channel, even one that changes no plugin.
	orig, _ := os.ReadFile(d.conf)
	if err := os.WriteFile(d.conf, []byte(strings.Replace(string(orig), "[server]", "[server]\nshutdown_grace = \"3s\"", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(t, "reloaded", 1)
	if _, _, err := ch.Call(context.Background(), []byte(`{"path":"/proc/uptime"}`)); errnoOfErr(err) != syscall.EPIPE {
		t.Fatalf("a channel after a reload: %v, want EPIPE (revoked)", err)
	}
	ch.Close()
	// A new one serves, and closing it leaves the daemon as it was.
	if _, _, err := client.Call(context.Background(), &apiv1.CallRequest{Target: tg, Type: "procfs.read", Payload: []byte(`{"path":"/proc/uptime"}`)}); err != nil {
		t.Fatal(err)
	}
	fdsBefore := d.fds(t)
	again, err := client.OpenChannel(context.Background(), &apiv1.CallRequest{Target: tg, Type: "procfs.read"})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := again.Call(context.Background(), []byte(`{"path":"/proc/uptime"}`)); err != nil {
		t.Fatal(err)
	}
	again.Close()
	for deadline := time.Now().Add(10 * time.Second); d.fds(t) > fdsBefore; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("daemon: %d fds after its channel closed, %d before: %v", d.fds(t), fdsBefore, d.fdList())
		}
	}
	if got := scrape(t, metrics, "nsplug_channels_open"); got != 0 {
		t.Errorf("nsplug_channels_open = %v after closing them all, want 0", got)
	}

	// SIGTERM with a channel open: revoked, the daemon exits 0 and leaves
	// nothing in runtime_dir.
	last, err := client.OpenChannel(context.Background(), &apiv1.CallRequest{Target: tg, Type: "procfs.read"})
	if err != nil {
		t.Fatal(err)
	}
	defer last.Close()
	d.cmd.Process.Signal(syscall.SIGTERM)
	if code := d.wait(t, time.Minute); code != 0 {
		t.Fatalf("daemon exited %d on SIGTERM with a channel open; its log:\n%s", code, d.log)
	}
	assertEmptyDir(t, d.runDir)
	if _, _, err := last.Call(context.Background(), []byte(`{"path":"/proc/uptime"}`)); errnoOfErr(err) != syscall.EPIPE {
		t.Errorf("a channel of a daemon that exited: %v, want EPIPE", err)
	}
}

// A user opens channels to their own rootless container only, as their
// calls are authorized: another's is refused (EACCES) and audited as a
// channel, and a connection's channels end with it.
func TestDaemonChannelIsAuthorizedAsACall(t *testing.T) {
	parallel(t)
	mine, theirs := ownedTarget(t, 4242), ownedTarget(t, 4343)
	audit := filepath.Join(t.TempDir(), "audit.log")
	d := startDaemon(t, fmt.Sprintf("audit_log = %q\n[[server.allow]]\nuids = [4242]\ntypes = [\"procfs.*\"]\ntargets = \"owned\"\n", audit), "")
	user := &syscall.Credential{Uid: 4242, Gid: 4242, Groups: []uint32{}}
	client := fast.NewClient(connectAs(t, user, d.socket))
	defer client.Close()

	ch, err := client.OpenChannel(context.Background(), &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(mine)}, Type: "procfs.read"})
	if err != nil {
		t.Fatalf("uid 4242's channel to its own target: %v", err)
	}
	if _, _, err := ch.Call(context.Background(), []byte(`{"path":"/proc/self/status"}`)); err != nil {
		t.Fatalf("on it: %v", err)
	}
	// Its handler has no more privilege than the user could get: it
	// joined the target's user namespace, and is charged to the user.
	found := false
	for _, in := range d.instances(t, d.client(t)) {
		if in.Channels == 1 {
			found = true
			if !slices.Contains(in.Joined, "user") || in.Account != "uid 4242" {
				t.Errorf("uid 4242's channel is served by an instance that joined %v, charged to %q", in.Joined, in.Account)
			}
			if got, want := nsInode(t, int(in.Pid), "user"), nsInode(t, mine, "user"); got != want {
				t.Errorf("its handler's user namespace %d, the target's %d", got, want)
			}
		}
	}
	if !found {
		t.Error("no instance reports uid 4242's channel")
	}
	_, err = client.OpenChannel(context.Background(), &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(theirs)}, Type: "procfs.read"})
	if errnoOfErr(err) != syscall.EACCES || !strings.Contains(err.Error(), "owned by uid 4343") {
		t.Errorf("uid 4242's channel to uid 4343's target: %v, want EACCES", err)
	}
	_, err = client.OpenChannel(context.Background(), &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(mine)}, Type: "fs.stat"})
	if errnoOfErr(err) != syscall.EACCES {
		t.Errorf("uid 4242's channel for a type outside its rule: %v, want EACCES", err)
	}
	lines := auditLines(t, audit)
	denied := 0
	for _, l := range lines {
		if l.Op == "channel" && l.Result == "denied" {
			denied++
		}
	}
	if denied != 2 {
		t.Errorf("%d channel denials audited, want 2: %v", denied, lines)
	}
	// The connection that opened it closes: the channel is revoked.
	client.Close()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, _, err := ch.Call(context.Background(), []byte(`{"path":"/proc/self/status"}`))
		if errnoOfErr(err) == syscall.EPIPE {
			break
		}
		if err != nil || time.Now().After(deadline) {
			t.Fatalf("a channel after its connection closed: %v, want EPIPE", err)
		}
	}
	ch.Close()
}

// fast.Channels makes a Go program's repeated calls on channels: opened on
// first use, reopened once when revoked (a reload), and a type that
// changes state through Call instead.
func TestChannelsReopenAndFallBack(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Hostname: "cached", MountProc: true})
	metrics := freeLoopbackAddr(t)
	d := startDaemon(t, fmt.Sprintf("metrics_address = %q", metrics), "")
	client, err := fast.Dial(d.addr)
	if err != nil {
		t.Fatal(err)
	}
	cs := fast.NewChannels(client, 2)
	defer cs.Close()
	tg := &apiv1.Target{Pid: int32(target.PID())}
	read := &apiv1.CallRequest{Target: tg, Type: "procfs.read", Payload: []byte(`{"path":"/proc/sys/kernel/hostname"}`)}
	for i := 0; i < 10; i++ {
		if _, _, err := cs.Call(context.Background(), read); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if got := scrape(t, metrics, "nsplug_channels_open"); got != 1 {
		t.Errorf("%v channels open after 10 calls of one type to one target, want 1", got)
	}
	viaFast := scrape(t, metrics, `nsplug_requests_by_transport_total{transport="fast"}`)
	_, _, err = cs.Call(context.Background(), &apiv1.CallRequest{Target: tg, Type: "mount.mount", Payload: []byte(`{"mounts":[]}`)})
	if errnoOfErr(err) == syscall.EOPNOTSUPP {
		t.Errorf("mount.mount through Channels: %v; want it called through Call", err)
	}
	if got := scrape(t, metrics, `nsplug_requests_by_transport_total{transport="fast"}`); got != viaFast+1 {
		t.Errorf("fast-path calls %v -> %v: mount.mount did not go through Call", viaFast, got)
	}
	// A reload revokes the channel: the next call reopens it.
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(t, "reloaded", 1)
	out, _, err := cs.Call(context.Background(), read)
	if err != nil || !strings.Contains(string(out.Payload), "data") {
		t.Fatalf("the first call after a reload: %v %v", out, err)
	}
	// Past its bound the least recently used channel is closed.
	for _, typ := range []string{"procfs.stat", "sysctl.get"} {
		payload := `{"path":"/proc/self"}`
		if typ == "sysctl.get" {
			payload = `{"name":"kernel.hostname"}`
		}
		if _, _, err := cs.Call(context.Background(), &apiv1.CallRequest{Target: tg, Type: typ, Payload: []byte(payload)}); err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); scrape(t, metrics, "nsplug_channels_open") != 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%v channels open with a bound of 2", scrape(t, metrics, "nsplug_channels_open"))
		}
	}
}

// A user's channels open at once are bounded by max_calls_per_user, apart
// from their calls: past it one more is EAGAIN naming the setting, and a
// closed one makes room.
func TestDaemonChannelsPerUserAreBounded(t *testing.T) {
	parallel(t)
	mine := ownedTarget(t, 4242)
	d := startDaemon(t, "max_calls_per_user = 2\n[[server.allow]]\nuids = [4242]\ntypes = [\"procfs.*\"]\ntargets = \"owned\"\n", "")
	user := &syscall.Credential{Uid: 4242, Gid: 4242, Groups: []uint32{}}
	client := fast.NewClient(connectAs(t, user, d.socket))
	defer client.Close()
	open := func(typ string) (*fast.Channel, error) {
		return client.OpenChannel(context.Background(), &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(mine)}, Type: typ})
	}
	var chans []*fast.Channel
	for _, typ := range []string{"procfs.read", "procfs.stat"} {
		ch, err := open(typ)
		if err != nil {
			t.Fatalf("channel %s: %v", typ, err)
		}
		chans = append(chans, ch)
	}
	_, err := open("procfs.read")
	if errnoOfErr(err) != syscall.EAGAIN || !strings.Contains(err.Error(), "server.max_calls_per_user") {
		t.Fatalf("a third channel with max_calls_per_user = 2: %v, want EAGAIN naming the setting", err)
	}
	// Calls are counted apart: one still goes through.
	if _, _, err := client.Call(context.Background(), &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(mine)}, Type: "procfs.read", Payload: []byte(`{"path":"/proc/self/uid_map"}`)}); err != nil {
		t.Errorf("a call with two channels open: %v", err)
	}
	chans[0].Close()
	ch, err := open("procfs.read")
	if err != nil {
		t.Fatalf("a channel after one closed: %v", err)
	}
	ch.Close()
	chans[1].Close()
}
