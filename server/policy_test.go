package server

import (
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/wire"
)

// rules are those of a typical node: a monitoring group that may only
// read, a user and their own rootless containers, and a uid with one type.
var rules = []config.AllowRule{
	{GIDs: []uint32{991}, Types: []string{"procfs.*", "sysctl.get"}, Targets: config.TargetsAny},
	{UIDs: []uint32{4242}, Types: []string{"*"}, Targets: config.TargetsOwned},
	{UIDs: []uint32{5000}, Types: []string{"ids.whoami"}, Targets: config.TargetsAny},
}

// wantDenied checks err is an EACCES *wire.Error whose message holds
// every one of parts.
func wantDenied(t *testing.T, what string, err error, parts ...string) {
	t.Helper()
	var we *wire.Error
	if !errors.As(err, &we) || we.Errno != syscall.EACCES {
		t.Errorf("%s: got %v, want an EACCES *wire.Error", what, err)
		return
	}
	for _, p := range parts {
		if !strings.Contains(we.Message, p) {
			t.Errorf("%s: %q does not say %q", what, we.Message, p)
		}
	}
}

func TestPolicyAdmit(t *testing.T) {
	p := NewPolicy(rules)
	for _, tc := range []struct {
		c    Caller
		typ  string
		want bool
	}{
		{Caller{UID: 0, GID: 0}, "mount.mount", true},                                  // root: everything
		{Caller{UID: 1000, GID: 991}, "procfs.read", true},                             // primary group, glob
		{Caller{UID: 1000, GID: 1000, Groups: []uint32{27, 991}}, "procfs.stat", true}, // supplementary group
		{Caller{UID: 1000, GID: 991}, "sysctl.get", true},
		{Caller{UID: 1000, GID: 991}, "sysctl.set", false},                         // not among the group's types
		{Caller{UID: 1000, GID: 991}, "procfsx.read", false},                       // the glob stops at its dot
		{Caller{UID: 1000, GID: 1000, Groups: []uint32{27}}, "procfs.read", false}, // no rule names it
		{Caller{UID: 4242, GID: 4242}, "mount.mount", true},                        // "*"
		{Caller{UID: 5000, GID: 5000}, "ids.whoami", true},
		{Caller{UID: 5000, GID: 5000}, "ids.other", false},
		{Caller{UID: 991, GID: 5}, "procfs.read", false}, // a uid equal to the gid of a rule is not the group
	} {
		err := p.Admit(tc.c, tc.typ)
		if got := err == nil; got != tc.want {
			t.Errorf("Admit(%+v, %s) = %v, want admitted %v", tc.c, tc.typ, err, tc.want)
		}
	}
}

func TestPolicyDenialsNameWhatIsMissing(t *testing.T) {
	p := NewPolicy(rules)
	wantDenied(t, "no rule names the caller", p.Admit(Caller{UID: 1000, GID: 1000, Groups: []uint32{27, 100}}, "procfs.read"),
		"uid 1000 (gid 1000, groups 27,100)", "procfs.read", "no [[server.allow]] rule names uid 1000")
	wantDenied(t, "rules name the caller, not the type", p.Admit(Caller{UID: 1000, GID: 991}, "sysctl.set"),
		"uid 1000 (gid 991)", "sysctl.set", `admit types "procfs.*", "sysctl.get"`)
	wantDenied(t, "default", NewPolicy(nil).Admit(Caller{UID: 1000, GID: 1000}, "ids.whoami"),
		"uid 1000", "ids.whoami", "no [[server.allow]] rules", "only root")
	// Root needs no rule, with none at all either.
	if err := NewPolicy(nil).Admit(Caller{}, "mount.mount"); err != nil {
		t.Errorf("root under the default policy: %v", err)
	}
}

func TestPolicyAdmitTarget(t *testing.T) {
	p := NewPolicy(rules)
	own := core.TargetInfo{PID: 77, UserNSOwner: 4242}
	other := core.TargetInfo{PID: 78, UserNSOwner: 5555}
	host := core.TargetInfo{PID: 1, UserNSOwner: 0, HostUserNS: true}
	user, monitor := Caller{UID: 4242, GID: 4242}, Caller{UID: 1000, GID: 991}

	if err := p.AdmitTarget(user, "procfs.read", own); err != nil {
		t.Errorf("owned target of its owner: %v", err)
	}
	wantDenied(t, "another user's target", p.AdmitTarget(user, "procfs.read", other),
		"uid 4242", "procfs.read", `targets = "owned"`, "target pid 78", "owned by uid 5555")
	if err := p.AdmitTarget(monitor, "procfs.read", other); err != nil {
		t.Errorf("targets = any: %v", err)
	}
	// Not even "any" reaches a process in the daemon's user namespace.
	wantDenied(t, "host process, any", p.AdmitTarget(monitor, "procfs.read", host), "target pid 1", "daemon's own user namespace", "only root")
	wantDenied(t, "host process, owned", p.AdmitTarget(user, "procfs.read", host), "daemon's own user namespace")
	// The type is checked again: the hook may be all a caller passes.
	wantDenied(t, "type", p.AdmitTarget(monitor, "sysctl.set", other), "sysctl.set")
	for _, tg := range []core.TargetInfo{own, other, host} {
		if err := p.AdmitTarget(Caller{}, "mount.mount", tg); err != nil {
			t.Errorf("root, %+v: %v", tg, err)
		}
	}
	// An owned rule and an any rule for one caller: either admits.
	both := NewPolicy([]config.AllowRule{
		{UIDs: []uint32{4242}, Types: []string{"*"}, Targets: config.TargetsOwned},
		{GIDs: []uint32{991}, Types: []string{"procfs.*"}, Targets: config.TargetsAny},
	})
	if err := both.AdmitTarget(Caller{UID: 4242, GID: 991}, "procfs.read", other); err != nil {
		t.Errorf("any through the group: %v", err)
	}
	wantDenied(t, "owned only for that type", both.AdmitTarget(Caller{UID: 4242, GID: 991}, "ids.whoami", other), "owned by uid 5555")
}

// registry is a fixed type table for Constrain: what Dispatcher.Type
// answers for a configuration with these plugins.
type registry map[string][]string // type -> its plugin's namespaces

func (r registry) Type(name string) (core.TypeInfo, []string, bool) {
	ns, ok := r[name]
	if !ok {
		return core.TypeInfo{}, nil, false
	}
	plugin, _, _ := strings.Cut(name, ".")
	return core.TypeInfo{Name: name, Plugin: plugin}, ns, true
}

var allNS = []string{"user", "mnt", "pid", "net", "ipc", "uts", "cgroup", "time"}

func TestPolicyConstrain(t *testing.T) {
	p := NewPolicy(rules)
	reg := registry{"procfs.read": allNS, "ids.whoami": allNS, "sysctl.get": {"net", "ipc", "uts"}}
	user := Caller{UID: 4242, GID: 4242}

	// Narrowed namespaces gain "user"; the caller's slice is not written.
	narrowed := []string{"mnt", "pid", "net"}
	req := core.Request{PID: 77, Type: "procfs.read", Namespaces: narrowed[:2:3]}
	if err := p.Constrain(user, &req, reg); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(req.Namespaces, []string{"mnt", "pid", "user"}) || narrowed[2] != "net" {
		t.Errorf("namespaces = %v (caller's %v)", req.Namespaces, narrowed)
	}
	if req.Authorize == nil {
		t.Fatal("no target hook")
	}
	if err := req.Authorize(core.TargetInfo{PID: 77, UserNSOwner: 4242}); err != nil {
		t.Errorf("hook, owned target: %v", err)
	}
	wantDenied(t, "hook, other's target", req.Authorize(core.TargetInfo{PID: 78, UserNSOwner: 5555}), "owned by uid 5555")

	// Nil namespaces (the plugin's set, which has user) stay nil.
	req = core.Request{PID: 77, Type: "ids.whoami"}
	if err := p.Constrain(user, &req, reg); err != nil || req.Namespaces != nil {
		t.Errorf("nil namespaces: %v, %v", req.Namespaces, err)
	}
	// A hook already there runs first, and its error wins.
	sentinel := wire.Errorf(syscall.ESRCH, "earlier hook")
	req = core.Request{PID: 77, Type: "ids.whoami", Authorize: func(core.TargetInfo) error { return sentinel }}
	if err := p.Constrain(user, &req, reg); err != nil {
		t.Fatal(err)
	}
	if err := req.Authorize(core.TargetInfo{UserNSOwner: 4242}); err != sentinel {
		t.Errorf("chained hook: %v", err)
	}

	// A plugin without "user" serves root only.
	monitor := Caller{UID: 1000, GID: 991}
	req = core.Request{PID: 77, Type: "sysctl.get"}
	wantDenied(t, "plugin without user", p.Constrain(monitor, &req, reg),
		"plugin sysctl", `namespaces = ["net", "ipc", "uts"]`, `without "user"`)
	req = core.Request{PID: 77, Type: "sysctl.get", Namespaces: []string{"net"}}
	if err := p.Constrain(Caller{}, &req, reg); err != nil || req.Authorize != nil || !slices.Equal(req.Namespaces, []string{"net"}) {
		t.Errorf("root's request changed: %v %v %v", err, req.Namespaces, req.Authorize != nil)
	}
	// The type check comes first, and says nothing of the plugin.
	req = core.Request{PID: 77, Type: "sysctl.get"}
	wantDenied(t, "type first", p.Constrain(Caller{UID: 9, GID: 9}, &req, reg), "no [[server.allow]] rule names uid 9")
	// A type nobody serves is the dispatcher's to refuse.
	req = core.Request{PID: 77, Type: "nope.nope"}
	if err := p.Constrain(user, &req, reg); err != nil {
		t.Errorf("unknown type: %v", err)
	}
}

func TestPolicyConstrainPrepare(t *testing.T) {
	p := NewPolicy(rules)
	reg := registry{"procfs.read": allNS, "ids.whoami": allNS, "sysctl.get": {"net"}}
	user := Caller{UID: 4242, GID: 4242}
	tg := core.Target{PID: 77}
	if err := p.ConstrainPrepare(user, &tg, []string{"procfs.read", "ids.whoami"}, reg); err != nil {
		t.Fatal(err)
	}
	if err := tg.Authorize(core.TargetInfo{UserNSOwner: 4242}); err != nil {
		t.Errorf("owned: %v", err)
	}
	wantDenied(t, "other's", tg.Authorize(core.TargetInfo{PID: 78, UserNSOwner: 1}), "owned by uid 1")
	tg = core.Target{PID: 77}
	wantDenied(t, "every plugin", p.ConstrainPrepare(user, &tg, nil, reg), "names")
	wantDenied(t, "without user", p.ConstrainPrepare(user, &tg, []string{"procfs.read", "sysctl.get"}, reg), "plugin sysctl")
	wantDenied(t, "type", p.ConstrainPrepare(Caller{UID: 5000, GID: 5000}, &tg, []string{"ids.whoami", "procfs.read"}, reg), "procfs.read")
	if tg.Authorize != nil {
		t.Error("a refused prepare got a hook")
	}
	if err := p.ConstrainPrepare(Caller{}, &tg, nil, reg); err != nil || tg.Authorize != nil {
		t.Errorf("root: %v", err)
	}
}

// The policy keeps its own copy of the rules: a reload builds a new one,
// and changing the old configuration changes nothing.
func TestPolicyCopiesRules(t *testing.T) {
	rs := []config.AllowRule{{UIDs: []uint32{7}, Types: []string{"ids.*"}, Targets: config.TargetsAny}}
	p := NewPolicy(rs)
	rs[0].UIDs[0] = 8
	if p.Admit(Caller{UID: 7}, "ids.whoami") != nil || p.Admit(Caller{UID: 8}, "ids.whoami") == nil {
		t.Error("the policy follows the caller's slice")
	}
}

// WithInstancesPerUser charges a user's calls and prepares to their uid,
// and root's to nobody; without it nobody is charged.
func TestPolicyChargesUsersInstances(t *testing.T) {
	reg := registry{"procfs.read": allNS}
	user := Caller{UID: 4242, GID: 4242}
	p := NewPolicy(rules).WithInstancesPerUser(3)
	req := core.Request{PID: 77, Type: "procfs.read"}
	if err := p.Constrain(user, &req, reg); err != nil {
		t.Fatal(err)
	}
	if a := req.Account; a == nil || a.Name != "uid 4242" || a.MaxInstances != 3 || a.Setting != "server.max_instances_per_user" {
		t.Errorf("user's account %+v", a)
	}
	tg := core.Target{PID: 77}
	if err := p.ConstrainPrepare(user, &tg, []string{"procfs.read"}, reg); err != nil {
		t.Fatal(err)
	}
	if a := tg.Account; a == nil || a.Name != "uid 4242" || a.MaxInstances != 3 {
		t.Errorf("user's prepare account %+v", a)
	}
	root := core.Request{PID: 77, Type: "procfs.read"}
	if err := p.Constrain(Caller{}, &root, reg); err != nil || root.Account != nil {
		t.Errorf("root: %v, account %+v", err, root.Account)
	}
	unbounded := core.Request{PID: 77, Type: "procfs.read"}
	if err := NewPolicy(rules).Constrain(user, &unbounded, reg); err != nil || unbounded.Account != nil {
		t.Errorf("without a bound: %v, account %+v", err, unbounded.Account)
	}
}
