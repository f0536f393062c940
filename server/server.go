package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nsplug/nsplug/api/fast"
	apiv1 "github.com/nsplug/nsplug/api/v1"
	apisvc "github.com/nsplug/nsplug/api/v1/service"
	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	_ "github.com/nsplug/nsplug/core/goplugin" // a daemon loads third-party plugins
	"github.com/nsplug/nsplug/internal/apiconv"
	"github.com/nsplug/nsplug/wire"
)

// maxMessage bounds a gRPC message of the API as the fast path bounds
// its own (fast.MaxMessage): a payload or a response of the contract's
// largest, with room for the fields around it.
const maxMessage = fast.MaxMessage

// Server serves the node API (apisvc.NsplugServer) and grpc.health.v1 in
// front of a core.Dispatcher. Every call carries the kernel's credentials
// of its connection (see Caller); a call without them is refused.
//
// Reload swaps the configuration for new calls at once. When it changes
// anything the dispatcher is built from (any key outside [server]), new
// calls go to a new dispatcher, and the old one is closed as soon as its
// calls in flight have finished: the instances of the old configuration
// retire with it, and the new one starts its own.
type Server struct {
	apisvc.UnimplementedNsplugServer
	log  hclog.Logger
	opts core.Options
	cfg  atomic.Pointer[config.Config]
	grpc *grpc.Server // root's connections
	// userGRPC serves every other uid's connections: the same service,
	// with their requests bounded by userLimit (max_user_request_bytes,
	// as of New), before any of a larger one is read.
	userGRPC  *grpc.Server
	userLimit int
	health    *health.Server
	fast      fastConns
	userCalls userCalls
	channels  channelSet

	metrics *Metrics
	policy  atomic.Pointer[Policy]
	audit   atomic.Pointer[AuditLog] // nil: no audit_log
	audits  []*AuditLog              // every one opened, closed at Shutdown (under reload)

	reload  sync.Mutex // one Reload at a time, none during or after Shutdown
	stopped bool       // under reload
	mu      sync.Mutex
	gen     *generation    // serves new calls
	retired sync.WaitGroup // old generations being closed
}

// generation is one dispatcher and the calls in flight on it.
type generation struct {
	d        *core.Dispatcher
	built    []byte // the configuration it was built from, [server] aside (see pluginKeys)
	inflight int
	retired  bool
}

// New starts the dispatcher of cfg (core.New with opts; Logger defaults
// to log) and the gRPC service. Nothing listens until Serve.
func New(cfg *config.Config, log hclog.Logger, opts core.Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = log
	}
	s := &Server{log: log, health: health.NewServer()}
	s.metrics = NewMetrics(s.dispatcher)
	events := s.metrics.CoreEvents()
	if theirs := opts.Events; theirs != nil {
		ours := events
		events = func(e core.Event) { ours(e); theirs(e) }
	}
	opts.Events = events
	served := s.metrics.ChannelServed()
	if theirs := opts.ChannelServed; theirs != nil {
		ours := served
		served = func(c core.ChannelServed) { ours(c); theirs(c) }
	}
	opts.ChannelServed = served
	s.opts = opts
	d, err := core.New(cfg, opts)
	if err != nil {
		return nil, err
	}
	s.gen = &generation{d: d, built: pluginKeys(cfg)}
	s.setServerConfig(cfg)
	s.userLimit = cfg.Server.MaxUserRequestBytes
	s.grpc = s.newGRPC(maxMessage)
	s.userGRPC = s.newGRPC(s.userLimit, grpc.InTapHandle(s.userCalls.tap(func() int { return s.Config().Server.MaxCallsPerUser })))
	// "" (the daemon) is SERVING from the start; so is the API by name.
	s.health.SetServingStatus(apisvc.Nsplug_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	return s, nil
}

// newGRPC is the API's gRPC server, taking requests of up to maxRecv
// bytes, with more options.
func (s *Server) newGRPC(maxRecv int, more ...grpc.ServerOption) *grpc.Server {
	g := grpc.NewServer(append([]grpc.ServerOption{
		grpc.Creds(peerCreds{}),
		grpc.ChainUnaryInterceptor(withCaller),
		grpc.ChainStreamInterceptor(withCallerStream),
		grpc.MaxRecvMsgSize(maxRecv),
		grpc.MaxSendMsgSize(maxMessage),
		// Bounds what one connection holds in flight, as MaxConnsPerUser
		// bounds a user's connections: more calls wait in the client.
		grpc.MaxConcurrentStreams(MaxStreamsPerConn),
		// Stop returns once no handler runs, so that the dispatchers
		// close after the last call has left them.
		grpc.WaitForHandlers(true),
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
	}, more...)...)
	apisvc.RegisterNsplugServer(g, s)
	healthpb.RegisterHealthServer(g, s.health)
	return g
}

// setServerConfig puts cfg, its policy and its audit log in force for new
// calls. An audit log of a path not seen before is opened; the ones
// replaced stay open for the calls that still hold them, until Shutdown.
func (s *Server) setServerConfig(cfg *config.Config) {
	s.policy.Store(NewPolicy(cfg.Server.Allow).WithInstancesPerUser(cfg.Server.MaxInstancesPerUser))
	var audit *AuditLog
	if path := cfg.Server.AuditLog; path != "" {
		for _, a := range s.audits {
			if a.Path() == path {
				audit = a
			}
		}
		if audit == nil {
			audit = NewAuditLog(path, s.log)
			s.audits = append(s.audits, audit)
		}
	}
	s.audit.Store(audit)
	s.cfg.Store(cfg)
}

// dispatcher is the dispatcher serving new calls, for metrics.
func (s *Server) dispatcher() *core.Dispatcher {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen == nil {
		return nil
	}
	return s.gen.d
}

// Metrics are the daemon's Prometheus metrics (Metrics.Serve serves them).
func (s *Server) Metrics() *Metrics { return s.metrics }

// gate is what decides and audits a call on g's dispatcher.
func (s *Server) gate(g *generation) *Gate {
	srv := s.Config().Server
	return &Gate{Policy: s.policy.Load(), Audit: s.audit.Load(), Registry: g.d, Log: s.log,
		DenialsPerMinutePerUser: srv.AuditDenialsPerMinutePerUser, DenialsPerMinute: srv.AuditDenialsPerMinute}
}

// Config is the configuration in force: the one the last successful
// Reload installed. Authorization reads it per call.
func (s *Server) Config() *config.Config { return s.cfg.Load() }

// Serve accepts connections on l (a unix socket listener; see Listen)
// until Shutdown, and serves gRPC or the fast path (api/fast) on each, as
// its first bytes say (mux). It returns nil after Shutdown.
func (s *Server) Serve(l net.Listener) error {
	if err := s.fast.hangups.open(s.fast.hangUp); err != nil {
		l.Close()
		return fmt.Errorf("the fast path: %w", err)
	}
	m := newMux(l, s.log, s.serveFast)
	defer m.Close()
	users := make(chan error, 1)
	go func() { users <- s.userGRPC.Serve(m.users()); m.Close() }()
	err := s.grpc.Serve(m)
	m.Close() // ends the other Serve too
	uerr := <-users
	if failed := m.failure(); failed != nil {
		return failed
	}
	for _, e := range []error{err, uerr} {
		if e != nil && e != grpc.ErrServerStopped {
			return e
		}
	}
	return nil
}

// Reload puts cfg in force for new calls. When it changes no key outside
// [server], the dispatcher and its warm instances stay; otherwise a new
// dispatcher is built (if that fails, Reload fails and the old
// configuration stays in force) and the old one retires after its calls in
// flight. The socket's settings apply at the next start.
func (s *Server) Reload(cfg *config.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	s.reload.Lock()
	defer s.reload.Unlock()
	if s.stopped {
		return errors.New("the daemon is shutting down")
	}
	old := s.Config()
	if o, n := old.Server, cfg.Server; o.Socket != n.Socket || o.SocketMode != n.SocketMode || o.SocketGroup != n.SocketGroup || o.MetricsAddress != n.MetricsAddress || o.MaxUserRequestBytes != n.MaxUserRequestBytes {
		s.log.Warn("reload: socket, socket_mode, socket_group, metrics_address and max_user_request_bytes take effect when the daemon restarts", "socket", o.Socket)
	}
	built := pluginKeys(cfg)
	s.mu.Lock()
	same := built != nil && string(built) == string(s.gen.built)
	if same {
		s.setServerConfig(cfg)
	}
	s.mu.Unlock()
	if same {
		s.revokeReloaded()
		return nil
	}
	d, err := core.New(cfg, s.opts)
	if err != nil {
		return err
	}
	s.mu.Lock()
	prev := s.gen
	s.gen = &generation{d: d, built: built}
	s.setServerConfig(cfg)
	prev.retired = true
	idle := prev.inflight == 0
	if idle {
		s.retired.Add(1)
	}
	s.mu.Unlock()
	s.revokeReloaded()
	if idle {
		go s.close(prev)
	}
	s.log.Info("reload: new dispatcher; the previous one retires after its calls in flight")
	return nil
}

// revokeReloaded revokes the channels opened under the configuration a
// reload replaced: each was authorized by its rules.
func (s *Server) revokeReloaded() {
	if n := s.revokeChannels(false); n > 0 {
		s.log.Info("reload: direct channels revoked; their clients open new ones under the new rules", "channels", n)
	}
}

// pluginKeys is what a dispatcher is built from: every key of cfg but
// [server], as JSON; nil if it cannot be encoded (a reload then always
// builds a new dispatcher).
func pluginKeys(cfg *config.Config) []byte {
	c := *cfg
	c.Server = config.Server{}
	data, err := json.Marshal(&c)
	if err != nil {
		return nil
	}
	return data
}

// acquire returns the generation that serves a new call; release ends the
// call.
func (s *Server) acquire() *generation {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen.inflight++
	return s.gen
}

func (s *Server) release(g *generation) {
	s.mu.Lock()
	g.inflight--
	last := g.retired && g.inflight == 0
	if last {
		s.retired.Add(1)
	}
	s.mu.Unlock()
	if last {
		go s.close(g)
	}
}

func (s *Server) close(g *generation) {
	defer s.retired.Done()
	g.d.Close()
}

// Shutdown stops accepting connections, reports NOT_SERVING to health
// checks, lets calls in flight finish for up to grace, then ends the rest
// (their requests are cancelled) and closes every dispatcher, which kills
// and reaps every plugin process. Serve then returns.
func (s *Server) Shutdown(grace time.Duration) {
	s.reload.Lock()
	defer s.reload.Unlock()
	s.stopped = true
	s.health.Shutdown()
	s.revokeChannels(true) // a channel is no call in flight: none is drained
	drained := make(chan struct{})
	go func() {
		var both sync.WaitGroup
		for _, g := range []*grpc.Server{s.grpc, s.userGRPC} {
			both.Add(1)
			go func() { defer both.Done(); g.GracefulStop() }() // closes the listener (the mux) first
		}
		both.Wait()
		s.fast.stop()
		s.fast.wg.Wait()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(grace):
		s.log.Warn("shutdown: calls still in flight after shutdown_grace are ended", "shutdown_grace", grace)
		s.grpc.Stop()
		s.userGRPC.Stop()
		s.fast.stop()
		s.fast.cancel()
		<-drained
	}
	s.fast.hangups.close()
	s.mu.Lock()
	g := s.gen
	s.mu.Unlock()
	g.d.Close()
	s.retired.Wait()
	for _, a := range s.audits {
		a.Close()
	}
}

// caller is the Caller of a call (the interceptor put it there).
func caller(ctx context.Context) Caller {
	c, ok := CallerFrom(ctx)
	if !ok {
		panic("server: a call without a Caller got past the interceptor")
	}
	return c
}

// Types lists the message types the daemon serves.
func (s *Server) Types(ctx context.Context, _ *apiv1.TypesRequest) (*apiv1.TypesResponse, error) {
	if err := s.policy.Load().AdmitListing(caller(ctx), "list the types", false); err != nil {
		return nil, Status(err)
	}
	g := s.acquire()
	defer s.release(g)
	return &apiv1.TypesResponse{Types: apiconv.TypeInfos(g.d.Types())}, nil
}

// Plugins lists the configured plugins with their load status.
func (s *Server) Plugins(ctx context.Context, _ *apiv1.PluginsRequest) (*apiv1.PluginsResponse, error) {
	if err := s.policy.Load().AdmitListing(caller(ctx), "list the plugins", false); err != nil {
		return nil, Status(err)
	}
	g := s.acquire()
	defer s.release(g)
	out := &apiv1.PluginsResponse{ProtocolVersion: wire.ProtocolVersion}
	for _, p := range g.d.Plugins() {
		out.Plugins = append(out.Plugins, apiconv.PluginInfo(p))
	}
	return out, nil
}

// Instances lists the live plugin processes of the dispatcher serving new
// calls.
func (s *Server) Instances(ctx context.Context, _ *apiv1.InstancesRequest) (*apiv1.InstancesResponse, error) {
	if err := s.policy.Load().AdmitListing(caller(ctx), "list the instances", true); err != nil {
		return nil, Status(err)
	}
	g := s.acquire()
	defer s.release(g)
	out := &apiv1.InstancesResponse{}
	for _, in := range g.d.Instances() {
		out.Instances = append(out.Instances, apiconv.InstanceInfo(in))
	}
	return out, nil
}

// Prepare starts the warm instances a target's requests would use.
func (s *Server) Prepare(ctx context.Context, in *apiv1.PrepareRequest) (*apiv1.PrepareResponse, error) {
	tg := in.GetTarget()
	if tg.GetPid() <= 0 {
		return nil, Status(wire.Errorf(syscall.EINVAL, "target.pid: want a pid, got %d", tg.GetPid()))
	}
	c := caller(ctx)
	end, err := s.userCalls.beginUnlessCounted(ctx, c, s.Config().Server.MaxCallsPerUser)
	if err != nil {
		return nil, Status(err)
	}
	defer end()
	g := s.acquire()
	defer s.release(g)
	denied, err := s.gate(g).Prepare(c, core.Target{PID: int(tg.Pid), StartTime: apiconv.StartTime(tg)}, in.Types,
		func(t core.Target, types []string) error { return g.d.Prepare(ctx, t, types...) })
	if denied != "" {
		s.metrics.Denied(denied)
	}
	if err != nil {
		return nil, Status(err)
	}
	return &apiv1.PrepareResponse{}, nil
}
