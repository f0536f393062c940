package core

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/core/internal/describe"
	"github.com/nsplug/nsplug/internal/spawner"
	"github.com/nsplug/nsplug/nsexec/boot"
)

// nsRunner starts a plugin executable with an nsexec bootstrap, so that
// it runs inside the target's namespaces. A plugin being described is
// started by go-plugin, through core/goplugin: nsRunner has the methods
// of its runner.Runner (describe.Process).
type nsRunner struct {
	name     string
	cmd      *exec.Cmd
	sockDir  string     // host directory the plugin binds its socket in
	sockName string     // the socket's name in it, once announced
	dirPath  *os.File   // O_PATH handle of sockDir: connect through /proc/self/fd/N/, whatever sockDir's length
	dirMu    sync.Mutex // guards dirPath (closed once reaped), sockName and dialed
	dialed   bool
	frames   *frameConn
	boot     boot.Bootstrap
	pidfd    *os.File // target's; nil when no namespace is joined
	owner    [2]int   // host uid/gid the plugin has after joining; -1 = unchanged
	// emptyRoot makes an empty directory in sockDir, for a describing
	// plugin's chroot (see describeRoot).
	emptyRoot bool
	// framesOnly starts the plugin without go-plugin (wire.EnvFramesOnly):
	// no socket to dial, and its stdout and stderr share one pipe, read
	// by one goroutine (serve).
	framesOnly bool

	stdout, stderr io.ReadCloser
	status         chan string   // the bootstrap's failure message, "" if none
	booted         chan struct{} // closed when the status pipe closes: the bootstrap is done, or the process gone
	bootedAt       time.Time     // when it closed; read once booted is
	statusMsg      string
	statusMu       sync.Mutex
	killed         atomic.Bool // Kill was called while the process lived
	news           atomic.Bool // serving, and not being ended: its exit is logged
	exitNews       bool        // news as the process was reaped (set by Wait)
	waitOnce       sync.Once
	waitErr        error
	exited         chan struct{}
	mu             sync.Mutex
	onExit         func()
	started        func(pid int) // Options.Started, or nil
}

// setOnExit arranges for fn to run once the process is reaped (at once if
// it already is).
func (r *nsRunner) setOnExit(fn func()) {
	r.mu.Lock()
	select {
	case <-r.exited:
		r.mu.Unlock()
		fn()
		return
	default:
	}
	r.onExit = fn
	r.mu.Unlock()
}

var _ describe.Process = (*nsRunner)(nil)

func (r *nsRunner) Start(ctx context.Context) (err error) {
	if r.owner[0] >= 0 {
		if err := os.Chown(r.sockDir, r.owner[0], r.owner[1]); err != nil {
			return fmt.Errorf("socket directory: %w", err)
		}
	}
	if r.emptyRoot {
		// Root's, 0555: the plugin can enter it and write nothing.
		if err := os.Mkdir(filepath.Join(r.sockDir, describeRootName), 0o555); err != nil {
			return fmt.Errorf("socket directory: %w", err)
		}
	}
	dir, err := os.OpenFile(r.sockDir, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	defer dir.Close()
	if !r.framesOnly {
		if r.dirPath, err = os.OpenFile(r.sockDir, unix.O_PATH|unix.O_DIRECTORY, 0); err != nil {
			return fmt.Errorf("socket directory: %w", err)
		}
	}
	// An empty pipe rather than /dev/null: no host file in the process.
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer stdinR.Close()
	stdinW.Close()
	r.cmd.Stdin = stdinR
	if r.framesOnly {
		// One pipe for both: a plugin without go-plugin has nothing to
		// say on stdout, and a core holding hundreds of instances
		// spares an fd and a goroutine each.
		out, in, err := os.Pipe()
		if err != nil {
			return err
		}
		defer in.Close()
		defer func() {
			if err != nil {
				out.Close()
			}
		}()
		r.cmd.Stdout, r.cmd.Stderr, r.stderr = in, in, out
	} else {
		if r.stdout, err = r.cmd.StdoutPipe(); err != nil {
			return err
		}
		if r.stderr, err = r.cmd.StderrPipe(); err != nil {
			return err
		}
	}
	pidfd := r.pidfd
	if pidfd == nil {
		// Nothing to join; the constructor still needs fd 3 to exist.
		pidfd = dir
	}
	frames, pluginEnd, err := newFrameConn()
	if err != nil {
		return err
	}
	defer pluginEnd.Close()
	statusR, statusW, err := r.boot.Apply(r.cmd, pidfd, dir, pluginEnd)
	if err != nil {
		frames.close()
		return err
	}
	err = spawner.Start(r.cmd) // see internal/spawner: pdeathsig is per thread
	statusW.Close()
	r.frames = frames
	if err != nil {
		statusR.Close()
		frames.close()
		r.frames = nil
		return fmt.Errorf("starting plugin %s: %w", r.name, err)
	}
	if r.started != nil {
		r.started(r.cmd.Process.Pid)
	}
	r.status = make(chan string, 1)
	r.booted = make(chan struct{})
	go func() {
		msg, _ := io.ReadAll(io.LimitReader(statusR, 4096))
		statusR.Close()
		r.status <- strings.TrimSpace(string(msg))
		r.bootedAt = time.Now()
		close(r.booted)
	}()
	return nil
}

// ready waits until a plugin started without go-plugin serves: it closes
// its status pipe without a message once it is in the target's root,
// ready for frames (see wire/README.md, "Bootstrap"). A message on the
// pipe, an exit, ctx's end or timeout is a failed start.
func (r *nsRunner) ready(ctx context.Context, timeout time.Duration) error {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case msg := <-r.status:
		r.statusMsg, r.status = msg, nil
		if msg != "" {
			return errors.New(msg)
		}
	case <-timer.C:
		return fmt.Errorf("it was not ready (its status pipe, fd 5, still open) within its start_timeout of %v", timeout)
	case <-ctx.Done():
		return fmt.Errorf("gave up waiting for it to start: %w", ctx.Err())
	}
	// An exit closes the pipe too.
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, r.cmd.Process.Pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	if err == nil && info.Signo == int32(syscall.SIGCHLD) {
		return errors.New("it exited before it served")
	}
	return nil
}

// limitStart kills the process unless its bootstrap is done within d of
// began, when it was started: the start_timeout of a start without a
// handshake to wait for (a oneshot one). expired stops the clock and
// reports whether the start overran, killed or not: a bootstrap that
// finished after the deadline but before the clock's goroutine ran (or
// before the clock was even set, the process having booted while its
// start returned) overran it all the same.
func (r *nsRunner) limitStart(began time.Time, d time.Duration) (expired func() bool) {
	deadline := began.Add(d)
	var fired atomic.Bool
	t := time.AfterFunc(time.Until(deadline), func() {
		select {
		case <-r.booted:
		default:
			fired.Store(true)
			r.Kill(context.Background())
		}
	})
	return func() bool {
		t.Stop()
		if fired.Load() {
			return true
		}
		select {
		case <-r.booted:
			return r.bootedAt.After(deadline)
		default: // not seen booted yet: it has overrun once the deadline passed
			return time.Now().After(deadline)
		}
	}
}

// startError is the bootstrap's own account of a failed start, if it
// gave one; it waits briefly for the status pipe to close.
func (r *nsRunner) startError() string {
	r.statusMu.Lock()
	defer r.statusMu.Unlock()
	if r.status == nil { // not started, or already read
		return r.statusMsg
	}
	select {
	case msg := <-r.status:
		r.statusMsg = msg
		r.status = nil
	case <-time.After(time.Second):
	}
	return r.statusMsg
}

func (r *nsRunner) Diagnose(context.Context) string { return r.startError() }
func (r *nsRunner) Exited() <-chan struct{}         { return r.exited }
func (r *nsRunner) Stdout() io.ReadCloser           { return r.stdout }
func (r *nsRunner) Stderr() io.ReadCloser           { return r.stderr }
func (r *nsRunner) Name() string                    { return r.name }

func (r *nsRunner) ID() string {
	if r.cmd.Process == nil {
		return ""
	}
	return strconv.Itoa(r.cmd.Process.Pid)
}

func (r *nsRunner) Wait(context.Context) error {
	r.waitOnce.Do(func() {
		r.waitErr = r.cmd.Wait()
		// Decided before exited is closed: whoever learns of the exit
		// from it (a request the exit broke, which then ends the
		// instance) comes after.
		r.exitNews = r.news.Load()
		r.dirMu.Lock()
		if r.dirPath != nil {
			r.dirPath.Close()
			r.dirPath = nil
		}
		r.dirMu.Unlock()
		if r.frames != nil {
			r.frames.close()
		}
		r.mu.Lock()
		close(r.exited)
		fn := r.onExit
		r.mu.Unlock()
		if fn != nil {
			fn()
		}
	})
	return r.waitErr
}

// ExitedWithin reports how the process ended if it exited of itself (not
// killed by Kill) and has been reaped within wait.
func (r *nsRunner) ExitedWithin(wait time.Duration) (error, bool) {
	select {
	case <-r.exited:
	case <-time.After(wait):
		return nil, false
	}
	// Kill may have come as the process was exiting: a status below 128
	// is the process's own (the waiter exits 128+signal for a killed child).
	if st := r.cmd.ProcessState; st != nil && st.Exited() && st.ExitCode() < 128 {
		return r.waitErr, true
	}
	return r.waitErr, !r.killed.Load()
}

// Kill stops the plugin: SIGTERM first, which a forked instance's waiter
// turns into SIGKILL of its child and a reap (no zombie left in the
// target), then SIGKILL if it has not gone within a second.
func (r *nsRunner) Kill(context.Context) error {
	if r.cmd.Process == nil {
		return nil
	}
	// A process that already exited (reaped or not) was not killed.
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, r.cmd.Process.Pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	if err == nil && info.Signo != int32(syscall.SIGCHLD) {
		r.killed.Store(true)
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
		return nil
	case <-time.After(time.Second):
	}
	_ = r.cmd.Process.Kill()
	return nil
}

// PluginToHost maps the socket the plugin bound by a relative name in its
// cwd to its host path. Anything else is refused: a plugin must not be able
// to make the core connect elsewhere.
func (r *nsRunner) PluginToHost(network, addr string) (string, string, error) {
	name := strings.TrimPrefix(addr, "./")
	if network != "unix" || name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
		return "", "", fmt.Errorf("plugin %s announced an unexpected address %s:%s", r.name, network, addr)
	}
	r.dirMu.Lock()
	defer r.dirMu.Unlock()
	if r.dirPath == nil {
		return "", "", fmt.Errorf("plugin %s exited", r.name)
	}
	r.sockName = name
	return "unix", r.sockPath(), nil
}

// sockPath is the plugin's socket as the core reaches it: a sun_path holds
// 107 bytes, and runtime_dir may be longer than that. Called with dirMu held.
func (r *nsRunner) sockPath() string {
	return fmt.Sprintf("/proc/self/fd/%d/%s", r.dirPath.Fd(), r.sockName)
}

// Dial connects to the plugin's socket, then removes the socket and its
// directory: the connection lives on, and a core killed while it serves
// leaves nothing on disk. gRPC dials once per instance (go-plugin's
// streams keep the channel from going idle); were the connection lost,
// a new dial would fail, as the instance has.
func (r *nsRunner) Dial(ctx context.Context) (net.Conn, error) {
	r.dirMu.Lock()
	defer r.dirMu.Unlock()
	if r.sockName == "" || r.dialed || r.dirPath == nil {
		return nil, fmt.Errorf("plugin %s: its socket is gone", r.name)
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, "unix", r.sockPath())
	if err != nil {
		return nil, err
	}
	r.dialed = true
	unix.Unlinkat(int(r.dirPath.Fd()), r.sockName, 0)
	os.Remove(r.sockDir)
	return conn, nil
}

func (r *nsRunner) HostToPlugin(network, addr string) (string, string, error) {
	return "", "", fmt.Errorf("plugin %s: host addresses are not passed to plugins", r.name)
}

// callError explains a request that failed in transport: the process
// died (and how, or why it never started), the request ran out of time or
// was cancelled, or the plugin broke the protocol.
func (r *nsRunner) callError(ctx context.Context, typ string, err error) error {
	// A transport error usually means the process died; give the reaper
	// a moment to say how.
	wait := 100 * time.Millisecond
	if ctx.Err() != nil {
		wait = 0
	}
	select {
	case <-time.After(wait):
	case <-r.exited:
		if msg := r.startError(); msg != "" {
			return errorf(syscall.EIO, "plugin %s: %s", r.name, msg)
		}
		return errorf(syscall.EIO, "plugin %s (pid %s) exited during %s: %v", r.name, r.ID(), typ, r.waitErr)
	}
	switch ctx.Err() {
	case context.DeadlineExceeded:
		return errorf(syscall.ETIMEDOUT, "%s: request timed out", typ)
	case context.Canceled:
		return errorf(syscall.ECANCELED, "%s: request canceled", typ)
	}
	return errorf(syscall.EIO, "plugin %s (pid %s): %s: %v", r.name, r.ID(), typ, err)
}
