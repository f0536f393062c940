package handler

import (
	"context"
	"encoding/json"
	"slices"
	"syscall"

	"github.com/nsplug/nsplug/wire"
)

// Handler serves one message type. Make one with Handle.
type Handler interface {
	// Describe says what the handler serves.
	Describe() *wire.MessageType
	// Handle handles one request: it decodes the JSON payload, runs the
	// handler and encodes its response. Errors are *Error.
	Handle(ctx context.Context, payload []byte) ([]byte, error)
}

// TypedHandler is a Handler built from a function over request and
// response structs.
type TypedHandler[Req, Resp any] struct {
	desc *wire.MessageType
	fn   func(context.Context, Req) (Resp, error)
}

// Handle makes the handler of message type name ("<plugin>.<verb>") from
// fn. The payload is decoded strictly into Req (see DecodeStrict: an
// unknown, case-folded or duplicate field is an EINVAL error naming it)
// and Resp is encoded as JSON. Declare paths and names as Name. The
// payload contract starts at version 1; see WithVersion.
func Handle[Req, Resp any](name, description string, fn func(ctx context.Context, req Req) (Resp, error)) *TypedHandler[Req, Resp] {
	return &TypedHandler[Req, Resp]{
		desc: &wire.MessageType{Name: name, Version: 1, Description: description},
		fn:   fn,
	}
}

// WithVersion sets the version of the message type's payload contract.
// Bump it when a change is not backward compatible.
func (h *TypedHandler[Req, Resp]) WithVersion(v uint32) *TypedHandler[Req, Resp] {
	h.desc.Version = v
	return h
}

// Changes declares the namespaces whose state the message type changes,
// named as nsexec.Namespaces names them: "mnt" for a type that mounts,
// chowns or sets xattrs, "net" for one that configures interfaces. The
// sdk enforces the declaration before the handler runs: a request whose
// handler shares one of them with the core (the target has none of its
// own, or the request or the plugin's namespaces setting left it out) is
// refused with EPERM, since the change would land on the host, unless the
// plugin's allow_host_changes setting names that namespace (see
// Env.RequireJoined). The declaration travels in Describe: `nsplug
// plugins` and core.TypeInfo show it. Types that only read declare
// nothing. Serve rejects unknown names.
func (h *TypedHandler[Req, Resp]) Changes(namespaces ...string) *TypedHandler[Req, Resp] {
	h.desc.Changes = append(h.desc.Changes, namespaces...)
	return h
}

// MayChange declares the namespaces whose state the message type changes
// depending on the request (sysctl.set changes the namespace of the sysctl
// it names). The sdk cannot check those before the handler runs: the
// handler calls Env.RequireJoined for the one a request changes, before
// changing anything.
func (h *TypedHandler[Req, Resp]) MayChange(namespaces ...string) *TypedHandler[Req, Resp] {
	h.desc.MayChange = append(h.desc.MayChange, namespaces...)
	return h
}

// Describe implements Handler.
func (h *TypedHandler[Req, Resp]) Describe() *wire.MessageType {
	return &wire.MessageType{Name: h.desc.Name, Version: h.desc.Version, Description: h.desc.Description,
		Changes: slices.Clone(h.desc.Changes), MayChange: slices.Clone(h.desc.MayChange)}
}

// Handle implements Handler.
func (h *TypedHandler[Req, Resp]) Handle(ctx context.Context, payload []byte) ([]byte, error) {
	var req Req
	if err := DecodeStrict(payload, &req); err != nil {
		return nil, Errorf(syscall.EINVAL, "%s: malformed payload: %v", h.desc.Name, err)
	}
	resp, err := h.fn(ctx, req)
	if err != nil {
		return nil, AsError(err)
	}
	out, err := json.Marshal(resp)
	if err != nil {
		return nil, Errorf(syscall.EIO, "%s: encoding response: %v", h.desc.Name, err)
	}
	return out, nil
}
