package main

import (
	"context"
	"time"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/server"

	apiv1 "github.com/nsplug/nsplug/api/v1"
)

// The daemon's side of call and plugins (--addr, NSPLUG_ADDR): the same
// requests, through the node API, and its errors turned back into the
// core's (server.ErrorFromStatus), so that output and exit codes are those
// of an in-process core.

func callDaemon(ctx context.Context, addr string, req core.Request) (*core.Response, error) {
	client, conn, err := server.Dial(addr)
	if err != nil {
		return nil, usageErr("%v", err)
	}
	defer conn.Close()
	resp, err := client.Call(ctx, server.CallRequest(req))
	if err != nil {
		return nil, server.ErrorFromStatus(err)
	}
	return &core.Response{Payload: resp.Payload}, nil
}

func pluginsDaemon(addr string) ([]core.PluginInfo, uint32, error) {
	client, conn, err := server.Dial(addr)
	if err != nil {
		return nil, 0, usageErr("%v", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := client.Plugins(ctx, &apiv1.PluginsRequest{})
	if err != nil {
		return nil, 0, server.ErrorFromStatus(err)
	}
	return server.PluginInfos(resp), resp.ProtocolVersion, nil
}
