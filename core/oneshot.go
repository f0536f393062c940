package core

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/wire"
)

// callOneshot serves one request with a process of its own, without
// go-plugin: the process is started with wire.EnvOneshot, reads the request
// from its frame channel, answers, and exits when the core closes the
// channel. No handshake, no gRPC server or dial: the sysbox-fs model (a
// process per request) at the cost of little more than an exec. Plugins
// that do not serve frames get a go-plugin instance per request instead.
func (d *Dispatcher) callOneshot(ctx context.Context, l launch, req *wire.HandleRequest) (*Response, error) {
	sp, err := l.spec()
	if err != nil {
		return nil, err
	}
	// The start slot is held for the whole request: a oneshot process
	// starts and serves in one go. A handler's own error is a start that
	// went well.
	slot, err := d.pool.reserve(ctx, l.target.admissionKey())
	if err != nil {
		return nil, err
	}
	var startErr error
	defer func() { d.pool.started(ctx, slot, startErr); d.pool.unreserve() }()
	r, err := d.startOneshot(ctx, sp)
	if err != nil {
		startErr = errorf(syscall.EIO, "starting plugin %s in target pid %d: %v", l.plugin.name, l.target.pid, err)
		return nil, startErr
	}
	var pipes sync.WaitGroup
	pipes.Add(2)
	go func() { defer pipes.Done(); io.Copy(io.Discard, r.stdout) }()
	go func() { defer pipes.Done(); relayLog(d.log.Named(l.plugin.name), r.stderr) }()
	reaped := make(chan struct{})
	go func() {
		pipes.Wait() // os/exec: read the pipes to the end before Wait
		r.Wait(context.Background())
		close(reaped)
	}()
	defer func() {
		// Closing the channel tells the plugin to exit; a plugin that
		// does not within a second is killed. Either way it is reaped
		// before the request returns: nothing of it stays in the target.
		r.frames.shutdown()
		select {
		case <-reaped:
		case <-time.After(time.Second):
			r.Kill(context.Background())
			<-reaped
		}
	}()
	resp, files, err := r.frames.roundTrip(ctx, req)
	if err != nil {
		startErr = r.callError(ctx, req.Type, err)
		return nil, startErr
	}
	if e := resp.Error; e != nil {
		closeFiles(files)
		return nil, &Error{Errno: syscall.Errno(e.Errno), Message: e.Message}
	}
	if int(resp.Files) != len(files) {
		closeFiles(files)
		return nil, errorf(syscall.EIO, "plugin %s announced %d files and sent %d", l.plugin.name, resp.Files, len(files))
	}
	return &Response{Payload: json.RawMessage(resp.Payload), Files: files}, nil
}

// startOneshot starts a oneshot process. It binds no socket, but the
// bootstrap contract gives it a socket directory (fd 4): the directory is
// removed as soon as the process holds it.
func (d *Dispatcher) startOneshot(ctx context.Context, sp *spec) (*nsRunner, error) {
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
	return r, r.Start(ctx)
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
