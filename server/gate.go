package server

import (
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/wire"
)

// The reasons of a denial, as Gate.Call and Gate.Prepare report them (the
// denials metric's label).
const (
	// DeniedType: refused before the target was pinned, for the caller and
	// the type (no rule admits it, or the plugin's namespaces leave out
	// user for a caller other than root).
	DeniedType = "type"
	// DeniedTarget: refused on the pinned target (not owned, or in the
	// daemon's own user namespace).
	DeniedTarget = "target"
)

// Gate puts each API call through the Policy and the AuditLog: the one
// place the service's Call and Prepare handlers pass before the
// dispatcher and after it.
type Gate struct {
	Policy   *Policy
	Audit    *AuditLog // nil: no audit log
	Registry Registry  // the dispatcher
	Log      hclog.Logger
	// DenialsPerMinutePerUser and DenialsPerMinute bound the denials
	// that get an audit line of their own (AuditLog.WriteDenial); 0: no
	// bound.
	DenialsPerMinutePerUser, DenialsPerMinute int
}

// Call authorizes req for c (Policy.Constrain, then the target check in
// the core's hook), runs it with do (the dispatcher's Call, with the
// request's context) and audits it. denied names a refusal by the policy
// (EACCES), for metrics: DeniedType or DeniedTarget; "" when there was none.
//
// A call of a type that changes state is refused (EIO) before it runs
// when the audit log is not Ready; when its line cannot be written after
// it ran, the caller gets EIO saying the change was made but not audited.
// A denial whose line cannot be written is still a denial. Every line is
// written before Call returns.
func (g *Gate) Call(c Caller, req core.Request, do func(core.Request) (*core.Response, error)) (resp *core.Response, denied string, err error) {
	return g.call("call", c, req, do)
}

// Channel is Call for opening a direct channel of req's type to its
// target (do: the dispatcher's OpenChannel), audited as op "channel".
// The caller refuses types that change state: their calls are audited
// one by one, which a channel's are not.
func (g *Gate) Channel(c Caller, req core.Request, do func(core.Request) (*core.Response, error)) (denied string, err error) {
	_, denied, err = g.call("channel", c, req, do)
	return denied, err
}

func (g *Gate) call(op string, c Caller, req core.Request, do func(core.Request) (*core.Response, error)) (resp *core.Response, denied string, err error) {
	rec := AuditRecord{Time: time.Now(), Op: op, Caller: c, PID: req.PID, StartTime: req.StartTime, Type: req.Type, Payload: req.Payload}
	mutating := changesState(g.Registry, req.Type)

	if err := g.Policy.Constrain(c, &req, g.Registry); err != nil {
		return nil, DeniedType, g.deny(&rec, err)
	}
	req.Authorize = rec.observe(req.Authorize)
	if mutating {
		if err := g.Audit.Ready(); err != nil {
			err = wire.Errorf(syscall.EIO, "%s changes state and cannot be audited now, so it was not run: %v", req.Type, err)
			g.finish(&rec, err) // the refusal's line, which also probes the log
			return nil, "", err
		}
	}
	resp, err = do(req)
	if !mutating && !rec.Denied {
		return resp, "", err
	}
	if rec.Denied {
		g.finish(&rec, err)
		return resp, DeniedTarget, err
	}
	if werr := g.finish(&rec, err); werr != nil {
		if err == nil {
			closeFiles(resp)
			return nil, "", wire.Errorf(syscall.EIO, "%s ran and its change was made, but it could not be audited: %v", req.Type, werr)
		}
		return nil, "", wire.Errorf(wire.AsError(err).Errno, "%v; and it could not be audited: %v", err, werr)
	}
	return resp, "", err
}

// Prepare is Call for Dispatcher.Prepare of types for tg (with do): it
// starts handlers and changes no state, so only a denial is audited.
func (g *Gate) Prepare(c Caller, tg core.Target, types []string, do func(core.Target, []string) error) (denied string, err error) {
	rec := AuditRecord{Time: time.Now(), Op: "prepare", Caller: c, PID: tg.PID, StartTime: tg.StartTime}
	for i, typ := range types {
		if i > 0 {
			rec.Type += ","
		}
		rec.Type += typ
	}
	if err := g.Policy.ConstrainPrepare(c, &tg, types, g.Registry); err != nil {
		return DeniedType, g.deny(&rec, err)
	}
	tg.Authorize = rec.observe(tg.Authorize)
	err = do(tg, types)
	if rec.Denied {
		g.finish(&rec, err)
		return DeniedTarget, err
	}
	return "", err
}

// changesState reports whether typ is a registered type that declares
// state it changes (or may): each of its calls is audited.
func changesState(reg Registry, typ string) bool {
	info, _, known := reg.Type(typ)
	return known && (len(info.Changes) > 0 || len(info.MayChange) > 0)
}

// observe wraps the policy's target hook: rec learns the pinned target,
// and whether the hook refused it.
func (rec *AuditRecord) observe(hook func(core.TargetInfo) error) func(core.TargetInfo) error {
	return func(t core.TargetInfo) error {
		rec.Target = &t
		if hook != nil {
			if err := hook(t); err != nil {
				rec.Denied = true
				return err
			}
		}
		return nil
	}
}

// deny audits a refusal before the target was pinned and returns it.
func (g *Gate) deny(rec *AuditRecord, err error) error {
	rec.Denied = true
	g.finish(rec, err)
	return err
}

// finish writes rec's line, logging a failure, which it returns.
func (g *Gate) finish(rec *AuditRecord, err error) error {
	rec.Err, rec.Duration = err, time.Since(rec.Time)
	var werr error
	if rec.Denied {
		werr = g.Audit.WriteDenial(rec, g.DenialsPerMinutePerUser, g.DenialsPerMinute)
	} else {
		werr = g.Audit.Write(rec)
	}
	if werr != nil && g.Log != nil {
		g.Log.Error("audit line not written", "type", rec.Type, "uid", rec.Caller.UID, "call_error", err, "error", werr)
	}
	return werr
}

func closeFiles(resp *core.Response) {
	if resp == nil {
		return
	}
	for _, f := range resp.Files {
		f.Close()
	}
}
