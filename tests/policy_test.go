package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/server"
)

// authzGate is a gate with the given rules in front of d.
func authzGate(d *core.Dispatcher, audit *server.AuditLog, rules ...config.AllowRule) *server.Gate {
	return &server.Gate{Policy: server.NewPolicy(rules), Audit: audit, Registry: d}
}

// gateCall is one Call through g as c.
func gateCall(g *server.Gate, d *core.Dispatcher, c server.Caller, req core.Request) (*core.Response, string, error) {
	return g.Call(c, req, func(r core.Request) (*core.Response, error) { return d.Call(context.Background(), r) })
}

// targets = "owned": an unprivileged user reaches their own rootless
// container and nothing else, neither another user's nor a host process,
// nor a container the daemon's root made; their handler joins the
// container's user namespace even when the request left it out, and runs
// on the host as their own uid.
func TestOwnedTargetsOnly(t *testing.T) {
	parallel(t)
	mine, theirs := ownedTarget(t, 4242), ownedTarget(t, 4343)
	rootMade := newTarget(t, sandbox.Options{Rootless: true, HostUID: 4242, HostGID: 4242})
	host := hostTarget(t)
	d, _ := newDispatcher(t, "")
	g := authzGate(d, nil, config.AllowRule{UIDs: []uint32{4242, 4343}, Types: []string{"probe.*"}, Targets: config.TargetsOwned})
	user := server.Caller{UID: 4242, GID: 4242, PID: int32(os.Getpid())}

	resp, denied, err := gateCall(g, d, user, core.Request{PID: mine, Type: "probe.whoami", Namespaces: []string{"uts"}})
	if err != nil || denied != "" {
		t.Fatalf("own target: %v (denied %q)", err, denied)
	}
	var w whoami
	if err := json.Unmarshal(resp.Payload, &w); err != nil {
		t.Fatal(err)
	}
	if w.UID != 0 {
		t.Errorf("handler uid %d in the container, want its root", w.UID)
	}
	inst := d.Instances()
	if len(inst) != 1 || !slices.Equal(inst[0].Joined, []string{"user", "uts"}) {
		t.Fatalf("instances %+v, want one that joined user and uts", inst)
	}
	if got, want := nsInode(t, inst[0].PID, "user"), nsInode(t, mine, "user"); got != want {
		t.Errorf("handler's user namespace %d, the target's %d", got, want)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", inst[0].PID))
	if err != nil {
		t.Fatal(err)
	}
	if uid := strings.Fields(statusField(string(status), "Uid")); len(uid) == 0 || uid[0] != "4242" {
		t.Errorf("handler runs as host uid %s, want 4242", uid)
	}

	for _, tc := range []struct {
		name  string
		pid   int
		words []string
	}{
		{"another user's", theirs, []string{"uid 4242", `targets = "owned"`, "owned by uid 4343"}},
		{"made by the daemon's root", rootMade.PID(), []string{"owned by uid 0"}},
		{"a host process", host, []string{"daemon's own user namespace"}},
	} {
		before := len(d.Instances())
		_, denied, err := gateCall(g, d, user, core.Request{PID: tc.pid, Type: "probe.whoami"})
		wantErrno(t, err, syscall.EACCES, tc.words...)
		if denied != server.DeniedTarget || len(d.Instances()) != before {
			t.Errorf("%s: denied %q, instances %v", tc.name, denied, d.Instances())
		}
	}
	// Its owner reaches the other; a type outside the rule reaches none.
	if _, _, err := gateCall(g, d, server.Caller{UID: 4343, GID: 4343}, core.Request{PID: theirs, Type: "probe.whoami"}); err != nil {
		t.Errorf("uid 4343 on its own target: %v", err)
	}
	_, denied, err = gateCall(g, d, user, core.Request{PID: mine, Type: "procfs.read", Payload: json.RawMessage(`{"path":"/proc/self/status"}`)})
	wantErrno(t, err, syscall.EACCES, "procfs.read", `"probe.*"`)
	if denied != server.DeniedType {
		t.Errorf("type denial reported as %q", denied)
	}
	// Root needs no rule.
	if _, _, err := gateCall(g, d, server.Caller{}, core.Request{PID: host, Type: "probe.whoami"}); err != nil {
		t.Errorf("root on a host process: %v", err)
	}
}

// A plugin configured not to join the user namespace acts with the
// daemon's privilege: refused to everyone but root, even on an owned target.
func TestPluginWithoutUserServesRootOnly(t *testing.T) {
	parallel(t)
	mine := ownedTarget(t, 4242)
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"probe\"\nnamespaces = [\"mnt\", \"uts\"]\n")
	g := authzGate(d, nil, config.AllowRule{UIDs: []uint32{4242}, Types: []string{"*"}, Targets: config.TargetsAny})
	_, denied, err := gateCall(g, d, server.Caller{UID: 4242, GID: 4242}, core.Request{PID: mine, Type: "probe.whoami"})
	wantErrno(t, err, syscall.EACCES, "plugin probe", `namespaces = ["mnt", "uts"]`, `without "user"`)
	if denied != server.DeniedType || len(d.Instances()) != 0 {
		t.Errorf("denied %q, instances %v", denied, d.Instances())
	}
	_, err = (&server.Gate{Policy: g.Policy, Registry: d}).Prepare(server.Caller{UID: 4242, GID: 4242}, core.Target{PID: mine}, []string{"probe.whoami"}, nil)
	wantErrno(t, err, syscall.EACCES, "plugin probe")
	if _, _, err := gateCall(g, d, server.Caller{}, core.Request{PID: mine, Type: "probe.whoami"}); err != nil {
		t.Errorf("root: %v", err)
	}
}

// One user cannot fill the daemon with handlers. Each working directory
// (or credential set, or namespace set) is an instance of its own, so an
// unprivileged user with one rootless container could otherwise start as
// many handler processes as max_instances allows and evict everyone
// else's. With server.max_instances_per_user = 2, six calls with six
// working directories all succeed, the user never holds more than two
// live instances (counted from the host: their processes), and root's
// idle instance, the least recently used of all, is still the same
// process at the end.
func TestOneUserCannotFillTheDaemon(t *testing.T) {
	parallel(t)
	mine := ownedTarget(t, 4545)
	d, _ := newDispatcher(t, "")
	g := &server.Gate{Policy: server.NewPolicy([]config.AllowRule{{UIDs: []uint32{4545}, Types: []string{"probe.*"}, Targets: config.TargetsOwned}}).WithInstancesPerUser(2), Registry: d}
	user := server.Caller{UID: 4545, GID: 4545, PID: int32(os.Getpid())}

	if _, _, err := gateCall(g, d, server.Caller{}, core.Request{PID: mine, Type: "probe.whoami"}); err != nil {
		t.Fatalf("root: %v", err)
	}
	rootInst := d.Instances()
	if len(rootInst) != 1 {
		t.Fatalf("instances after root's call: %+v", rootInst)
	}
	for i, cwd := range []string{"/", "/usr", "/etc", "/tmp", "/var", "/usr/bin"} {
		resp, _, err := gateCall(g, d, user, core.Request{PID: mine, Type: "probe.whoami", Credentials: &core.Credentials{Cwd: cwd}})
		if err != nil {
			t.Fatalf("call %d (cwd %s): %v", i+1, cwd, err)
		}
		var w whoami
		if err := json.Unmarshal(resp.Payload, &w); err != nil || w.Cwd != cwd {
			t.Fatalf("call %d: cwd %q (%v), want %s", i+1, w.Cwd, err, cwd)
		}
		waitFor(t, "the user to hold at most two instances", func() bool {
			n := 0
			for _, inst := range d.Instances() {
				if inst.PID != rootInst[0].PID {
					n++
					if _, err := os.Stat(fmt.Sprintf("/proc/%d/status", inst.PID)); err != nil {
						t.Errorf("listed instance %d has no process: %v", inst.PID, err)
					}
				}
			}
			return n <= 2
		})
	}
	live := d.Instances()
	if !slices.ContainsFunc(live, func(i core.InstanceInfo) bool { return i.PID == rootInst[0].PID }) {
		t.Errorf("root's idle instance (pid %d) was ended for the user's: live %+v", rootInst[0].PID, live)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/status", rootInst[0].PID)); err != nil {
		t.Errorf("root's instance process: %v", err)
	}
	if len(live) != 3 {
		t.Errorf("%d live instances, want root's and the user's two: %+v", len(live), live)
	}
	for _, inst := range live {
		want := "uid 4545"
		if inst.PID == rootInst[0].PID {
			want = "" // root's: charged to nobody
		}
		if inst.Account != want {
			t.Errorf("instance %d charged to %q, want %q", inst.PID, inst.Account, want)
		}
	}
}

// A start can fail for what its request asked: a working directory that
// does not exist in the target. Three such failures put the caller's
// starts in that target in backoff, but only the caller's: a monitoring
// user allowed on every container must not be able to make a container
// refuse root's (or anyone's) first request for up to 30 s.
func TestOneUsersFailedStartsDoNotBlockOthers(t *testing.T) {
	parallel(t)
	tg := newTarget(t, sandbox.Options{Rootless: true, HostUID: 4646, HostGID: 4646})
	d, _ := newDispatcher(t, "")
	g := &server.Gate{Policy: server.NewPolicy([]config.AllowRule{{UIDs: []uint32{4747}, Types: []string{"probe.*"}, Targets: config.TargetsAny}}).WithInstancesPerUser(8), Registry: d}
	monitor := server.Caller{UID: 4747, GID: 4747, PID: int32(os.Getpid())}
	for i := 1; i <= 3; i++ {
		_, _, err := gateCall(g, d, monitor, core.Request{PID: tg.PID(), Type: "probe.whoami", Credentials: &core.Credentials{Cwd: fmt.Sprintf("/nonexistent%d", i)}})
		wantErrno(t, err, syscall.EIO, "chdir")
	}
	_, _, err := gateCall(g, d, monitor, core.Request{PID: tg.PID(), Type: "probe.whoami"})
	wantErrno(t, err, syscall.EAGAIN, "its last 3 starts failed")
	if _, _, err := gateCall(g, d, server.Caller{}, core.Request{PID: tg.PID(), Type: "probe.whoami"}); err != nil {
		t.Errorf("root's first request after another caller's failed starts: %v", err)
	}
}

// Oneshot processes count against a user's bound while they run, and give
// their charge back when they exit: with max_instances_per_user = 1, a
// second call while the first one's process starts is EAGAIN naming the
// setting; once it has ended, the next call runs.
func TestOneshotProcessesCountAgainstTheUser(t *testing.T) {
	parallel(t)
	mine := ownedTarget(t, 5050)
	d, _ := newDispatcher(t, "[defaults]\nmode = \"oneshot\"\n[[plugin]]\nname = \"probe\"\n[plugin.options]\nstart_delay_ms = 800\n")
	g := &server.Gate{Policy: server.NewPolicy([]config.AllowRule{{UIDs: []uint32{5050}, Types: []string{"probe.*"}, Targets: config.TargetsOwned}}).WithInstancesPerUser(1), Registry: d}
	user := server.Caller{UID: 5050, GID: 5050, PID: int32(os.Getpid())}
	first := make(chan error, 1)
	go func() {
		_, _, err := gateCall(g, d, user, core.Request{PID: mine, Type: "probe.whoami"})
		first <- err
	}()
	waitFor(t, "the first call's process", func() bool { return len(processesOf(d)) > 0 })
	_, _, err := gateCall(g, d, user, core.Request{PID: mine, Type: "probe.whoami"})
	wantErrno(t, err, syscall.EAGAIN, "uid 5050 has 1 plugin instances running or starting", "server.max_instances_per_user")
	if err := <-first; err != nil {
		t.Fatalf("first call: %v", err)
	}
	if _, _, err := gateCall(g, d, user, core.Request{PID: mine, Type: "probe.whoami"}); err != nil {
		t.Errorf("a call after the first ended: %v", err)
	}
	if _, _, err := gateCall(g, d, server.Caller{}, core.Request{PID: mine, Type: "probe.whoami"}); err != nil {
		t.Errorf("root: %v", err)
	}
}
