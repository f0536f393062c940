package core

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
	"strconv"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/wire"
)

// callOneshot serves one request with an instance of its own, started
// without go-plugin: the process is started with wire.EnvOneshot, reads
// the request from its frame channel, answers, and exits when the core
// closes the channel. No handshake, no gRPC server or dial: the sysbox-fs
// model (a process per request) at the cost of little more than an exec.
// The request goes through instance.call like any other; only the start
// and the end differ.
func (d *Dispatcher) callOneshot(ctx context.Context, l launch, req *wire.HandleRequest) (*Response, error) {
	sp, err := l.spec()
	if err != nil {
		return nil, err
	}
	// The start slot is held for the whole request: a oneshot instance
	// starts and serves in one go, and a request that breaks it is a
	// failed start. A handler's own error is a start that went well.
	slot, err := d.pool.reserve(ctx, l.target.admissionKey())
	if err != nil {
		return nil, err
	}
	var startErr error
	defer func() { d.pool.started(ctx, slot, startErr); d.pool.unreserve() }()
	inst, err := d.startOneshot(ctx, sp)
	if err != nil {
		startErr = errorf(syscall.EIO, "starting plugin %s in target pid %d: %v", l.plugin.name, l.target.pid, err)
		return nil, startErr
	}
	expired := inst.runner.limitStart(l.plugin.settings.StartTimeout.Duration)
	resp, broken, err := inst.call(ctx, req)
	if expired() {
		err = errorf(syscall.ETIMEDOUT, "starting plugin %s in target pid %d: it did not start within its start_timeout of %v", l.plugin.name, l.target.pid, l.plugin.settings.StartTimeout.Duration)
	}
	inst.end(broken)
	if broken {
		startErr = err
	}
	return resp, err
}

// startOneshot starts a oneshot instance. It binds no socket, but the
// bootstrap contract gives it a socket directory (fd 4): the directory is
// removed as soon as the process holds it. Its stdout is discarded and
// its stderr relayed into the core's log, as go-plugin does for others.
func (d *Dispatcher) startOneshot(ctx context.Context, sp *spec) (*instance, error) {
	dir, err := d.runDir.enter()
	if err != nil {
		return nil, err
	}
	defer d.runDir.leave()
	sockDir, err := os.MkdirTemp(dir, "oneshot-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(sockDir)
	r := d.newRunner(sp, sockDir, []string{wire.EnvOneshot + "=1", wire.Handshake.MagicCookieKey + "=" + wire.Handshake.MagicCookieValue})
	if err := r.Start(ctx); err != nil {
		return nil, err
	}
	var pipes sync.WaitGroup
	pipes.Add(2)
	go func() { defer pipes.Done(); io.Copy(io.Discard, r.stdout) }()
	go func() { defer pipes.Done(); relayLog(d.log.Named(sp.plugin.name), r.stderr) }()
	go func() {
		pipes.Wait() // os/exec: read the pipes to the end before Wait
		r.Wait(context.Background())
	}()
	inst := &instance{plugin: sp.plugin, runner: r}
	inst.pid, _ = strconv.Atoi(r.ID())
	return inst, nil
}

// relayLog re-logs a plugin's hclog JSON lines (plain lines at debug).
func relayLog(log hclog.Logger, r io.Reader) {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		var entry map[string]any
		if json.Unmarshal(s.Bytes(), &entry) != nil {
			log.Debug(s.Text())
			continue
		}
		msg, _ := entry["@message"].(string)
		level := hclog.LevelFromString(func() string { l, _ := entry["@level"].(string); return l }())
		var args []any
		for k, v := range entry {
			if len(k) > 0 && k[0] != '@' && k != "timestamp" {
				args = append(args, k, v)
			}
		}
		if level == hclog.NoLevel {
			level = hclog.Info
		}
		log.Log(level, msg, args...)
	}
	io.Copy(io.Discard, r)
}
