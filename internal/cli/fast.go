package cli

import (
	"context"
	"errors"

	"github.com/nsplug/nsplug/api/fast"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/internal/apiconv"
	"github.com/nsplug/nsplug/wire"
)

// callDaemon is call through the daemon at addr: its fast path (api/fast),
// which also hands back the files a handler opened. A daemon that does not
// speak it is called through gRPC (Hooks.CallDaemon), in the full binary
// when this one has no gRPC.
func callDaemon(ctx context.Context, h Hooks, addr string, req core.Request) (*core.Response, error) {
	client, err := fast.Dial(addr)
	if err != nil {
		if _, ok := err.(*wire.Error); ok {
			return nil, err
		}
		return nil, UsageErr("%v", err)
	}
	defer client.Close()
	resp, files, err := client.Call(ctx, apiconv.CallRequest(req))
	if errors.Is(err, fast.ErrNotSpoken) {
		if h.CallDaemon == nil {
			return nil, errFull
		}
		return h.CallDaemon(ctx, addr, req)
	}
	if err != nil {
		return nil, err
	}
	return &core.Response{Payload: resp.Payload, Files: files}, nil
}
