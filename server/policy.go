package server

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/wire"
)

// Policy decides who may call what, from the [[server.allow]] rules. Root
// (uid 0) may always call everything; with no rules, only root may call
// anything. A denial is an EACCES *wire.Error that names the caller and
// what was missing.
//
// A call is decided twice: by type before its target is pinned (Admit),
// and by target once the core has pinned the process (AdmitTarget, from
// the hook Constrain installs), so that a PID that changes hands between
// the two is decided on the process actually entered.
//
// A Policy is immutable: a reload builds a new one.
type Policy struct {
	rules []config.AllowRule
	// perUser bounds the plugin instances the calls of one uid other than
	// root hold (server.max_instances_per_user); 0: unbounded.
	perUser int
}

// NewPolicy returns the policy of rules (config.Server.Allow, validated).
func NewPolicy(rules []config.AllowRule) *Policy {
	p := &Policy{rules: slices.Clone(rules)}
	for i := range p.rules {
		r := &p.rules[i]
		r.UIDs, r.GIDs, r.Types = slices.Clone(r.UIDs), slices.Clone(r.GIDs), slices.Clone(r.Types)
	}
	return p
}

// WithInstancesPerUser is p charging the plugin instances that the calls
// of each uid other than root start to that uid, at most n of them
// (server.max_instances_per_user; see core.Account).
func (p *Policy) WithInstancesPerUser(n int) *Policy {
	q := *p
	q.perUser = n
	return &q
}

// account is what c's calls are charged to: nothing for root.
func (p *Policy) account(c Caller) *core.Account {
	if c.Root() || p.perUser <= 0 {
		return nil
	}
	return &core.Account{Name: fmt.Sprintf("uid %d", c.UID), MaxInstances: p.perUser, Setting: "server.max_instances_per_user"}
}

// Registry is what the policy and the Gate need to know of the message
// types: *core.Dispatcher has it (Dispatcher.Type).
type Registry interface {
	Type(name string) (info core.TypeInfo, namespaces []string, ok bool)
}

// Admit is the check by type, before the target is pinned: some rule
// names c (its uid, primary or a supplementary group) and admits typ.
func (p *Policy) Admit(c Caller, typ string) error {
	if c.Root() || len(p.rulesFor(c, typ)) > 0 {
		return nil
	}
	return p.denyType(c, typ)
}

// AdmitTarget is the check by target, on the pinned process t: some rule
// that admits c to typ has targets = "any", or "owned" and t's user
// namespace is owned by c's uid. A target in the daemon's own user
// namespace is refused to everyone but root whatever the rules say: a
// handler there would act with the daemon's privilege (host root).
func (p *Policy) AdmitTarget(c Caller, typ string, t core.TargetInfo) error {
	if c.Root() {
		return nil
	}
	rules := p.rulesFor(c, typ)
	if len(rules) == 0 {
		return p.denyType(c, typ)
	}
	if t.HostUserNS {
		return wire.Errorf(syscall.EACCES, "%s may not call %s on target pid %d: it is in the daemon's own user namespace (a host process), where a handler would act with the daemon's privilege; only root may call it there", describe(c), typ, t.PID)
	}
	for _, r := range rules {
		if r.Targets == config.TargetsAny || (r.Targets == config.TargetsOwned && t.UserNSOwner == c.UID) {
			return nil
		}
	}
	return wire.Errorf(syscall.EACCES, "%s may call %s only on targets it owns (targets = %q), and the user namespace of target pid %d is owned by uid %d", describe(c), typ, config.TargetsOwned, t.PID, t.UserNSOwner)
}

// Constrain admits req for c (Admit) and makes it what a caller other
// than root may send: its handler always joins the target's user
// namespace ("user" is added to a narrowed req.Namespaces), so it never
// has more privilege than the owner of that namespace; a plugin whose
// namespaces setting leaves "user" out is refused; and req.Authorize is
// set to decide on the pinned target (AdmitTarget), after any hook it
// had; the instances it starts are charged to c's uid
// (WithInstancesPerUser). A request for root is left as it is. A type reg does not know is
// left for the dispatcher to refuse.
func (p *Policy) Constrain(c Caller, req *core.Request, reg Registry) error {
	if err := p.Admit(c, req.Type); err != nil {
		return err
	}
	if c.Root() {
		return nil
	}
	if err := p.joinsUser(c, req.Type, reg); err != nil {
		return err
	}
	if req.Namespaces != nil && !slices.Contains(req.Namespaces, "user") {
		req.Namespaces = append(slices.Clip(req.Namespaces), "user")
	}
	req.Authorize = p.targetHook(c, []string{req.Type}, req.Authorize)
	req.Account = p.account(c)
	return nil
}

// ConstrainPrepare is Constrain for Dispatcher.Prepare of types: each is
// admitted and its plugin must join "user", and tg.Authorize decides on
// the pinned target for every one. A caller other than root names the
// types (an empty list would prepare every plugin).
func (p *Policy) ConstrainPrepare(c Caller, tg *core.Target, types []string, reg Registry) error {
	if c.Root() {
		return nil
	}
	if len(types) == 0 {
		return wire.Errorf(syscall.EACCES, "%s may only prepare the message types it names: an empty list prepares every plugin, which only root may", describe(c))
	}
	for _, typ := range types {
		if err := p.Admit(c, typ); err != nil {
			return err
		}
		if err := p.joinsUser(c, typ, reg); err != nil {
			return err
		}
	}
	tg.Authorize = p.targetHook(c, slices.Clone(types), tg.Authorize)
	tg.Account = p.account(c)
	return nil
}

// targetHook is the core hook that runs prev, then AdmitTarget for each
// of types.
func (p *Policy) targetHook(c Caller, types []string, prev func(core.TargetInfo) error) func(core.TargetInfo) error {
	return func(t core.TargetInfo) error {
		if prev != nil {
			if err := prev(t); err != nil {
				return err
			}
		}
		for _, typ := range types {
			if err := p.AdmitTarget(c, typ, t); err != nil {
				return err
			}
		}
		return nil
	}
}

// joinsUser refuses typ to c when its plugin is configured not to join
// the target's user namespace.
func (p *Policy) joinsUser(c Caller, typ string, reg Registry) error {
	info, namespaces, ok := reg.Type(typ)
	if !ok || slices.Contains(namespaces, "user") {
		return nil
	}
	return wire.Errorf(syscall.EACCES, "%s may not call %s: plugin %s is configured with namespaces = [%s], without \"user\", so its handlers act with the daemon's privilege; only root may call it", describe(c), typ, info.Plugin, quoteList(namespaces))
}

// rulesFor returns the rules that name c and admit typ.
func (p *Policy) rulesFor(c Caller, typ string) []*config.AllowRule {
	var out []*config.AllowRule
	for i := range p.rules {
		if r := &p.rules[i]; p.names(r, c) && r.MatchType(typ) {
			out = append(out, r)
		}
	}
	return out
}

func (p *Policy) names(r *config.AllowRule, c Caller) bool {
	return slices.Contains(r.UIDs, c.UID) || slices.ContainsFunc(r.GIDs, c.InGroup)
}

// denyType says why no rule admits c to typ: there are no rules, none
// names c, or those that do admit other types.
func (p *Policy) denyType(c Caller, typ string) error {
	if len(p.rules) == 0 {
		return wire.Errorf(syscall.EACCES, "%s may not call %s: there are no [[server.allow]] rules, and without one only root may call", describe(c), typ)
	}
	var theirs []string
	named := false
	for i := range p.rules {
		if r := &p.rules[i]; p.names(r, c) {
			named = true
			for _, g := range r.Types {
				if !slices.Contains(theirs, g) {
					theirs = append(theirs, g)
				}
			}
		}
	}
	if !named {
		return wire.Errorf(syscall.EACCES, "%s may not call %s: no [[server.allow]] rule names uid %d or any of its groups", describe(c), typ, c.UID)
	}
	return wire.Errorf(syscall.EACCES, "%s may not call %s: no [[server.allow]] rule admits it to that type (its rules admit types %s)", describe(c), typ, quoteList(theirs))
}

// describe names a caller in a denial: "uid 1000 (gid 1000, groups 27,100)".
func describe(c Caller) string {
	var b strings.Builder
	fmt.Fprintf(&b, "uid %d (gid %d", c.UID, c.GID)
	if len(c.Groups) > 0 {
		b.WriteString(", groups ")
		for i, g := range c.Groups {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.FormatUint(uint64(g), 10))
		}
	}
	b.WriteByte(')')
	return b.String()
}

func quoteList(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = strconv.Quote(v)
	}
	return strings.Join(q, ", ")
}

// AdmitListing decides the calls that only describe the daemon: Types and
// Plugins (what) are for any caller some rule names, Instances (the host
// pids of every caller's handlers) for root only (rootOnly).
func (p *Policy) AdmitListing(c Caller, what string, rootOnly bool) error {
	if c.Root() {
		return nil
	}
	if rootOnly {
		return wire.Errorf(syscall.EACCES, "%s may not %s: only root may", describe(c), what)
	}
	for i := range p.rules {
		if p.names(&p.rules[i], c) {
			return nil
		}
	}
	return wire.Errorf(syscall.EACCES, "%s may not %s: no [[server.allow]] rule names uid %d or any of its groups", describe(c), what, c.UID)
}
