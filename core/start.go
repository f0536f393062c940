package core

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/wire"
)

// startInstance starts the process of a pooled instance and waits until
// it serves. Like a oneshot one it is started without go-plugin
// (wire.EnvFramesOnly): every request goes on the frame channel, so a
// serving process needs no socket, handshake, gRPC server or dial, and
// the core keeps for it only the frame channel, one pipe for its log
// and one goroutine (go-plugin's client held about seven fds and fifteen
// goroutines). go-plugin launches a plugin only to describe it, once, at
// load (describeExternal), where the protocol version is negotiated; an
// instance runs the same sealed bytes.
func (d *Dispatcher) startInstance(ctx context.Context, l launch) (inst *instance, err error) {
	defer d.startEvent(time.Now(), l.plugin, false, &inst, &err)
	p := l.plugin
	sp, err := l.spec()
	if err != nil {
		return nil, err
	}
	inst, err = d.startFramed(ctx, sp)
	if err == nil {
		if err = inst.runner.ready(ctx, p.settings.StartTimeout.Duration); err == nil {
			inst.runner.news.Store(true) // serving: an exit the core did not ask for is news
		} else {
			if status, exited := inst.runner.ExitedWithin(100 * time.Millisecond); exited && status != nil {
				err = fmt.Errorf("%v (%v)", err, status)
			}
			inst.end(true)
		}
	}
	if err == nil {
		inst.target = l.target.pid
		d.log.Debug("plugin instance started", "plugin", p.name, "pid", inst.pid, "target_pid", l.target.pid)
	}
	if err != nil {
		msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
		return nil, errorf(syscall.EIO, "starting plugin %s in target pid %d: %s", p.name, l.target.pid, msg)
	}
	return inst, nil
}

// startFramed starts a plugin process that serves its frame channel
// alone. It binds no socket, but the bootstrap contract gives it a
// socket directory (fd 4): the directory is removed as soon as the
// process holds it. Its stdout and stderr (one pipe) are relayed into
// the core's log, as go-plugin does for others, by the goroutine that
// then reaps it.
func (d *Dispatcher) startFramed(ctx context.Context, sp *spec) (*instance, error) {
	dir, err := d.runDir.enter()
	if err != nil {
		return nil, err
	}
	defer d.runDir.leave()
	sockDir, err := os.MkdirTemp(dir, "framed-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(sockDir)
	r := d.newRunner(sp, sockDir, []string{wire.EnvFramesOnly + "=1", wire.EnvCookie + "=" + wire.Cookie})
	r.framesOnly = true
	if err := r.Start(ctx); err != nil {
		return nil, err
	}
	go func() {
		relayLog(d.log, r.stderr) // to its end: os/exec wants the pipe read before Wait
		r.stderr.Close()
		err := r.Wait(context.Background())
		if r.exitNews {
			// Not ended by the core: news, as go-plugin would say.
			level := hclog.Info
			if err != nil {
				level = hclog.Error
			}
			d.log.Named(sp.plugin.name).Log(level, "plugin process exited", "pid", r.ID(), "error", fmt.Sprint(err))
		}
	}()
	inst := &instance{plugin: sp.plugin, runner: r, gone: make(chan struct{})}
	inst.pid, _ = strconv.Atoi(r.ID())
	return inst, nil
}

// relayLog re-logs a plugin's hclog JSON lines (plain lines at debug)
// under log, named after the line's @module when it has one: in a
// process the built-ins share, each logs under its own name.
func relayLog(log hclog.Logger, r io.Reader) {
	named := map[string]hclog.Logger{}
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 4<<10), 1<<20)
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
			switch k {
			case "@message", "@level", "@timestamp", "timestamp":
			default:
				args = append(args, k, v)
			}
		}
		if level == hclog.NoLevel {
			level = hclog.Info
		}
		l := log
		if module, _ := entry["@module"].(string); module != "" {
			if l = named[module]; l == nil && len(named) < 16 {
				l = log.Named(module)
				named[module] = l
			} else if l == nil {
				l = log
			}
		}
		l.Log(level, msg, args...)
	}
	io.Copy(io.Discard, r)
}
