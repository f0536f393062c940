package core

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nsplug/nsplug/core/internal/describe"
	"github.com/nsplug/nsplug/nsexec/boot"
	"github.com/nsplug/nsplug/wire"
)

// instance is one running plugin process inside one set of namespaces.
// Every request goes to it on its frame channel (runner.frames, see call).
// Instances are started without go-plugin (startInstance) and ended by
// closing the channel (end); only a plugin being described is started
// through go-plugin, and is no instance (startDescribing).
type instance struct {
	key    string
	plugin *pluginEntry
	runner *nsRunner
	pid    int // host pid of the process the core started
	target int // host pid of its target
	// account is who it is charged to (Account.Name; "" for nobody),
	// until it is killed. Guarded by pool.mu.
	account string

	// Guarded by pool.mu.
	inflight int
	retired  bool // no new requests; killed once inflight reaches 0
	killed   bool
	abrupt   bool          // kill without asking the plugin to exit first (read under pool.mu)
	gone     chan struct{} // closed once killed and reaped
	idle     *time.Timer
	lastUsed time.Time
	channels map[uint64]*Channel // open direct channels (channel.go), each holding one inflight
	watched  bool                // a watch goroutine looks at its channels

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
var describeRoot = fmt.Sprintf("/proc/self/fd/%d/%s", boot.SockDirFD, describeRootName)

const describeRootName = "root"

// spec is how an instance's process is started: the nsexec bootstrap for
// the launch's namespaces and credentials, and the host ids that own its
// socket directory.
type spec struct {
	launch
	boot  boot.Bootstrap
	owner [2]int
}

func (l launch) spec() (*spec, error) {
	p := l.plugin
	bs := boot.Bootstrap{Join: l.join, Unshare: p.unshare, UID: -1, GID: -1, FreshProc: p.freshProc, FreshSys: p.freshSys, FreshCgroup: p.freshCgroup}
	owner := [2]int{-1, -1}
	if l.describe {
		bs = boot.Bootstrap{UID: -1, GID: -1, Root: describeRoot}
		return &spec{launch: l, boot: bs, owner: [2]int{describeUID, describeUID}}, nil
	}
	if l.join&syscall.CLONE_NEWUSER != 0 {
		id, err := l.target.userIdentity(l.creds)
		if err != nil {
			return nil, err
		}
		bs.UID, bs.GID = int(id.uid), int(id.gid)
		owner = [2]int{int(id.hostUID), int(id.hostG)}
	} else if c := l.creds; c != nil {
		// The target shares the core's user namespace: ids are host ids.
		bs.UID, bs.GID = int(c.UID), int(c.GID)
		owner = [2]int{int(c.UID), int(c.GID)}
	}
	if c := l.creds; c != nil {
		bs.Groups = append([]uint32{}, c.Groups...)
		if cs := c.Capabilities; cs != nil {
			bs.Caps = &[3]uint64{cs.Effective, cs.Permitted, cs.Inheritable}
		}
		bs.Root, bs.Cwd = c.Root, c.Cwd
	}
	return &spec{launch: l, boot: bs, owner: owner}, nil
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

// startDescribing starts a plugin process to describe it (launch.describe),
// through the go-plugin adapter (core/goplugin): its control plane
// negotiates the protocol version and carries Describe. Serving processes
// start without it (startInstance).
func (d *Dispatcher) startDescribing(l launch) (describe.Client, error) {
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
	c, err := describe.Registered()(describe.Start{Plugin: p.name, StartTimeout: p.settings.StartTimeout.Duration, Log: d.log, Dir: dir,
		NewProcess: func(sockDir string, env []string) describe.Process { return d.newRunner(sp, sockDir, env) }})
	if err != nil {
		// One line: the error is the account of the failure (and what
		// `nsplug call` prints), the log has go-plugin's at debug level.
		msg := strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", "; ")), " ")
		return nil, errorf(syscall.EIO, "starting plugin %s to describe it (unprivileged, in fresh namespaces): %s", p.name, msg)
	}
	return c, nil
}

// errNoDescriber is the load error of a plugin with a path in a binary
// that does not link the go-plugin adapter (load checks before it seals
// the executable).
var errNoDescriber = errors.New("a plugin with a path is described at load through go-plugin, which this binary does not link " +
	"(it serves built-ins only): run the full nsplug binary, or, embedding the core, import _ \"github.com/nsplug/nsplug/core/goplugin\"")

// call sends one request to the instance on its frame channel and
// decodes the answer: the one call path of every request, pooled or
// oneshot. Handler errors come back as *Error with their errno; broken
// reports whether the instance is unfit for further requests.
func (inst *instance) call(ctx context.Context, req *wire.HandleRequest) (*Response, bool, error) {
	return inst.callWith(ctx, req, nil)
}

// callWith is call with oob on the request's final frame (roundTripWith).
func (inst *instance) callWith(ctx context.Context, req *wire.HandleRequest, oob []byte) (*Response, bool, error) {
	resp, files, err := inst.runner.frames.roundTripWith(ctx, req, oob)
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

// end stops an instance's process.
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
