package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/nsplug/nsplug/api/fast"
	apiv1 "github.com/nsplug/nsplug/api/v1"
	apisvc "github.com/nsplug/nsplug/api/v1/service"
	"github.com/nsplug/nsplug/server"
)

// Daemon is a real `nsplug serve` process (bin/nsplug) with the embedded
// defaults but for its runtime_dir and socket, in the bench's directory.
type Daemon struct {
	Addr   string
	cmd    *exec.Cmd
	conn   *grpc.ClientConn
	client apisvc.NsplugClient
}

// StartDaemon starts the daemon and waits until it answers.
func (e *Env) StartDaemon() (*Daemon, error) {
	cli, err := e.NsplugCLI()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(e.RunDir, "daemon")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	socket := filepath.Join(dir, "run", "nsplug.sock")
	conf := filepath.Join(dir, "nsplug.toml")
	body := fmt.Sprintf("log_level = \"warn\"\nruntime_dir = %q\n[server]\nsocket = %q\n", filepath.Join(dir, "run"), socket)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return nil, err
	}
	d := &Daemon{Addr: "unix://" + socket, cmd: exec.Command(cli, "serve", "--config", conf)}
	d.cmd.Stderr = os.Stderr
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	if d.client, d.conn, err = server.Dial(d.Addr); err != nil {
		d.Close()
		return nil, err
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := d.client.Types(ctx, &apiv1.TypesRequest{})
		cancel()
		if err == nil {
			return d, nil
		}
		if time.Now().After(deadline) {
			d.Close()
			return nil, fmt.Errorf("nsplug serve did not answer within 30s: %v", err)
		}
	}
}

// Close ends the daemon as an operator does (SIGTERM) and reaps it.
func (d *Daemon) Close() {
	if d.conn != nil {
		d.conn.Close()
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-done
	}
}

// DaemonCallCase is a call from this process, a separate client, as a
// Go program making calls to one target makes them: on a direct channel
// the daemon opened for it (api/fast Client.OpenChannel, authorized as a
// Call), straight to the daemon's warm instance, with no daemon on the
// way. Opening the channel is not timed; DaemonRelayCase is the same
// request through the daemon.
func (e *Env) DaemonCallCase(d *Daemon) (*Case, error) {
	req, client, err := e.dialDaemon(d)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	ch, err := client.OpenChannel(ctx, req) // a cold start, if any, not timed
	if err != nil {
		client.Close()
		return nil, err
	}
	return &Case{
		Name: "daemon_call",
		Op: func() error {
			out, _, err := ch.Call(ctx, req.Payload)
			if err != nil {
				return err
			}
			return checkRead(out)
		},
		Close: func() { ch.Close(); client.Close() },
	}, nil
}

// DaemonRelayCase is a Call through the daemon from this process, as
// `nsplug call --addr` makes it: the fast path (api/fast) on one
// connection, the daemon's authorization and dispatch to its warm
// instance, and the answer over its unix socket.
func (e *Env) DaemonRelayCase(d *Daemon) (*Case, error) {
	req, client, err := e.dialDaemon(d)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	if _, _, err := client.Call(ctx, req); err != nil { // the cold start, not timed
		client.Close()
		return nil, err
	}
	return &Case{
		Name: "daemon_relay",
		Op: func() error {
			resp, _, err := client.Call(ctx, req)
			if err != nil {
				return err
			}
			return checkRead(resp.Payload)
		},
		Close: func() { client.Close() },
	}, nil
}

// DaemonGRPCCallCase is the same Call through the daemon's gRPC service,
// as a client in another language makes it.
func (e *Env) DaemonGRPCCallCase(d *Daemon) (*Case, error) {
	req, err := e.daemonRequest()
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	if _, err := d.client.Call(ctx, req); err != nil { // the connection, not timed
		return nil, err
	}
	return &Case{
		Name: "daemon_grpc_call",
		Op: func() error {
			resp, err := d.client.Call(ctx, req)
			if err != nil {
				return err
			}
			return checkRead(resp.Payload)
		},
		Close: func() {},
	}, nil
}

// dialDaemon is the daemon cases' request and a fast-path connection.
func (e *Env) dialDaemon(d *Daemon) (*apiv1.CallRequest, *fast.Client, error) {
	req, err := e.daemonRequest()
	if err != nil {
		return nil, nil, err
	}
	client, err := fast.Dial(d.Addr)
	if err != nil {
		return nil, nil, err
	}
	return req, client, nil
}

func (e *Env) daemonRequest() (*apiv1.CallRequest, error) {
	t, err := e.Target()
	if err != nil {
		return nil, err
	}
	return &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(t.PID())}, Type: "procfs.read", Payload: readPayload}, nil
}

// CLIDaemonCase is a whole `nsplug call --addr` process per operation,
// each paired with an `nsenter -t PID -a cat` just before it, as CLICase.
func (e *Env) CLIDaemonCase(d *Daemon) (*CLICase, error) {
	return e.pairedCLICase("cli_daemon", "call", "--addr", d.Addr)
}
