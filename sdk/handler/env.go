package handler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/nsexec"
	"github.com/nsplug/nsplug/wire"
)

// Env is what a handler knows about the request it serves and the
// process it runs in. Get it with EnvFrom.
type Env struct {
	// RequestID identifies the request in the core's log and the
	// plugin's (Log attaches it as request_id).
	RequestID string
	// Type is the message type the request is for.
	Type string
	// TargetPID is the target's pid as the core sees it (in the host's
	// pid namespace, not the target's): for logs and messages.
	TargetPID int
	// TargetNSPID is the target's pid as its own pid namespace numbers it
	// (1 for a container's init): the pid to use in a handler that joined
	// the target's pid namespace, in a fresh procfs (Proc) or in
	// cgroup.procs. The core reads it from the NSpid line of
	// /proc/PID/status when it pins the target; 0 when unknown. When the
	// target shares the core's pid namespace it equals TargetPID.
	TargetNSPID int
	// Log writes to the core's log, under the plugin's name, with the
	// request id and target pid attached.
	Log hclog.Logger
	// Proc and Sys are fresh procfs and sysfs mounts of the target's
	// pid and net namespaces, detached from any directory, when the core
	// was configured to make them (fresh_mounts) or the plugin asks for
	// them (Plugin.FreshMounts); nil otherwise. Resolve paths beneath
	// them (openat2 with RESOLVE_BENEATH); never open /proc or /sys
	// paths of the target's filesystem, which may be missing or forged.
	Proc, Sys *os.File
	// Cgroup is a fresh cgroup2 mount (fresh_mounts = ["cgroup"]),
	// detached, whose root is the root of the target's cgroup namespace:
	// the target's own cgroup tree, as the target sees it at
	// /sys/fs/cgroup, which a fresh sysfs leaves empty. Made after the
	// target's cgroup namespace was joined; when the target shares the
	// core's, its root is the core's cgroup namespace root. Nil otherwise.
	Cgroup *os.File

	config *wire.PluginConfig
	joined []string // nil outside a core
	mu     sync.Mutex
	files  []*os.File

	options any // what Plugin.Configure made of the options; see OptionsFrom
}

// Joined lists the namespaces of the target the handler joined ("net",
// "uts", ...): those where the target differs from the core. In the
// others the handler shares the core's namespace, so a change there (a
// namespaced sysctl, say) would be the host's. ok is false when the
// process was not started by a core (a handler called in-process).
func (e *Env) Joined() (names []string, ok bool) {
	return e.joined, e.joined != nil
}

// RequireJoined is the rule for changing the state of namespace ns ("mnt",
// "net", ... as nsexec.Namespaces names them): it returns nil when the
// handler joined the target's ns, and an EPERM error naming the message
// type, the namespace and the setting that would allow it when the
// handler shares ns with the core (the target has none of its own, or the
// request or the plugin's namespaces setting left it out): a change there
// would be the host's. The plugin's allow_host_changes setting lifts the
// rule for the namespaces it names.
//
// The sdk applies it before the handler runs to every namespace a type
// declares with Changes; a handler calls it itself for a namespace that
// depends on the request (MayChange). Outside a core (an in-process call,
// as sdktest.Call makes) nothing is known about namespaces and nothing is
// refused, unless the test says what was joined (sdktest.Env.Joined).
func (e *Env) RequireJoined(ns string) error {
	if _, err := nsexec.ParseNamespaces([]string{ns}); err != nil {
		return Errorf(syscall.EINVAL, "%s: RequireJoined: %v", e.Type, err)
	}
	if e.joined == nil || slices.Contains(e.joined, ns) || e.HostChangesAllowed(ns) {
		return nil
	}
	return Errorf(syscall.EPERM, "%s would change the host's %s namespace, which the handler shares with the core "+
		"(the target has no %s namespace of its own, or the request or the plugin's namespaces setting did not join it); "+
		"allow_host_changes = [%q] in the plugin's configuration allows it",
		e.Type, ns, ns, ns)
}

// HostChangesAllowed reports whether the plugin's allow_host_changes
// setting names namespace ns: the operator lets the plugin change the
// host's state of that namespace.
func (e *Env) HostChangesAllowed(ns string) bool {
	return slices.Contains(e.config.AllowHostChanges, ns)
}

// ReturnFile hands f to the caller of the core together with the
// response: the caller receives a descriptor of the same open file, in its
// own process, close-on-exec (as sysbox-fs hands an opened file to
// seccomp's ADDFD). The sdk closes f once it is sent. Files are only sent
// when the handler succeeds.
func (e *Env) ReturnFile(f *os.File) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.files) == MaxFiles {
		return Errorf(syscall.EMFILE, "a response hands back at most %d files", MaxFiles)
	}
	e.files = append(e.files, f)
	return nil
}

// takeFiles returns and forgets the files the handler handed back.
func (e *Env) takeFiles() []*os.File {
	e.mu.Lock()
	defer e.mu.Unlock()
	f := e.files
	e.files = nil
	return f
}

type envKey struct{}

// EnvFrom returns the Env of the request ctx belongs to. Outside a
// request (in a unit test calling a handler directly, say) it returns an
// Env with defaults: every path allowed, a null logger.
func EnvFrom(ctx context.Context) *Env {
	if e, ok := ctx.Value(envKey{}).(*Env); ok {
		return e
	}
	return &Env{Log: hclog.NewNullLogger(), config: &wire.PluginConfig{}}
}

// WithEnv returns a context carrying env, for handler tests.
func WithEnv(ctx context.Context, env *Env) context.Context {
	if env.config == nil {
		env.config = &wire.PluginConfig{}
	}
	if env.Log == nil {
		env.Log = hclog.NewNullLogger()
	}
	return context.WithValue(ctx, envKey{}, env)
}

// SetAllowedRoots restricts CheckPath, for handler tests.
func (e *Env) SetAllowedRoots(roots []string) { e.config.AllowedRoots = roots }

// CheckPath validates a path from a request: it must be absolute, already
// clean (no "..", "//" or trailing "/"), free of NUL bytes and inside an
// allowed root. The error is EINVAL for a malformed path and EACCES for
// one outside the allowed roots.
func (e *Env) CheckPath(p string) (string, error) {
	if err := CheckPathSyntax(p); err != nil {
		return "", err
	}
	roots := e.config.AllowedRoots
	if roots == nil {
		return p, nil
	}
	for _, r := range roots {
		if r == "/" || p == r || strings.HasPrefix(p, r+"/") {
			return p, nil
		}
	}
	return "", Errorf(syscall.EACCES, "path %q is outside the allowed roots (%s)", p, strings.Join(roots, ", "))
}

// CheckPathSyntax is CheckPath without the allowed roots (the rule is
// wire.CheckPathSyntax, which the core applies to Request.Credentials'
// root and cwd too).
func CheckPathSyntax(p string) error { return wire.CheckPathSyntax(p) }

// Open opens a path from a request as the target sees it, safely: the path
// is checked (CheckPath), then resolved with openat2(2) inside the allowed
// root it lies in (RESOLVE_IN_ROOT: no symbolic link can lead out of it)
// and without following /proc magic links (RESOLVE_NO_MAGICLINKS), which
// matters when the handler is more privileged than the target's root.
// Paths under /proc, /sys and /sys/fs/cgroup resolve beneath the fresh
// mounts when the plugin has them. flags are open(2) flags; O_CLOEXEC is
// added.
func (e *Env) Open(path string, flags int) (*os.File, error) {
	path, err := e.CheckPath(path)
	if err != nil {
		return nil, err
	}
	root, rootPath := -1, "/"
	for _, m := range []struct {
		prefix string
		mount  *os.File
	}{{"/proc", e.Proc}, {"/sys", e.Sys}, {"/sys/fs/cgroup", e.Cgroup}} { // the longest prefix last
		if m.mount != nil && (path == m.prefix || strings.HasPrefix(path, m.prefix+"/")) {
			root, rootPath = int(m.mount.Fd()), m.prefix
		}
	}
	if root < 0 {
		rootPath = e.rootOf(path)
		if rootPath == "/" {
			// The process's root never changes once serving (nsexec
			// chroots before the runtime starts): open it once.
			if root, err = processRoot(); err != nil {
				return nil, err
			}
		} else {
			fd, err := unix.Open(rootPath, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				return nil, &os.PathError{Op: "open", Path: rootPath, Err: err}
			}
			defer unix.Close(fd)
			root = fd
		}
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(path, rootPath), "/")
	if rel == "" {
		rel = "."
	}
	fd, err := unix.Openat2(root, rel, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// rootOf returns the longest allowed root path lies in ("/" when all
// paths are allowed). path has passed CheckPath.
func (e *Env) rootOf(path string) string {
	best := "/"
	for _, r := range e.config.AllowedRoots {
		if (path == r || strings.HasPrefix(path, r+"/")) && len(r) > len(best) {
			best = r
		}
	}
	return best
}

var rootFD = sync.OnceValues(func() (int, error) {
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: "/", Err: err}
	}
	return fd, nil
})

// processRoot is an O_PATH descriptor of "/", opened once.
func processRoot() (int, error) { return rootFD() }

// ReadFile reads the whole file a request names, as the target sees it,
// bounded and without blocking: the read every handler of a target's file
// needs. The path is checked and resolved as Open resolves it (allowed
// roots, RESOLVE_IN_ROOT, no magic links, the fresh mounts under /proc,
// /sys and /sys/fs/cgroup). The file is looked at (O_PATH) before it is
// opened, so a FIFO or device planted there is never opened, and what is
// then opened (O_NONBLOCK, O_NOCTTY) is checked again. Errors:
//
//   - EISDIR for a directory, EINVAL for anything else that is not a
//     regular file (FIFO, socket, device), naming the path and its type;
//   - EFBIG when the file holds more than max bytes, naming the limit
//     (procfs and sysfs files say they are empty: they are read up to
//     max+1 bytes to know);
//   - ELOOP for a /proc magic link or a symbolic link loop, and the
//     errno of a failed open or read otherwise;
//   - EINVAL for a max that is not positive.
func (e *Env) ReadFile(path string, max int64) ([]byte, error) {
	if max <= 0 {
		return nil, Errorf(syscall.EINVAL, "ReadFile %s: limit %d is not positive", path, max)
	}
	probe, err := e.Open(path, unix.O_PATH)
	if err != nil {
		return nil, openError(path, err)
	}
	err = checkRegular(probe, path, max)
	probe.Close()
	if err != nil {
		return nil, err
	}
	f, err := e.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY)
	if err != nil {
		return nil, openError(path, err)
	}
	defer f.Close()
	// It may have been swapped since it was looked at.
	if err := checkRegular(f, path, max); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, Errorf(AsError(err).Errno, "reading %s: %v", path, err)
	}
	if int64(len(data)) > max {
		return nil, Errorf(syscall.EFBIG, "%s is larger than the %d-byte limit", path, max)
	}
	return data, nil
}

// checkRegular refuses what ReadFile must not read.
func checkRegular(f *os.File, path string, max int64) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return Errorf(AsError(err).Errno, "stat %s: %v", path, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if st.Size > max {
			return Errorf(syscall.EFBIG, "%s is %d bytes, larger than the %d-byte limit", path, st.Size, max)
		}
		return nil
	case unix.S_IFDIR:
		return Errorf(syscall.EISDIR, "%s is a directory, not a regular file", path)
	}
	return Errorf(syscall.EINVAL, "%s is not a regular file (%s)", path, fileType(st.Mode))
}

func fileType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	}
	return fmt.Sprintf("mode %#o", mode&unix.S_IFMT)
}

// openError keeps the errno of a failed open and names the path; an
// *Error (a path CheckPath refused) passes unchanged.
func openError(path string, err error) error {
	var se *Error
	if errors.As(err, &se) {
		return se
	}
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	msg := fmt.Sprintf("opening %s: %v", path, err)
	if errors.Is(err, syscall.ELOOP) {
		msg += " (a symbolic link loop, or a /proc magic link, which is never followed)"
	}
	return Errorf(AsError(err).Errno, "%s", msg)
}
