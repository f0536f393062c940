// Package apiconv turns the node API's messages (api/v1) into the core's
// types and back: the daemon (package server) answers with the core's
// descriptions, and a client (nsplug's command line) turns them back into
// the core's types, to print them as it does in-process. It links no gRPC.
package apiconv

import (
	"syscall"

	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/wire"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// CoreRequest is the core.Request a CallRequest asks for, or EINVAL naming
// what is wrong with it.
func CoreRequest(in *apiv1.CallRequest) (core.Request, error) {
	if in.GetTarget().GetPid() <= 0 {
		return core.Request{}, wire.Errorf(syscall.EINVAL, "target.pid: want a pid, got %d", in.GetTarget().GetPid())
	}
	req := core.Request{PID: int(in.Target.Pid), StartTime: StartTime(in.Target), Type: in.Type, Payload: in.Payload, Namespaces: in.Namespaces}
	if c := in.Credentials; c != nil {
		req.Credentials = &core.Credentials{UID: c.Uid, GID: c.Gid, Groups: c.Groups, Root: c.Root, Cwd: c.Cwd}
		if cs := c.Capabilities; cs != nil {
			req.Credentials.Capabilities = &core.CapabilitySets{Effective: cs.Effective, Permitted: cs.Permitted, Inheritable: cs.Inheritable}
		}
	}
	if t := in.Timeout; t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() <= 0 {
			return core.Request{}, wire.Errorf(syscall.EINVAL, "timeout: want a positive duration, got %ds %dns", t.Seconds, t.Nanos)
		}
	}
	return req, nil
}

// CallRequest is the CallRequest that asks for req (a client's side of
// CoreRequest).
func CallRequest(req core.Request) *apiv1.CallRequest {
	out := &apiv1.CallRequest{Target: Target(req.PID, req.StartTime), Type: req.Type,
		Payload: req.Payload, Namespaces: req.Namespaces}
	if c := req.Credentials; c != nil {
		out.Credentials = &apiv1.Credentials{Uid: c.UID, Gid: c.GID, Groups: c.Groups, Root: c.Root, Cwd: c.Cwd}
		if cs := c.Capabilities; cs != nil {
			out.Credentials.Capabilities = &apiv1.CapabilitySets{Effective: cs.Effective, Permitted: cs.Permitted, Inheritable: cs.Inheritable}
		}
	}
	return out
}

func TypeInfo(t core.TypeInfo) *apiv1.TypeInfo {
	return &apiv1.TypeInfo{Name: t.Name, Version: t.Version, Description: t.Description, Plugin: t.Plugin, Changes: t.Changes, MayChange: t.MayChange}
}

func CoreTypeInfo(t *apiv1.TypeInfo) core.TypeInfo {
	return core.TypeInfo{Name: t.Name, Version: t.Version, Description: t.Description, Plugin: t.Plugin, Changes: t.Changes, MayChange: t.MayChange}
}

func TypeInfos(ts []core.TypeInfo) []*apiv1.TypeInfo {
	out := make([]*apiv1.TypeInfo, len(ts))
	for i, t := range ts {
		out[i] = TypeInfo(t)
	}
	return out
}

func PluginInfo(p core.PluginInfo) *apiv1.PluginInfo {
	return &apiv1.PluginInfo{Name: p.Name, Builtin: p.Builtin, Path: p.Path, Sha256: p.SHA256, Mode: p.Mode,
		Status: p.Status, Error: p.Error, Types: TypeInfos(p.Types)}
}

// PluginInfos are the core.PluginInfos of a PluginsResponse.
func PluginInfos(resp *apiv1.PluginsResponse) []core.PluginInfo {
	out := make([]core.PluginInfo, len(resp.Plugins))
	for i, p := range resp.Plugins {
		out[i] = core.PluginInfo{Name: p.Name, Builtin: p.Builtin, Path: p.Path, SHA256: p.Sha256, Mode: p.Mode,
			Status: p.Status, Error: p.Error, Types: make([]core.TypeInfo, len(p.Types))}
		for j, t := range p.Types {
			out[i].Types[j] = CoreTypeInfo(t)
		}
	}
	return out
}

func InstanceInfo(in core.InstanceInfo) *apiv1.InstanceInfo {
	return &apiv1.InstanceInfo{Plugin: in.Plugin, Pid: int32(in.PID), RunnerPid: int32(in.RunnerPID), Joined: in.Joined, Inflight: int32(in.Inflight), Channels: int32(in.Channels), Plugins: in.Plugins, Account: in.Account}
}

// StartTime is the start time t names, nil when it names none.
func StartTime(t *apiv1.Target) *uint64 {
	if st := t.GetStartTime(); st != nil {
		v := st.GetValue()
		return &v
	}
	return nil
}

// Target is the Target of pid, with its start time when known.
func Target(pid int, start *uint64) *apiv1.Target {
	t := &apiv1.Target{Pid: int32(pid)}
	if start != nil {
		t.StartTime = wrapperspb.UInt64(*start)
	}
	return t
}
