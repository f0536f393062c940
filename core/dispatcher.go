package core

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/internal/spawner"
	"github.com/nsplug/nsplug/nsexec/boot"
	"github.com/nsplug/nsplug/wire"
)

// Options are what an embedder gives New besides the configuration.
type Options struct {
	// Logger receives the core's log and, under each plugin's name, the
	// plugins' logs. Default: stderr at the configured log_level.
	Logger hclog.Logger
	// Builtins are the built-in plugins this binary serves, by re-executing
	// itself (see Builtin; plugins/builtin.All). A [[plugin]] without a
	// path names one.
	Builtins []Builtin
	// Executable serves the built-ins. Default: HandlerExecutable in the
	// directory of this process's executable, when it is there and the
	// built-ins have a Build; else this process's executable, which must
	// then serve them first thing in main (plugins/builtin.Main).
	Executable string
	// LoadFailureLevel is the level at which New logs, once, each plugin
	// that fails to load; zero means hclog.Warn. A caller that reports
	// load failures its own way lowers it: Plugins lists them, and a
	// request of a failed plugin's type fails naming the failure (nsplug's
	// CLI logs them at debug, so that a call served by another plugin
	// prints nothing on stderr).
	LoadFailureLevel hclog.Level
	// Oneshot serves every request with a process of its own, started for
	// it and reaped before the request returns, whatever each plugin's
	// mode: for a process that makes one request and exits (nsplug call),
	// which a pooled instance would outlive for nothing but the cost of
	// its control plane (go-plugin's handshake, gRPC, a graceful shutdown).
	Oneshot bool
	// Started, when set, is called with the host pid of every plugin
	// process the core starts (to serve requests, for one oneshot
	// request, or to describe a plugin), as soon as it runs. It is for
	// accounting: a supervisor, or a test checking that no process of
	// this dispatcher outlives Close. It must not block.
	Started func(pid int)
	// Events, when set, is told of each instance's start (or failed
	// start) and of how it ended: crashed, killed, evicted, idle,
	// closed (see Event). It is for observing the pool (a daemon's
	// metrics); it is called without the core's locks held, from the
	// requests' goroutines and the pool's, concurrently, and must not
	// block.
	Events func(Event)
	// ChannelServed, when set, is told what the requests of each direct
	// channel (OpenChannel) did, about every ChannelWatchInterval while
	// they come: they never pass through the core. Called from the
	// core's goroutines, it must not block.
	ChannelServed func(ChannelServed)
}

// TypeInfo describes one registered message type.
type TypeInfo struct {
	Name        string `json:"name"`
	Version     uint32 `json:"version"`
	Description string `json:"description"`
	Plugin      string `json:"plugin"`
	// Changes are the namespaces whose state the type changes ("mnt" for
	// mount.mount), as the plugin declares them; MayChange those it
	// changes depending on the request (sysctl.set: its sysctl's). Where
	// the handler shares such a namespace with the core, the request is
	// refused (EPERM) unless the plugin's allow_host_changes names it.
	// Both are empty for a type that only reads.
	Changes   []string `json:"changes,omitempty"`
	MayChange []string `json:"may_change,omitempty"`
}

// PluginInfo describes one configured plugin.
type PluginInfo struct {
	Name    string `json:"name"`
	Builtin bool   `json:"builtin"`
	Path    string `json:"path,omitempty"`
	SHA256  string `json:"sha256"`
	Mode    string `json:"mode"`
	// Status is PluginOK, or PluginFailed when the plugin could not be
	// loaded; Error then says why, and Types is empty.
	Status string     `json:"status"`
	Error  string     `json:"error,omitempty"`
	Types  []TypeInfo `json:"types"`
}

// The values of PluginInfo.Status.
const (
	PluginOK     = "ok"
	PluginFailed = "failed"
)

// Dispatcher runs requests inside targets' namespaces through plugins.
// It is safe for concurrent use. Close it to kill every plugin process.
type Dispatcher struct {
	cfg     *config.Config
	log     hclog.Logger
	plugins []*pluginEntry
	types   map[string]*pluginEntry
	failed  map[string]*pluginEntry // types configured for plugins that failed to load
	selfNS  nsSet
	build   string // the Build of every built-in, or "" if they differ
	runDir  *runDir
	started func(pid int) // Options.Started
	events  func(Event)   // Options.Events
	oneshot bool          // Options.Oneshot
	pool    *pool
	targets targetCache
	reqSeq  atomic.Uint64
	chanSeq atomic.Uint64 // channel ids (OpenChannel)
	// channelServed is Options.ChannelServed.
	channelServed func(ChannelServed)
	closed        atomic.Bool
}

// New starts a dispatcher: it validates the configuration, seals each
// plugin's executable, checks its options, asks it which message types it
// serves and builds the type registry. Nothing runs in any target until
// Dispatch.
//
// New raises the process's soft fd limit (RLIMIT_NOFILE) to its hard
// limit: every warm instance and pinned target costs the core fds, and a
// node with hundreds of targets needs thousands (see raiseFileLimit).
//
// A plugin that fails to load is recorded as failed, with its error
// (Plugins shows it, a request of one of its types fails with ENOPKG
// naming it), logged once (at Options.LoadFailureLevel), and the others
// serve; with fail_on_plugin_error New fails instead. A bad configuration
// is New's error either way.
func New(cfg *config.Config, opts Options) (_ *Dispatcher, err error) {
	if cfg == nil {
		cfg = config.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = hclog.New(&hclog.LoggerOptions{Name: "nsplug", Level: hclog.LevelFromString(cfg.LogLevel), Output: os.Stderr})
	}
	if lim, err := raiseFileLimit(); err != nil {
		log.Warn("could not raise the fd limit (RLIMIT_NOFILE) to its hard limit", "soft", lim.Cur, "hard", lim.Max, "error", err)
	} else if lim.Cur < lim.Max {
		log.Debug("raised the fd limit (RLIMIT_NOFILE) to its hard limit", "soft", lim.Cur, "hard", lim.Max)
	}
	d := &Dispatcher{cfg: cfg, log: log, started: opts.Started, oneshot: opts.Oneshot, types: make(map[string]*pluginEntry), failed: make(map[string]*pluginEntry), pool: newPool(cfg.MaxInstances, newAdmission(cfg.MaxStartsPerTarget, cfg.StartLimit(), cfg.MaxQueuedStarts))}
	d.events, d.pool.events = opts.Events, opts.Events
	d.channelServed = opts.ChannelServed
	// The namespaces plugins start in are the spawner thread's. Read them
	// there: /proc/self shows the main thread's, which a thread locked by
	// some other code of the process (and left in a foreign namespace,
	// as CNI's ns package warns) may have moved.
	spawner.Do(func() { d.selfNS, err = readNSSet("thread-self") })
	if err != nil {
		return nil, fmt.Errorf("reading the core's own namespaces: %w", err)
	}
	if d.runDir, err = newRunDir(cfg.RuntimeDir); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	l := &loader{d: d, cfg: cfg, self: opts.Executable, builtins: make(map[string]*Builtin)}
	for i, b := range opts.Builtins {
		if b.Name == "" || b.Describe == nil {
			return nil, fmt.Errorf("Options.Builtins[%d]: a built-in needs a Name and a Describe", i)
		}
		l.builtins[b.Name] = &opts.Builtins[i]
		switch {
		case i == 0:
			d.build = b.Build
		case b.Build != d.build:
			d.build = "" // no one identity to check a handler executable against
		}
	}
	failLevel := opts.LoadFailureLevel
	if failLevel == hclog.NoLevel {
		failLevel = hclog.Warn
	}
	for _, pc := range pluginConfigs(cfg.Plugins, opts.Builtins) {
		e := &pluginEntry{name: pc.Name, path: pc.Path}
		d.plugins = append(d.plugins, e)
		if err := l.load(e, &pc); err != nil {
			if cfg.FailOnPluginError {
				return nil, err
			}
			d.recordFailure(e, l.knownTypes(&pc), err, failLevel)
		}
	}
	if err := d.shareBuiltins(); err != nil {
		return nil, err
	}
	return d, nil
}

// Dispatch runs one request in the target's namespaces and returns the
// handler's JSON response; any files handed back are closed (see Call).
// ctx's cancellation or deadline (and the plugin's request_timeout) end
// the work. Every error is an *Error.
func (d *Dispatcher) Dispatch(ctx context.Context, req Request) (json.RawMessage, error) {
	resp, err := d.Call(ctx, req)
	if err != nil {
		return nil, err
	}
	closeFiles(resp.Files)
	return resp.Payload, nil
}

// Call is Dispatch that also returns the files a handler hands back.
func (d *Dispatcher) Call(ctx context.Context, req Request) (*Response, error) {
	if d.closed.Load() {
		return nil, errClosed
	}
	e := d.types[req.Type]
	if e == nil {
		return nil, d.unknownType(req.Type)
	}
	payload := req.Payload
	if len(payload) == 0 {
		payload = json.RawMessage("{}")
	}
	if trimmed := bytes.TrimSpace(payload); len(trimmed) == 0 || trimmed[0] != '{' || !json.Valid(trimmed) {
		return nil, errorf(syscall.EINVAL, "%s: payload is not a JSON object", req.Type)
	}
	t, join, key, err := d.route(e, req)
	if err != nil {
		return nil, err
	}
	defer t.release()

	if timeout := e.settings.RequestTimeout.Duration; timeout > 0 {
		var release func()
		ctx, release = withDeadlineAt(ctx, time.Now().Add(timeout))
		defer release()
	}
	oneshot := e.settings.Mode == "oneshot"
	id := strconv.FormatUint(d.reqSeq.Add(1), 10)
	hreq := &wire.HandleRequest{Type: req.Type, Payload: payload, RequestId: id, TargetPid: int32(req.PID), TargetNsPid: int32(t.nsPID)}
	// Refused here, before any instance is used, as the sdk refuses a
	// response over the limit: sent, it would only be refused there. (The
	// margin covers the id, the pid and the field headers.)
	if len(payload)+len(req.Type) > wire.MaxMessageBytes-64 && proto.Size(hreq) > wire.MaxMessageBytes {
		return nil, errorf(syscall.EIO, "%s: %v", req.Type, wire.TooLarge("request", proto.Size(hreq)))
	}
	l := launch{plugin: e.proc, target: t, join: join, creds: req.Credentials}
	if oneshot {
		return d.callOneshot(ctx, l, req.Account, hreq)
	}
	inst, err := d.acquire(ctx, key, req.Account, l)
	if err != nil {
		return nil, err
	}
	resp, broken, err := inst.call(ctx, hreq)
	d.pool.release(inst, broken)
	if err != nil {
		var ce *Error
		if errors.As(err, &ce) && broken {
			level := hclog.Warn
			if ce.Errno == syscall.ECANCELED || ce.Errno == syscall.ETIMEDOUT {
				level = hclog.Debug // the caller's deadline or cancellation: killed as meant
			}
			d.log.Log(level, "request failed; instance retired", "type", req.Type, "pid", req.PID, "request_id", id, "error", ce.Message)
		}
		return nil, err
	}
	return resp, nil
}

// route validates a request's namespaces and credentials, pins its target
// and names the instance that serves it. The caller releases the target.
func (d *Dispatcher) route(e *pluginEntry, req Request) (t *target, join uintptr, key string, err error) {
	join = e.join
	if req.Namespaces != nil {
		narrowed, err := boot.ParseNamespaces(req.Namespaces)
		if err != nil {
			return nil, 0, "", errorf(syscall.EINVAL, "%v", err)
		}
		join &= narrowed
	}
	if err := req.Credentials.validate(); err != nil {
		return nil, 0, "", err
	}
	if err := req.Account.validate(); err != nil {
		return nil, 0, "", err
	}
	if t, err = d.pin(Target{PID: req.PID, StartTime: req.StartTime, Authorize: req.Authorize}); err != nil {
		return nil, 0, "", err
	}
	join, key = d.instanceKey(e.proc, t, join)
	// One caller's handler never serves another's.
	key += req.Credentials.key()
	return t, join, key, nil
}

// pin pins the process tg names: ESRCH when it is gone, even if its pid
// names another process now; then tg.Authorize decides on it. The caller
// releases it.
func (d *Dispatcher) pin(tg Target) (*target, error) {
	t, err := d.targets.pin(tg.PID)
	if err != nil {
		return nil, err
	}
	if err := t.checkStartTime(tg.StartTime); err != nil {
		t.release()
		return nil, err
	}
	if tg.Authorize != nil {
		if err := tg.Authorize(t.info(&d.selfNS)); err != nil {
			t.release()
			var ce *Error
			if !errors.As(err, &ce) {
				ce = errorf(syscall.EACCES, "%v", err)
			}
			return nil, ce
		}
	}
	return t, nil
}

// acquire gets the instance for key from the pool, starting it if need be.
func (d *Dispatcher) acquire(ctx context.Context, key string, acct *Account, l launch) (*instance, error) {
	return d.pool.acquire(ctx, key, l.target.admissionKey(), acct, func() (startFunc, func()) {
		// The start may outlive this request (see pool): it holds the
		// target for itself, and knows nothing of the request's ctx.
		l.target.refs.Add(1)
		l.creds = l.creds.clone()
		return func() (*instance, error) {
			defer l.target.release()
			inst, err := d.startInstance(context.Background(), l)
			if err != nil {
				return nil, err
			}
			inst.runner.setOnExit(func() { d.pool.exited(inst) })
			return inst, nil
		}, l.target.release
	})
}

// Prepare starts, ahead of any request, the warm instances that would
// serve requests of the given message types for the target process
// (every pooled plugin when types is empty), so that the first request is
// a warm one. A daemon calls it when it learns of a new target (a
// container start, say); with tg.StartTime set, a target that has exited
// meanwhile, its pid reused, is ESRCH and nothing is started. Instances
// of plugins in oneshot mode are not kept, so they are skipped. The
// instances live as any other: until idle_timeout.
func (d *Dispatcher) Prepare(ctx context.Context, tg Target, types ...string) error {
	if d.closed.Load() {
		return errClosed
	}
	var plugins []*pluginEntry
	seen := make(map[*pluginEntry]bool)
	add := func(e *pluginEntry) {
		if !seen[e.proc] && e.settings.Mode != "oneshot" && len(e.types) > 0 {
			seen[e.proc] = true
			plugins = append(plugins, e.proc)
		}
	}
	if len(types) == 0 {
		for _, e := range d.plugins {
			add(e)
		}
	}
	for _, typ := range types {
		e := d.types[typ]
		if e == nil {
			return d.unknownType(typ)
		}
		add(e)
	}
	// The target is checked once, before anything starts, and pinned for
	// all of them: as a request without namespaces or credentials would be.
	if err := tg.Account.validate(); err != nil {
		return err
	}
	t, err := d.pin(tg)
	if err != nil {
		return err
	}
	defer t.release()
	var errs []error
	for _, e := range plugins {
		join, key := d.instanceKey(e, t, e.join)
		inst, err := d.acquire(ctx, key, tg.Account, launch{plugin: e, target: t, join: join})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		d.pool.release(inst, false)
	}
	return errors.Join(errs...)
}

// Type describes the registered message type name: its TypeInfo, and the
// namespaces its plugin may join (its namespaces setting: every kind by
// default), which a daemon checks before serving a caller other than root.
// ok is false when no loaded plugin serves the type.
func (d *Dispatcher) Type(name string) (info TypeInfo, namespaces []string, ok bool) {
	e := d.types[name]
	if e == nil {
		return TypeInfo{}, nil, false
	}
	for _, ti := range e.types {
		if ti.Name == name {
			info = ti
		}
	}
	return info, boot.NamespaceNames(e.join), true
}

// instanceKey decides which namespaces to join (those of join where the
// target differs from the core) and the key of the instance serving them.
func (d *Dispatcher) instanceKey(e *pluginEntry, t *target, join uintptr) (uintptr, string) {
	// A pinned target is reused for many requests: compute each key once.
	in := keyInput{e, join}
	if k, ok := t.keys.Load(in); ok {
		out := k.(keyOutput)
		return out.join, out.key
	}
	join, key := d.computeKey(e, t, join)
	t.keys.Store(in, keyOutput{join, key})
	return join, key
}

type keyInput struct {
	plugin *pluginEntry
	join   uintptr
}

type keyOutput struct {
	join uintptr
	key  string
}

func (d *Dispatcher) computeKey(e *pluginEntry, t *target, join uintptr) (uintptr, string) {
	var b strings.Builder
	b.WriteString(e.name)
	for i, ns := range boot.Namespaces {
		if join&ns.Flag == 0 {
			continue
		}
		if t.ns[i] == d.selfNS[i] || t.ns[i] == (nsID{}) {
			join &^= ns.Flag // shared with the core: nothing to join
			continue
		}
		fmt.Fprintf(&b, "/%s:%d:%d", ns.Name, t.ns[i].dev, t.ns[i].ino)
	}
	return join, b.String()
}

// Types lists the registered message types, sorted by name.
func (d *Dispatcher) Types() []TypeInfo {
	var out []TypeInfo
	for _, e := range d.plugins {
		out = append(out, e.types...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Plugins lists the configured plugins in configuration order.
func (d *Dispatcher) Plugins() []PluginInfo {
	var out []PluginInfo
	for _, e := range d.plugins {
		info := PluginInfo{Name: e.name, Builtin: e.builtin, Mode: e.settings.Mode, Status: PluginOK, Types: e.types}
		if e.err != nil {
			info.Status, info.Error = PluginFailed, e.reason()
		}
		info.SHA256 = e.sha256
		if e.builtin && e.exe != nil {
			info.SHA256 = e.exe.sum()
		}
		if info.Types == nil {
			info.Types = []TypeInfo{}
		}
		if !e.builtin {
			info.Path = e.path
		}
		out = append(out, info)
	}
	return out
}

// Close kills and reaps every plugin process. Requests in flight fail. It is safe to call twice.
func (d *Dispatcher) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	d.pool.close()
	d.targets.close()
	seen := make(map[*sealedExecutable]bool)
	for _, e := range d.plugins {
		if e.exe != nil && !seen[e.exe] {
			seen[e.exe] = true
			e.exe.close()
		}
	}
	return nil
}

// InstanceInfo describes one live plugin process.
type InstanceInfo struct {
	// Plugin names what the process serves: a plugin, or the built-ins
	// that share it joined by "+" ("procfs+fs+ids+sysctl+mount").
	Plugin string `json:"plugin"`
	// Plugins are the plugins it serves, one unless built-ins share it.
	Plugins []string `json:"plugins"`
	// PID is the host pid of the process serving requests: for a
	// plugin forked into a pid namespace, the child of the waiter the
	// core started (RunnerPID).
	PID       int      `json:"pid"`
	RunnerPID int      `json:"runner_pid"`
	Joined    []string `json:"joined"` // namespaces joined
	// Inflight counts its requests in flight and its open channels
	// (each holds it as a request would).
	Inflight int `json:"inflight"`
	// Channels is its open direct channels (OpenChannel).
	Channels int `json:"channels"`
	// Target is the host pid of the target the process serves.
	Target int `json:"target_pid"`
	// Account is the Account it is charged to (Account.Name); empty
	// for none.
	Account string `json:"account,omitempty"`
}

// Instances lists the live plugin processes.
func (d *Dispatcher) Instances() []InstanceInfo {
	d.pool.mu.Lock()
	defer d.pool.mu.Unlock()
	var out []InstanceInfo
	for inst := range d.pool.live {
		info := InstanceInfo{Plugin: inst.plugin.name, Plugins: inst.plugin.served(), PID: inst.pid, RunnerPID: inst.pid,
			Joined: boot.NamespaceNames(inst.runner.boot.Join), Inflight: inst.inflight, Channels: len(inst.channels), Target: inst.target, Account: inst.account}
		if inst.runner.boot.Forks() {
			if kids, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", inst.pid, inst.pid)); err == nil {
				// The waiter's other child, the root keeper, is gone
				// once the instance serves, or a zombie for a moment.
				for _, f := range strings.Fields(string(kids)) {
					if stat, err := os.ReadFile("/proc/" + f + "/stat"); err == nil && !bytes.Contains(stat, []byte(") Z ")) {
						info.PID, _ = strconv.Atoi(f)
						break
					}
				}
			}
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out
}
