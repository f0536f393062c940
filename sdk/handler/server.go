package handler

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/proto"

	"github.com/nsplug/nsplug/internal/inproc"
	"github.com/nsplug/nsplug/nsexec"
	"github.com/nsplug/nsplug/wire"
)

// Plugin describes a plugin: its name and its handlers.
type Plugin struct {
	// Name is the plugin's own name for itself: its logger's name and
	// what Describe reports. The configuration's [[plugin]] name is what
	// the core goes by.
	Name string
	// Handlers serve one message type each (see Handle); a type may
	// appear once.
	Handlers []Handler
	// FreshMounts are fresh mounts ("proc", "sys", "cgroup") every
	// instance of the plugin needs, whatever the configuration says: a
	// plugin that must read /proc of a target that may have none asks for
	// "proc" here and finds it in Env.Proc (Env.Sys, Env.Cgroup).
	FreshMounts []string
	// Configure checks the plugin's options (its [plugin.options] table
	// as a JSON object; nil when there is none) and returns the value
	// its handlers read with OptionsFrom. It runs once per process,
	// before anything is served, and when the core loads the plugin: a
	// bad option makes the plugin fail to load, with the configuration
	// file and line of the option (return an OptionError naming it).
	// Build it with TypedOptions. Nil: the plugin takes no options.
	Configure func(options json.RawMessage) (any, error)
}

// server is the in-namespace half of the wire protocol: it serves the
// handlers of one Plugin. sdk.Serve runs it on the frame channel, every
// request's one path, with Describe on go-plugin's control plane (none
// for a serving process); sdktest and the core's built-ins reach it
// in-process through internal/inproc.
type server struct {
	name     string
	handlers map[string]Handler
	changes  map[string][]string // the namespaces each type declares it changes
	describe *wire.DescribeResponse
	log      hclog.Logger
	config   *wire.PluginConfig
	options  any // what Plugin.Configure made of config.Options
	fresh    nsexec.State
	joined   []string
}

func init() {
	inproc.New = func(p any, config *wire.PluginConfig, log hclog.Logger) (inproc.Server, error) {
		return newServer(p.(*Plugin), config, log)
	}
	inproc.Start = start
	inproc.Fail = fail
}

// newServer checks the plugin's handlers and options and returns its
// server. An error from the plugin's Configure hook wraps an
// *OptionError.
func newServer(p *Plugin, config *wire.PluginConfig, log hclog.Logger) (*server, error) {
	if p.Name == "" {
		return nil, fmt.Errorf("sdk: plugin has no name")
	}
	if config == nil {
		config = &wire.PluginConfig{}
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	s := &server{
		name:     p.Name,
		handlers: make(map[string]Handler),
		changes:  make(map[string][]string),
		describe: &wire.DescribeResponse{Plugin: p.Name, FreshMounts: p.FreshMounts},
		log:      log,
		config:   config,
		fresh:    nsexec.Self(),
	}
	if s.fresh.Active {
		s.joined = append([]string{}, nsexec.NamespaceNames(s.fresh.Joined)...)
	}
	for _, m := range p.FreshMounts {
		if m != "proc" && m != "sys" && m != "cgroup" {
			return nil, fmt.Errorf("sdk: plugin %s: fresh mount %q (want proc, sys or cgroup)", p.Name, m)
		}
	}
	for _, h := range p.Handlers {
		d := h.Describe()
		if err := wire.CheckMessageType(d); err != nil {
			return nil, fmt.Errorf("sdk: plugin %s: %w", p.Name, err)
		}
		if _, dup := s.handlers[d.Name]; dup {
			return nil, fmt.Errorf("sdk: plugin %s: message type %q registered twice", p.Name, d.Name)
		}
		s.handlers[d.Name] = h
		s.changes[d.Name] = d.Changes
		s.describe.Types = append(s.describe.Types, d)
	}
	sort.Slice(s.describe.Types, func(i, j int) bool { return s.describe.Types[i].Name < s.describe.Types[j].Name })
	opts, err := configure(p, config.Options)
	if err != nil {
		return nil, fmt.Errorf("sdk: plugin %s: %w", p.Name, err)
	}
	s.options = opts
	return s, nil
}

// Describe implements inproc.Server: the control plane's one call.
func (s *server) Describe(context.Context, *wire.DescribeRequest) (*wire.DescribeResponse, error) {
	return s.describe, nil
}

// SetFreshMounts implements inproc.Server.
func (s *server) SetFreshMounts(proc, sys *os.File) { s.fresh.Proc, s.fresh.Sys = proc, sys }

// SetFreshCgroup implements inproc.Server.
func (s *server) SetFreshCgroup(cgroup *os.File) { s.fresh.Cgroup = cgroup }

// SetJoined implements inproc.Server.
func (s *server) SetJoined(names []string) { s.joined = slices.Clone(names) }

// HandleFiles implements inproc.Server.
func (s *server) HandleFiles(ctx context.Context, req *wire.HandleRequest) (*wire.HandleResponse, []*os.File) {
	return s.handle(ctx, req)
}

// handle handles one request, from the frame channel or in-process
// (HandleFiles). The caller sends and then closes the files.
func (s *server) handle(ctx context.Context, req *wire.HandleRequest) (resp *wire.HandleResponse, files []*os.File) {
	h, ok := s.handlers[req.Type]
	if !ok {
		return wire.ErrorResponse(Errorf(syscall.EOPNOTSUPP, "plugin %s does not serve message type %q", s.name, req.Type)), nil
	}
	env := &Env{
		RequestID:   req.RequestId,
		Type:        req.Type,
		TargetPID:   int(req.TargetPid),
		TargetNSPID: int(req.TargetNsPid),
		Log:         &requestLogger{Logger: s.log, req: req},
		Proc:        s.fresh.Proc,
		Sys:         s.fresh.Sys,
		Cgroup:      s.fresh.Cgroup,
		config:      s.config,
		options:     s.options,
		joined:      s.joined,
	}
	defer func() {
		if r := recover(); r != nil {
			env.Log.Error("handler panicked", "panic", fmt.Sprint(r))
			// Where: the goroutine's stack, the handler's frames in it,
			// for an author who sets log_level = "debug".
			env.Log.Debug("handler panic stack", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			closeAll(env.takeFiles())
			resp, files = wire.ErrorResponse(Errorf(syscall.EIO, "%s: handler panicked: %v", req.Type, r)), nil
		}
	}()
	// A type that changes a namespace it shares with the core would
	// change the host's: refused before its handler runs.
	for _, ns := range s.changes[req.Type] {
		if err := env.RequireJoined(ns); err != nil {
			return wire.ErrorResponse(AsError(err)), nil
		}
	}
	out, err := h.Handle(context.WithValue(ctx, envKey{}, env), req.Payload)
	files = env.takeFiles()
	if err != nil {
		closeAll(files)
		return wire.ErrorResponse(AsError(err)), nil
	}
	resp = &wire.HandleResponse{Payload: out, Files: uint32(len(files)), RequestId: req.RequestId}
	// The core refuses a message over the limit: say so here, where the
	// instance can go on serving, rather than send it (the margin covers
	// the request id and the field headers).
	if len(out) > MaxMessageBytes-1024 && proto.Size(resp) > MaxMessageBytes {
		closeAll(files)
		return wire.ErrorResponse(Errorf(syscall.EIO, "%s: %v", req.Type, wire.TooLarge("response", proto.Size(resp)))), nil
	}
	return resp, files
}

// start is inproc.Start: the part of sdk.Serve before go-plugin.
func start(plugin any) (inproc.Server, hclog.Logger) {
	p := plugin.(*Plugin)
	config := &wire.PluginConfig{}
	if raw := os.Getenv(wire.EnvConfig); raw != "" {
		if err := json.Unmarshal([]byte(raw), config); err != nil {
			fail(fmt.Sprintf("%s: bad %s: %v", p.Name, wire.EnvConfig, err))
		}
		os.Unsetenv(wire.EnvConfig)
	}
	level := hclog.LevelFromString(config.LogLevel)
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	log := hclog.New(&hclog.LoggerOptions{
		Name:       p.Name,
		Level:      level,
		Output:     os.Stderr,
		JSONFormat: true, // go-plugin re-levels JSON lines in the core's log
	})
	server, err := newServer(p, config, log)
	if err != nil {
		fail(err.Error())
	}
	self := nsexec.Self()
	if os.Getenv(wire.EnvFramesOnly) != "" {
		serveFramesOnly(self, log, server.handle)
	}
	if self.Frames != nil {
		if err := serveFrames(self.Frames, log, server.handle, false, nil); err != nil {
			fail("frame channel: " + err.Error())
		}
	}
	return server, log
}

// serveFramesOnly serves a process started without go-plugin
// (wire.EnvFramesOnly), every serving process: the frame channel alone,
// until the core closes it. It does not return.
func serveFramesOnly(self nsexec.State, log hclog.Logger, handle handleFunc) {
	os.Unsetenv(wire.EnvFramesOnly)
	if self.Frames == nil {
		fail("no frame channel (fd 6)")
	}
	if err := nsexec.EnterRoot(); err != nil {
		fail(err.Error())
	}
	// Closing the status pipe tells the core the process serves.
	nsexec.CloseStatus()
	log.Debug("serving on the frame channel", "pid", os.Getpid())
	applyGOGC := sync.OnceFunc(setGOGC(os.Getenv(wire.EnvGOGC)))
	time.AfterFunc(wire.GCDelay, applyGOGC)
	os.Unsetenv(wire.EnvGOGC)
	if err := serveFrames(self.Frames, log, handle, true, applyGOGC); err != nil {
		fail("frame channel: " + err.Error())
	}
	os.Exit(0)
}

// setGOGC returns what sets the GC percent to gogc (wire.EnvGOGC), a
// number or "off"; for "" (not asked) or a bad value, it does nothing.
func setGOGC(gogc string) func() {
	percent, err := strconv.Atoi(gogc)
	if gogc == "off" {
		percent, err = -1, nil
	}
	return func() {
		if err == nil {
			debug.SetGCPercent(percent)
		}
	}
}

func fail(msg string) {
	nsexec.ReportFailure(msg)
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(1)
}

// requestLogger attaches a request's id, target pid and type to every
// line, building the annotated logger only when a handler logs: most
// requests log nothing, and hclog's With costs an allocation or three.
type requestLogger struct {
	hclog.Logger
	req  *wire.HandleRequest
	once sync.Once
	with hclog.Logger
}

func (l *requestLogger) get() hclog.Logger {
	l.once.Do(func() {
		l.with = l.Logger.With("request_id", l.req.RequestId, "target_pid", l.req.TargetPid, "type", l.req.Type)
	})
	return l.with
}

func (l *requestLogger) Log(level hclog.Level, msg string, args ...interface{}) {
	if l.Logger.GetLevel() <= level {
		l.get().Log(level, msg, args...)
	}
}
func (l *requestLogger) Trace(msg string, args ...interface{}) { l.Log(hclog.Trace, msg, args...) }
func (l *requestLogger) Debug(msg string, args ...interface{}) { l.Log(hclog.Debug, msg, args...) }
func (l *requestLogger) Info(msg string, args ...interface{})  { l.Log(hclog.Info, msg, args...) }
func (l *requestLogger) Warn(msg string, args ...interface{})  { l.Log(hclog.Warn, msg, args...) }
func (l *requestLogger) Error(msg string, args ...interface{}) { l.Log(hclog.Error, msg, args...) }
func (l *requestLogger) With(args ...interface{}) hclog.Logger { return l.get().With(args...) }
func (l *requestLogger) Named(name string) hclog.Logger        { return l.get().Named(name) }
func (l *requestLogger) ImpliedArgs() []interface{}            { return l.get().ImpliedArgs() }
