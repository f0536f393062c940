package core

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
	"google.golang.org/grpc"

	"github.com/nsplug/nsplug/nsexec"
	"github.com/nsplug/nsplug/wire"
	"github.com/nsplug/nsplug/wire/control"
)

// instance is one running plugin process inside one set of namespaces.
// Every request goes to it on its frame channel (runner.frames, see call).
// Serving instances are started without go-plugin (startInstance) and
// ended by closing the channel (end); only a plugin being described has
// go-plugin's client, its control plane: Describe and shutdown.
type instance struct {
	key     string
	plugin  *pluginEntry
	client  *plugin.Client        // only while describing
	handler control.HandlerClient // Describe; only while describing
	runner  *nsRunner
	log     *clientLog
	pid     int // host pid of the process the core started
	target  int // host pid of its target

	// Guarded by pool.mu.
	inflight int
	retired  bool // no new requests; killed once inflight reaches 0
	killed   bool
	abrupt   bool          // kill without asking the plugin to exit first (read under pool.mu)
	gone     chan struct{} // closed once killed and reaped
	idle     *time.Timer
	lastUsed time.Time

	ended atomic.Pointer[instanceEnd] // why it ends, for Options.Events (see ending)
}

// launch says what to start: which plugin, in which namespaces of which
// target, with which settings; or, with describe, the plugin alone, to
// learn what it serves.
type launch struct {
	plugin *pluginEntry
	target *target
	join   uintptr
	creds  *Credentials
	// describe starts the plugin in no target but in a throwaway set of
	// fresh namespaces (user, mnt, pid, net, ipc, uts, cgroup) whose
	// root is host uid describeUID, so that it has no privilege on the
	// host, chrooted into an empty directory, without fresh mounts.
	describe bool
}

// describeUID is the host uid and gid a plugin describes itself as: the
// overflow id, "nobody", which owns no file a plugin could need.
const describeUID = 65534

// describeRoot is the empty directory a describing plugin is chrooted
// into: a subdirectory of its socket directory (fd 4 of the nsexec
// contract), reached through the fd so that the path walk does not cross
// the root-only runtime_dir, which host uid describeUID may not search.
var describeRoot = fmt.Sprintf("/proc/self/fd/%d/%s", nsexec.SockDirFD, describeRootName)

const describeRootName = "root"

// spec is how an instance's process is started: the nsexec bootstrap for
// the launch's namespaces and credentials, and the host ids that own its
// socket directory.
type spec struct {
	launch
	boot  nsexec.Bootstrap
	owner [2]int
}

func (l launch) spec() (*spec, error) {
	p := l.plugin
	boot := nsexec.Bootstrap{Join: l.join, Unshare: p.unshare, UID: -1, GID: -1, FreshProc: p.freshProc, FreshSys: p.freshSys, FreshCgroup: p.freshCgroup}
	owner := [2]int{-1, -1}
	if l.describe {
		boot = nsexec.Bootstrap{UID: -1, GID: -1, Root: describeRoot}
		return &spec{launch: l, boot: boot, owner: [2]int{describeUID, describeUID}}, nil
	}
	if l.join&syscall.CLONE_NEWUSER != 0 {
		id, err := l.target.userIdentity(l.creds)
		if err != nil {
			return nil, err
		}
		boot.UID, boot.GID = int(id.uid), int(id.gid)
		owner = [2]int{int(id.hostUID), int(id.hostG)}
	} else if c := l.creds; c != nil {
		// The target shares the core's user namespace: ids are host ids.
		boot.UID, boot.GID = int(c.UID), int(c.GID)
		owner = [2]int{int(c.UID), int(c.GID)}
	}
	if c := l.creds; c != nil {
		boot.Groups = append([]uint32{}, c.Groups...)
		if cs := c.Capabilities; cs != nil {
			boot.Caps = &[3]uint64{cs.Effective, cs.Permitted, cs.Inheritable}
		}
		boot.Root, boot.Cwd = c.Root, c.Cwd
	}
	return &spec{launch: l, boot: boot, owner: owner}, nil
}

// newRunner prepares (without starting) the process of one instance from
// the sealed executable. env is added to its environment.
func (d *Dispatcher) newRunner(sp *spec, sockDir string, env []string) *nsRunner {
	p := sp.plugin
	cmd := exec.Command(p.exe.path())
	cmd.Args[0] = "nsplug-" + p.name
	cmd.Env = append(env,
		"TZ=UTC", // never parse a zone file from the target
		// Nor cgroup files: the runtime would keep them open.
		"GODEBUG=containermaxprocs=0,updatemaxprocs=0",
		// One P: a request hops between fewer threads (the warm path is
		// mostly wake-ups), and blocking handlers still run side by side
		// on threads of their own.
		"GOMAXPROCS=1",
		// A quarter of Go's default heap growth: a plugin's live heap
		// is small, so its heap goal is the runtime's 4 MiB floor
		// scaled by GOGC/100. Measured with every built-in in one
		// process after 5,000 requests: anon 6.6 -> 4.0 MiB, no
		// latency change (bench, scale phase). The sdk applies it
		// after wire.GCDelay, not at exec: see wire.EnvGOGC.
		wire.EnvGOGC+"=25",
		wire.EnvConfig+"="+string(p.pluginConfig))
	if p.builtin {
		cmd.Env = append(cmd.Env, wire.EnvBuiltin+"="+strings.Join(p.serves, ","))
		if d.build != "" {
			cmd.Env = append(cmd.Env, wire.EnvBuiltinBuild+"="+d.build)
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig: syscall.SIGKILL, // die with the core
		Setpgid:   true,            // a terminal's ^C goes to the core, which then stops its plugins
	}
	if sp.describe {
		// Fresh namespaces, made by clone: nothing of the host's but
		// the file system, which the chroot to an empty directory
		// (the nsexec constructor's, before Go starts) takes away.
		attr := cmd.SysProcAttr
		attr.Cloneflags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWNET |
			syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS | syscall.CLONE_NEWCGROUP
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: describeUID, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: describeUID, Size: 1}}
		attr.GidMappingsEnableSetgroups = false
		// Mapping an id does not change the process's: become the
		// namespace's root (host describeUID) before exec.
		attr.Credential = &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true}
	}
	nr := &nsRunner{name: p.name, cmd: cmd, sockDir: sockDir, boot: sp.boot, owner: sp.owner, emptyRoot: sp.describe, exited: make(chan struct{}), started: d.started}
	if sp.target != nil && sp.join != 0 {
		nr.pidfd = sp.target.pidfd
	}
	return nr
}

// startDescribing starts a plugin process through go-plugin, to describe
// it (launch.describe): the control plane negotiates the protocol version
// and carries Describe. Serving processes start without it (startInstance).
func (d *Dispatcher) startDescribing(ctx context.Context, l launch) (*instance, error) {
	p := l.plugin
	sp, err := l.spec()
	if err != nil {
		return nil, err
	}
	dir, err := d.runDir.enter()
	if err != nil {
		return nil, errorf(syscall.EIO, "starting plugin %s: %v", p.name, err)
	}
	defer d.runDir.leave()
	var nr *nsRunner
	log := &clientLog{Logger: d.log}
	log.quiet.Store(true) // a failed start is the caller's error
	cfg := &plugin.ClientConfig{
		HandshakeConfig:  control.Handshake,
		VersionedPlugins: control.PluginSets(nil),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           log, // go-plugin names plugin output after the runner (the plugin)
		StartTimeout:     p.settings.StartTimeout.Duration,
		SkipHostEnv:      true,
		UnixSocketConfig: &plugin.UnixSocketConfig{TempDir: dir},
		GRPCDialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(wire.MaxMessageBytes), grpc.MaxCallSendMsgSize(wire.MaxMessageBytes)),
			// Replaces go-plugin's dialer (the last one given wins).
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return nr.dial(ctx) })},
		RunnerFunc: func(_ hclog.Logger, spec *exec.Cmd, sockDir string) (runner.Runner, error) {
			// The socket is bound relative to the cwd nsexec leaves in sockDir.
			nr = d.newRunner(sp, sockDir, append(spec.Env, "PLUGIN_UNIX_SOCKET_DIR=."))
			return nr, nil
		},
	}
	client := plugin.NewClient(cfg)
	fail := func(err error) (*instance, error) {
		msg := err.Error()
		// go-plugin's words for a protocol mismatch name its own
		// versions; say which nsplug protocol each side speaks.
		if m := protocolMismatch().FindStringSubmatch(msg); m != nil {
			msg = fmt.Sprintf("it speaks nsplug plugin protocol %s, this core speaks %d (wire.ProtocolVersion): rebuild it against a matching sdk, or serve that version too (%s)", m[1], wire.ProtocolVersion, msg)
		}
		if nr != nil {
			if s := nr.startError(); s != "" {
				msg = s
			} else if status, exited := nr.exitedWithin(100 * time.Millisecond); exited {
				msg = handshakeError(msg, p.settings.StartTimeout.Duration, status, true)
			} else {
				msg = handshakeError(msg, p.settings.StartTimeout.Duration, nil, false)
			}
		}
		// One line: the error is the account of the failure (and what
		// `nsplug call` prints), the log has go-plugin's at debug level.
		msg = strings.Join(strings.Fields(strings.ReplaceAll(msg, "\n", "; ")), " ")
		client.Kill()
		where := "on the host"
		if l.describe {
			where = "to describe it (unprivileged, in fresh namespaces)"
		}
		if l.target != nil {
			where = fmt.Sprintf("in target pid %d", l.target.pid)
		}
		return nil, errorf(syscall.EIO, "starting plugin %s %s: %s", p.name, where, msg)
	}
	proto, err := client.Client()
	if err != nil {
		return fail(err)
	}
	raw, err := proto.Dispense(control.PluginKey)
	if err != nil {
		return fail(err)
	}
	inst := &instance{plugin: p, client: client, handler: raw.(control.HandlerClient), runner: nr, log: log, gone: make(chan struct{})}
	inst.pid, _ = strconv.Atoi(nr.ID())
	log.quiet.Store(false) // from now on an exit the core did not ask for is news
	return inst, nil
}

// clientLog is the logger go-plugin gets for one instance. go-plugin logs
// a process that died of a signal at ERROR, any other exit at INFO, and
// warns when it has to kill one; while quiet (the process is starting,
// or the core has decided to end it: a cancelled or timed-out request,
// an idle or evicted instance, Close), those lines are debug lines: a
// kill the core means is no error, and a failed start is reported to the
// caller. The plugin's own log lines (Named) keep their level.
type clientLog struct {
	hclog.Logger
	quiet atomic.Bool
}

func (l *clientLog) Log(level hclog.Level, msg string, args ...any) {
	if l.quiet.Load() && level > hclog.Debug {
		level = hclog.Debug
	}
	l.Logger.Log(level, msg, args...)
}

func (l *clientLog) Info(msg string, args ...any)  { l.Log(hclog.Info, msg, args...) }
func (l *clientLog) Warn(msg string, args ...any)  { l.Log(hclog.Warn, msg, args...) }
func (l *clientLog) Error(msg string, args ...any) { l.Log(hclog.Error, msg, args...) }

// go-plugin's words for a plugin whose first line on stdout is not a
// handshake line (the line follows), for one whose stdout ended or that
// exited before it wrote one, and for one that wrote none in time.
const (
	unrecognizedLine = "Unrecognized remote plugin message: "
	exitedEarly      = "plugin exited before we could connect"
	startTimedOut    = "timeout while waiting for plugin to start"
)

// handshakeError says what a plugin did wrong when go-plugin found no
// handshake line: a plugin that never called sdk.Serve, or printed on
// stdout before it, gets go-plugin's "Unrecognized remote plugin
// message", which names neither. status is how the process exited, when
// it did.
func handshakeError(msg string, timeout time.Duration, status error, exited bool) string {
	how := "it exited (exit status 0)"
	if status != nil {
		how = fmt.Sprintf("it exited (%v)", status)
	}
	switch {
	case strings.HasPrefix(msg, unrecognizedLine):
		line, _, _ := strings.Cut(msg[len(unrecognizedLine):], "\n")
		if line != "" {
			if len(line) > 80 {
				line = line[:80] + "..."
			}
			return fmt.Sprintf("it printed %q on stdout before its handshake line: a plugin must call sdk.Serve and print nothing on stdout before it", line)
		}
		if !exited {
			return "it closed its stdout before its handshake line (did main call sdk.Serve?)"
		}
		return how + " before its handshake line (did main call sdk.Serve?)"
	case msg == exitedEarly:
		return how + " before its handshake line (did main call sdk.Serve?)"
	case msg == startTimedOut && !exited:
		return fmt.Sprintf("it wrote no handshake line on stdout within its start_timeout of %v (does main call sdk.Serve?)", timeout)
	case exited && status != nil:
		return fmt.Sprintf("%s: %s", how, msg)
	}
	return msg
}

// protocolMismatch matches go-plugin's error for a plugin that offers no
// protocol version the core speaks. Compiled on first use (an error
// path), not at init in every process of the binary.
var protocolMismatch = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`incompatible API version with plugin\. Plugin version: (\d+)`)
})

// call sends one request to the instance on its frame channel and
// decodes the answer: the one call path of every request, pooled or
// oneshot. Handler errors come back as *Error with their errno; broken
// reports whether the instance is unfit for further requests.
func (inst *instance) call(ctx context.Context, req *wire.HandleRequest) (*Response, bool, error) {
	resp, files, err := inst.runner.frames.roundTrip(ctx, req)
	if err != nil {
		// A handler that stopped when told to leaves a healthy instance.
		broken := err != errStopped
		err = inst.runner.callError(ctx, req.Type, err)
		if broken {
			inst.ending(brokenBy(ctx), err)
		}
		return nil, broken, err
	}
	if e := resp.Error; e != nil {
		closeFiles(files)
		return nil, false, &Error{Errno: syscall.Errno(e.Errno), Message: e.Message}
	}
	if int(resp.Files) != len(files) || resp.Files > wire.MaxFiles {
		closeFiles(files)
		err := errorf(syscall.EIO, "plugin %s announced %d files and sent %d (at most %d)", inst.plugin.name, resp.Files, len(files), wire.MaxFiles)
		inst.ending(InstanceCrashed, err)
		return nil, true, err
	}
	return &Response{Payload: json.RawMessage(resp.Payload), Files: files}, false, nil
}

// describe asks the instance which message types it serves.
func (inst *instance) describe(ctx context.Context) (*wire.DescribeResponse, error) {
	return inst.handler.Describe(ctx, &wire.DescribeRequest{})
}

// kill stops the process and waits until it is reaped and go-plugin's
// goroutines are gone; the socket directory goes with it. A healthy
// instance is asked to exit; a broken one is killed at once (go-plugin
// would give a hung handler two seconds first).
func (inst *instance) kill(abrupt bool) {
	if inst.client == nil {
		inst.end(abrupt)
		return
	}
	select {
	case <-inst.runner.exited: // of itself: go-plugin said so as it saw fit
	default:
		inst.log.quiet.Store(true) // meant, not an error
	}
	if abrupt {
		inst.runner.Kill(context.Background())
	}
	inst.client.Kill()
}

// end stops an instance started without go-plugin, as kill stops the
// others.
// Closing the frame channel tells the plugin to exit; one that does not
// within a second is killed. Either way it is reaped before end returns:
// nothing of it stays in the target.
func (inst *instance) end(abrupt bool) {
	inst.runner.news.Store(false) // meant, not news
	inst.runner.frames.shutdown()
	if abrupt {
		inst.runner.Kill(context.Background())
	}
	select {
	case <-inst.runner.exited:
	case <-time.After(time.Second):
		inst.runner.Kill(context.Background())
		<-inst.runner.exited
	}
}
