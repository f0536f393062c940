package core

import (
	"context"
	"encoding/json"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/wire"
)

// A Channel is a direct channel to the warm instance that serves one
// message type for one target (wire/README.md, "Direct channels"): File
// is a SOCK_SEQPACKET socket on which its holder sends requests of that
// type as frames and reads the handler's answers, with the core off the
// path. It is for a daemon that hands it to a client it has authorized
// (nsplug serve's fast path does), so that the client's requests cost
// what an in-process one does.
//
// What the core gives up on a channel's requests, the serving process
// keeps: the type, the target and request_timeout are the grant's, one
// request at a time. The core watches the instance every
// ChannelWatchInterval: a request run past its timeout by more than the
// cancellation grace, or a process that does not answer, kills the
// instance, which revokes its channels. Counts of what each channel
// served reach Options.ChannelServed at each look.
//
// While it is open a channel holds its instance warm, as a request in
// flight would (no idle_timeout, no eviction); Close revokes it.
type Channel struct {
	File *os.File // the holder's end; the caller's to pass on and close
	ID   uint64
	Type string
	PID  int // the target's, as the core sees it
	// Timeout bounds each of its requests (the plugin's request_timeout,
	// or less as asked); 0 for none.
	Timeout time.Duration

	inst   *instance
	d      *Dispatcher
	target *target // pinned: a target that exits revokes its channels
	revoke int     // a copy of the handler's end: shutdown(2) ends it for both
	once   sync.Once
	done   chan struct{}

	// Guarded by the pool's lock: the counts last reported.
	requests uint64
	errors   map[int32]uint64
}

// ChannelServed is what a channel's requests did since the last report:
// Options.ChannelServed.
type ChannelServed struct {
	Plugin, Type string
	Requests     uint64
	Errors       map[syscall.Errno]uint64 // failed ones by errno (0: none given)
}

// ChannelWatchInterval is how often the core looks at an instance that
// has channels open.
const ChannelWatchInterval = time.Second

// ChannelOptions narrow what a channel grants.
type ChannelOptions struct {
	// Timeout bounds each request of the channel, below the plugin's
	// request_timeout; 0: request_timeout alone.
	Timeout time.Duration
	// MaxRequestBytes bounds each request, below wire.MaxMessageBytes;
	// 0: that.
	MaxRequestBytes int
}

// OpenChannel opens a direct channel for requests of req.Type to the
// target req names, with req's namespaces and credentials, starting the
// instance if need be. req.Payload is not used; req.Authorize and
// req.Account are, as for Call. ctx bounds the opening (a cold start
// included). A plugin in oneshot mode, or one built with an sdk from
// before channels, is EOPNOTSUPP.
func (d *Dispatcher) OpenChannel(ctx context.Context, req Request, opts ChannelOptions) (*Channel, error) {
	if d.closed.Load() {
		return nil, errClosed
	}
	e := d.types[req.Type]
	if e == nil {
		return nil, d.unknownType(req.Type)
	}
	if e.settings.Mode == "oneshot" || d.oneshot {
		return nil, errorf(syscall.EOPNOTSUPP, "%s: plugin %s serves each request with a process of its own (oneshot): a channel needs a warm instance", req.Type, e.name)
	}
	t, join, key, err := d.route(e, req)
	if err != nil {
		return nil, err
	}
	defer t.release()
	timeout := e.settings.RequestTimeout.Duration
	if opts.Timeout > 0 && (timeout <= 0 || opts.Timeout < timeout) {
		timeout = opts.Timeout
	}
	if limit := e.settings.RequestTimeout.Duration; limit > 0 {
		var release func()
		ctx, release = withDeadlineAt(ctx, time.Now().Add(limit))
		defer release()
	}
	inst, err := d.acquire(ctx, key, req.Account, launch{plugin: e.proc, target: t, join: join, creds: req.Credentials})
	if err != nil {
		return nil, err
	}
	ch, broken, err := d.grant(ctx, inst, t, req, timeout, opts.MaxRequestBytes)
	if err != nil {
		d.pool.release(inst, broken)
		return nil, err
	}
	d.pool.mu.Lock()
	if inst.retired || inst.killed {
		// Ended while the grant was on its way: say so rather than hand
		// out a channel nobody watches.
		d.pool.mu.Unlock()
		ch.close()
		ch.File.Close()
		return nil, errorf(syscall.EAGAIN, "%s: its instance ended while the channel opened; try again", req.Type)
	}
	if inst.channels == nil {
		inst.channels = make(map[uint64]*Channel)
	}
	inst.channels[ch.ID] = ch
	watch := !inst.watched
	inst.watched = true
	d.pool.mu.Unlock()
	if watch {
		go d.watch(inst)
	}
	return ch, nil
}

// grant makes the socketpair and hands the handler its end with the
// grant; the instance stays held (inflight) for the channel.
func (d *Dispatcher) grant(ctx context.Context, inst *instance, t *target, req Request, timeout time.Duration, maxRequest int) (*Channel, bool, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, false, errorf(syscall.EMFILE, "%s: a channel's socket: %v", req.Type, err)
	}
	id := d.chanSeq.Add(1)
	g := wire.ChannelGrant{ID: id, Type: req.Type, TimeoutMs: timeout.Milliseconds(), TargetPID: int32(req.PID), TargetNsPID: int32(t.nsPID), MaxRequestBytes: maxRequest}
	payload, _ := json.Marshal(g)
	hreq := &wire.HandleRequest{Type: wire.ChannelOpenType, Payload: payload, RequestId: strconv.FormatUint(d.reqSeq.Add(1), 10), TargetPid: int32(req.PID), TargetNsPid: int32(t.nsPID)}
	_, broken, err := inst.callWith(ctx, hreq, unix.UnixRights(fds[1]))
	if err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		if ce, ok := err.(*Error); ok && ce.Errno == syscall.EOPNOTSUPP && !broken {
			err = errorf(syscall.EOPNOTSUPP, "%s: plugin %s serves no direct channels (built with an sdk from before them); call it instead", req.Type, inst.plugin.name)
		}
		return nil, broken, err
	}
	t.refs.Add(1) // the channel's, until it is revoked
	return &Channel{File: os.NewFile(uintptr(fds[0]), "nsplug-channel"), ID: id, Type: req.Type, PID: req.PID, Timeout: timeout,
		inst: inst, d: d, target: t, revoke: fds[1], done: make(chan struct{})}, false, nil
}

// Done is closed once the channel is revoked: by Close, or because its
// instance ended (killed, crashed, the dispatcher closed).
func (ch *Channel) Done() <-chan struct{} { return ch.done }

// Close revokes the channel: its holder's reads see the end, its writes
// fail (EPIPE), the serving process drops it, and the instance is
// released. File stays the caller's to close. Safe to call more than once.
func (ch *Channel) Close() error {
	ch.d.pool.mu.Lock()
	delete(ch.inst.channels, ch.ID)
	ch.d.pool.mu.Unlock()
	ch.close()
	return nil
}

// close revokes without touching the instance's list (its caller did).
func (ch *Channel) close() {
	ch.once.Do(func() {
		unix.Shutdown(ch.revoke, unix.SHUT_RDWR)
		unix.Close(ch.revoke)
		close(ch.done)
		ch.target.release()
		ch.d.pool.release(ch.inst, false)
	})
}

// revokeChannels revokes every channel of inst (it is ending). Called
// without the pool's lock.
func (p *pool) revokeChannels(inst *instance) {
	p.mu.Lock()
	chs := inst.channels
	inst.channels = nil
	p.mu.Unlock()
	for _, ch := range chs {
		ch.close()
	}
}

// watch looks at inst every ChannelWatchInterval while it has channels:
// their counts go to Options.ChannelServed; an overdue request, or a
// process that does not answer within the interval, ends the instance
// (InstanceKilled) and so its channels.
func (d *Dispatcher) watch(inst *instance) {
	tick := time.NewTicker(ChannelWatchInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-inst.gone: // killLocked revoked its channels
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), ChannelWatchInterval)
		stats, err := d.channelStats(ctx, inst)
		cancel()
		if err == nil {
			err = d.account(inst, stats)
		}
		d.pool.mu.Lock()
		left, killed := len(inst.channels), inst.killed
		if err != nil || left == 0 || killed {
			inst.watched = false
		}
		d.pool.mu.Unlock()
		if killed { // by the pool (Close, a crash): it revokes them
			return
		}
		if err != nil {
			d.log.Warn("a channel's instance is ended", "plugin", inst.plugin.name, "pid", inst.pid, "error", err)
			inst.ending(InstanceKilled, err)
			d.pool.mu.Lock()
			inst.abrupt = true
			d.pool.retire(inst)
			d.pool.mu.Unlock()
			d.pool.revokeChannels(inst)
			return
		}
		if left == 0 {
			return
		}
	}
}

// channelStats asks the serving process for its channels' counts.
func (d *Dispatcher) channelStats(ctx context.Context, inst *instance) (*wire.ChannelStats, error) {
	hreq := &wire.HandleRequest{Type: wire.ChannelStatsType, Payload: []byte("{}"), RequestId: strconv.FormatUint(d.reqSeq.Add(1), 10)}
	resp, _, err := inst.call(ctx, hreq)
	if err != nil {
		return nil, err
	}
	closeFiles(resp.Files)
	var stats wire.ChannelStats
	if err := json.Unmarshal(resp.Payload, &stats); err != nil {
		return nil, errorf(syscall.EIO, "plugin %s: malformed channel counts: %v", inst.plugin.name, err)
	}
	return &stats, nil
}

// account reports what each channel served since the last look, and
// closes the channels whose holder has closed its end (the process says
// so, or no longer lists them) or whose target has exited; an overdue
// request is an error.
func (d *Dispatcher) account(inst *instance, stats *wire.ChannelStats) error {
	var served []ChannelServed
	var gone []*Channel
	var overdue error
	listed := make(map[uint64]bool, len(stats.Channels))
	d.pool.mu.Lock()
	for _, c := range stats.Channels {
		ch := inst.channels[c.ID]
		if ch == nil {
			continue
		}
		listed[c.ID] = true
		s := ChannelServed{Plugin: inst.plugin.name, Type: ch.Type}
		if c.Requests > ch.requests {
			s.Requests = c.Requests - ch.requests
		}
		for errno, n := range c.Errors {
			if n > ch.errors[errno] {
				if s.Errors == nil {
					s.Errors = make(map[syscall.Errno]uint64)
				}
				s.Errors[syscall.Errno(errno)] = n - ch.errors[errno]
			}
		}
		ch.requests, ch.errors = c.Requests, c.Errors
		if s.Requests > 0 {
			served = append(served, s)
		}
		if c.Closed {
			delete(listed, c.ID) // closed below, with the unlisted
		}
		if c.Overdue && overdue == nil {
			overdue = errorf(syscall.ETIMEDOUT, "%s: a request on channel %d ran past its timeout and did not stop", ch.Type, c.ID)
		}
	}
	var open []*Channel
	for id, ch := range inst.channels {
		if listed[id] {
			open = append(open, ch)
		} else {
			delete(inst.channels, id)
			gone = append(gone, ch)
		}
	}
	d.pool.mu.Unlock()
	for _, ch := range gone {
		ch.close()
	}
	// A channel whose target exited is revoked: it was granted for that
	// process, not for whatever keeps its namespaces now. (Asked of the
	// pidfds outside the pool's lock.)
	for _, ch := range open {
		if !ch.target.alive() {
			ch.Close()
		}
	}
	if d.channelServed != nil {
		for _, s := range served {
			d.channelServed(s)
		}
	}
	return overdue
}
