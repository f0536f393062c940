package core

import (
	"context"
	"syscall"
	"time"

	"github.com/nsplug/nsplug/wire"
)

// callOneshot serves one request with an instance of its own, started
// as every serving process is (startFramed): it reads the request from
// its frame channel, answers, and exits when the core closes the
// channel. No handshake, no gRPC server or dial: the sysbox-fs
// model (a process per request) at the cost of little more than an exec.
// The request goes through instance.call like any other; only the start
// and the end differ.
func (d *Dispatcher) callOneshot(ctx context.Context, l launch, acct *Account, req *wire.HandleRequest) (*Response, error) {
	sp, err := l.spec()
	if err != nil {
		return nil, err
	}
	// The start slot is held for the whole request: a oneshot instance
	// starts and serves in one go, and a request that breaks it is a
	// failed start. A handler's own error is a start that went well.
	slot, err := d.pool.reserve(ctx, l.target.admissionKey(), acct)
	if err != nil {
		return nil, err
	}
	var startErr error
	defer func() { d.pool.started(ctx, slot, startErr); d.pool.unreserve(acct) }()
	began := time.Now()
	inst, err := d.startFramed(ctx, sp)
	if err != nil {
		startErr = errorf(syscall.EIO, "starting plugin %s in target pid %d: %v", l.plugin.name, l.target.pid, err)
		d.startEvent(began, l.plugin, true, &inst, &startErr)
		return nil, startErr
	}
	d.startEvent(began, l.plugin, true, &inst, &err)
	d.pool.running(slot) // serving: no start slot of other targets' held
	expired := inst.runner.limitStart(began, l.plugin.settings.StartTimeout.Duration)
	resp, broken, err := inst.call(ctx, req)
	if expired() {
		err = errorf(syscall.ETIMEDOUT, "starting plugin %s in target pid %d: it did not start within its start_timeout of %v", l.plugin.name, l.target.pid, l.plugin.settings.StartTimeout.Duration)
	}
	inst.end(broken)
	inst.ending(InstanceDone, nil)
	emit(d.events, inst.endEvent(true))
	if broken {
		startErr = err
	}
	return resp, err
}
