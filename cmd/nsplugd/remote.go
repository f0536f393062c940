package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/internal/cli"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/server"

	apiv1 "github.com/nsplug/nsplug/api/v1"
)

// The daemon's side of call and plugins (--addr, NSPLUG_ADDR): the same
// requests, through the node API, and its errors turned back into the
// core's (server.ErrorFromStatus), so that output and exit codes are those
// of an in-process core.

// callGRPC is a call through the daemon's gRPC API, for a daemon that
// does not speak the fast path (internal/cli tries that first).
func callGRPC(ctx context.Context, addr string, req core.Request) (*core.Response, error) {
	client, conn, err := server.Dial(addr)
	if err != nil {
		return nil, cli.UsageErr("%v", err)
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
		return nil, 0, cli.UsageErr("%v", err)
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

// cmdHealth asks the daemon's grpc.health.v1 service whether it serves:
// exit 0 and "SERVING" when it does, 1 otherwise (a probe's contract).
func cmdHealth(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	addr := fs.String("addr", "", "the daemon at `unix:///PATH` (default: $"+cli.EnvAddr+", else the default socket)")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this `duration`")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return cli.UsageErr("health: unexpected argument %q", pos[0])
	}
	if !cli.FlagGiven(fs, "addr") {
		if *addr = os.Getenv(cli.EnvAddr); *addr == "" {
			*addr = "unix://" + config.Default().Server.Socket
		}
	}
	_, conn, err := server.Dial(*addr)
	if err != nil {
		return cli.UsageErr("%v", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("health of %s: %w", *addr, server.ErrorFromStatus(err))
	}
	fmt.Fprintln(stdout, resp.Status)
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		return &cli.ExitError{Code: 1, Err: fmt.Errorf("%s is %s", *addr, resp.Status)}
	}
	return nil
}
