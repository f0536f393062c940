// Package sandbox makes throwaway, real targets for nsplug: live processes
// that sit in freshly created Linux namespaces, so that integration tests,
// `nsplug demo` and the plugin-author test harness have something genuine to
// enter without needing Docker or any other container runtime.
//
// A target is this very binary, re-executed through /proc/self/exe with the
// environment variable EnvVar set (the "reexec" pattern). The package's init
// function notices that variable, performs the target's set-up (hostname,
// tmpfs mounts, files, pivot_root, procfs), reports success or the failing
// step to the parent over a pipe, and then blocks until the parent goes away.
// It never returns into the host program's main, so any binary that imports
// this package — test binaries included — can make targets.
//
// Creating namespaces needs privilege: Start is meant to be called as root
// (CAP_SYS_ADMIN, plus CAP_SETUID/CAP_SETGID for Rootless targets).
//
// Lifetime: a target is killed by Close, by the death of the process that
// started it (PR_SET_PDEATHSIG, armed from a dedicated OS thread that lives as
// long as the process), and independently by end-of-file on a "lifeline"
// pipe whose only write end the starting process holds.
//
// What a target holds: stdin and stdout are the host's /dev/null (opened
// before the fork), stderr and the lifeline are anonymous pipes, the working
// directory is "/"; every other inherited descriptor is closed during set-up.
// Its mounts are made private before anything is mounted, so nothing it
// mounts propagates to the host, and all of it disappears with the process.
//
// Time namespaces: clone(2) cannot take CLONE_NEWTIME (its bit is part of the
// exit-signal field), but Go's os/exec switches to clone3(2) when the flag is
// in SysProcAttr.Cloneflags, and that is what Start uses. Without clone3
// (ENOSYS, e.g. under some seccomp filters) it falls back to unshare(2) in
// the child before execve: unshare(CLONE_NEWTIME) only changes
// time_for_children, but execve moves the task itself into it.
//
// A binary using this package should do nothing drastic in the init
// functions of packages initialised before this one: they run in every
// target too.
package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/internal/spawner"
	"github.com/nsplug/nsplug/nsexec/boot"
)

// EnvVar is the environment variable that turns a process started from a
// binary importing this package into a target. Its value is the target's
// JSON-encoded set-up description; it is not a public format.
const EnvVar = "_NSPLUG_SANDBOX"

// DefaultHostname is the hostname a target gets in its new uts namespace when
// Options.Hostname is empty.
const DefaultHostname = "nsplug-sandbox"

// DefaultHostID is the host uid and gid that root of a Rootless target maps to
// when Options.HostUID / Options.HostGID are zero.
const DefaultHostID = 100000

// DefaultFilesDir is where Options.Files are placed in a non-scratch target.
const DefaultFilesDir = "/mnt"

// RootlessIDCount is the number of ids mapped into a Rootless target's user
// namespace (0..65535 inside -> HostUID..HostUID+65535 outside).
const RootlessIDCount = 65536

// ErrClosed is returned by methods of a Sandbox that has been closed.
var ErrClosed = errors.New("sandbox: target closed")

// Options say which kind of target to make. The zero value is a
// "container-like" rootful target: every namespace this kernel supports
// except "user", the default hostname, no extra mounts.
type Options struct {
	// Namespaces to create, by name, as boot.Namespaces names them. nil
	// means all of them except "user" that the running kernel supports (those present in /proc/self/ns); an explicit
	// list is taken literally and fails if the kernel lacks one. A non-nil
	// empty list creates no namespace at all.
	//
	// "user" always gets the Rootless id mapping described below: a user
	// namespace whose ids are unmapped would leave the target without
	// privilege to set itself up.
	Namespaces []string

	// Rootless creates a user namespace whose root (uid/gid 0 and
	// RootlessIDCount ids from there) maps to HostUID/HostGID, like a
	// rootless container: on the host the target runs as HostUID. Implies
	// "user".
	Rootless bool
	// HostUID and HostGID are the host ids of the target's root in a user
	// namespace. Zero means DefaultHostID. The binary must be executable by
	// that host uid (mode o+x); no search permission on its directories is
	// needed because it is executed through /proc/self/exe.
	HostUID, HostGID int

	// Hostname is set in the new uts namespace (default DefaultHostname).
	// Setting it without a "uts" namespace is an error, since it would change
	// the host's name.
	Hostname string

	// Scratch makes the root an empty tmpfs (like a FROM-scratch container:
	// no libc, no /proc, no /sys, no /dev), entered with pivot_root; the old
	// root is detached, so only Files (and /proc with MountProc) exist in
	// it. Needs "mnt". The tmpfs is built while mounted over an existing
	// directory (the first of /tmp, /mnt, /run, /dev, /root) inside the
	// target's private mount namespace; the host never sees it.
	Scratch bool

	// Files are created inside the target before it is reported ready:
	// path -> content, regular files of mode 0644 in directories of mode
	// 0755, owned by the target's root.
	//
	// Keys are paths as the target sees them. In a Scratch target they live
	// in the tmpfs root; a relative key is relative to "/". In any other
	// target the host's file systems must not be touched, so a fresh tmpfs
	// is mounted at FilesDir inside the target's own (private) mount
	// namespace and the files are created there: a relative key is relative
	// to FilesDir and an absolute key must lie below it. Keys may not
	// contain "..". Needs "mnt". The options travel in an environment
	// variable, so all of Files together must stay below about 120 KiB.
	Files map[string]string

	// FilesDir is the directory (absolute, existing in the host's tree,
	// not "/") over which a non-scratch target mounts the tmpfs holding
	// Files. Default DefaultFilesDir. It only hides the host's directory
	// inside the target; the host's view is unchanged. In a user namespace
	// the target's host uid must be able to reach it (search permission on
	// every directory on the way). Ignored for Scratch.
	FilesDir string

	// MountProc mounts a fresh procfs at /proc inside the target (meaningful
	// with "pid" and "mnt"; a Scratch target gets a /proc directory for it).
	// Needs "mnt". In a Rootless target it also needs "pid", because the
	// kernel only lets a user namespace mount the procfs of a pid namespace
	// it owns.
	MountProc bool
}

// Sandbox is a running target. Its methods are safe for concurrent use.
type Sandbox struct {
	pid        int
	namespaces []string
	cmd        *exec.Cmd
	lifeline   *os.File // write end; the target exits on EOF
	stderr     *os.File // read end of the target's stderr, for diagnostics

	mu     sync.Mutex
	closed bool
}

// SetupError is returned by Start when the target could not set itself up.
// Step names what it was doing, e.g. "pivot_root" or "mount tmpfs at /mnt".
type SetupError struct {
	Step  string
	Errno unix.Errno // 0 if the failure was not a system call error
	Msg   string
}

func (e *SetupError) Error() string {
	return fmt.Sprintf("sandbox: target set-up failed at step %q: %s", e.Step, e.Msg)
}

// Unwrap returns the errno, so errors.Is(err, unix.EPERM) works.
func (e *SetupError) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

// KnownNamespaces returns the namespace names this package understands, in a
// fixed order.
func KnownNamespaces() []string {
	return boot.NamespaceNames(boot.AllNamespaces)
}

// nsFlag is the clone flag of a namespace named as in /proc/PID/ns.
func nsFlag(name string) (uintptr, bool) {
	flag, err := boot.ParseNamespaces([]string{name})
	return flag, err == nil
}

// maxPayload keeps the encoded options below the kernel's limit on a single
// environment string (MAX_ARG_STRLEN, 128 KiB), with room for the name.
const maxPayload = 120 << 10

// Tunables, variables so the package's own tests can exercise other paths.
var (
	// setupTimeout bounds how long Start waits for the target's report.
	setupTimeout = 30 * time.Second
	// pdeathsig is the signal the target gets when its starter dies.
	pdeathsig = syscall.SIGKILL
	// timeNSViaUnshare selects the fallback way of making a time namespace.
	timeNSViaUnshare = false
	// ignoreLifeline makes targets outlive EOF on the lifeline, so tests
	// can check that PR_SET_PDEATHSIG alone kills them.
	ignoreLifeline = false
)

// targetSpec is what the parent sends to the target, already validated.
type targetSpec struct {
	Namespaces []string   `json:"namespaces"`
	Hostname   string     `json:"hostname,omitempty"` // set iff "uts"
	Scratch    bool       `json:"scratch,omitempty"`
	FilesDir   string     `json:"files_dir,omitempty"` // non-scratch tmpfs mount point; "" = none
	Files      []fileSpec `json:"files,omitempty"`
	MountProc  bool       `json:"mount_proc,omitempty"`
	// IgnoreLifeline is for this package's tests only.
	IgnoreLifeline bool `json:"ignore_lifeline,omitempty"`
}

type fileSpec struct {
	Rel     string `json:"rel"` // relative to the files root, clean, no ".."
	Content string `json:"content"`
}

func (s *targetSpec) has(ns string) bool {
	for _, n := range s.Namespaces {
		if n == ns {
			return true
		}
	}
	return false
}

// compile validates opts and turns them into a targetSpec plus the host id
// mapping. Everything that can be checked without forking is checked here.
func (o Options) compile() (spec *targetSpec, hostUID, hostGID int, err error) {
	want := map[string]bool{}
	if o.Namespaces == nil {
		for _, ns := range KnownNamespaces() {
			if ns == "user" {
				continue
			}
			if _, err := os.Lstat("/proc/self/ns/" + ns); err == nil {
				want[ns] = true
			}
		}
	} else {
		for _, n := range o.Namespaces {
			if _, ok := nsFlag(n); !ok {
				return nil, 0, 0, fmt.Errorf("unknown namespace %q (known: %s)", n, strings.Join(KnownNamespaces(), ", "))
			}
			want[n] = true
		}
	}
	if o.wantsUserNS() {
		want["user"] = true
	}
	spec = &targetSpec{}
	for _, ns := range KnownNamespaces() {
		if want[ns] {
			spec.Namespaces = append(spec.Namespaces, ns)
		}
	}

	hostUID, hostGID = o.HostUID, o.HostGID
	if hostUID == 0 {
		hostUID = DefaultHostID
	}
	if hostGID == 0 {
		hostGID = DefaultHostID
	}
	if hostUID < 0 || hostGID < 0 || int64(hostUID)+RootlessIDCount > 1<<32-1 || int64(hostGID)+RootlessIDCount > 1<<32-1 {
		return nil, 0, 0, fmt.Errorf("host id range %d/%d (+%d) out of range", hostUID, hostGID, RootlessIDCount)
	}

	if want["uts"] {
		spec.Hostname = o.Hostname
		if spec.Hostname == "" {
			spec.Hostname = DefaultHostname
		}
		if len(spec.Hostname) > 64 {
			return nil, 0, 0, fmt.Errorf("hostname %q longer than 64 bytes", spec.Hostname)
		}
	} else if o.Hostname != "" {
		return nil, 0, 0, errors.New(`Hostname needs the "uts" namespace`)
	}

	if !want["mnt"] {
		switch {
		case o.Scratch:
			return nil, 0, 0, errors.New(`Scratch needs the "mnt" namespace`)
		case len(o.Files) > 0:
			return nil, 0, 0, errors.New(`Files need the "mnt" namespace`)
		case o.MountProc:
			return nil, 0, 0, errors.New(`MountProc needs the "mnt" namespace`)
		}
	}
	if o.MountProc && want["user"] && !want["pid"] {
		return nil, 0, 0, errors.New(`MountProc in a user namespace needs the "pid" namespace`)
	}
	spec.Scratch = o.Scratch
	spec.MountProc = o.MountProc
	spec.IgnoreLifeline = ignoreLifeline

	base := "/"
	if !o.Scratch {
		base = o.FilesDir
		if base == "" {
			base = DefaultFilesDir
		}
		if !path.IsAbs(base) || path.Clean(base) != base || base == "/" {
			return nil, 0, 0, fmt.Errorf("FilesDir %q must be a clean absolute path other than /", base)
		}
		if o.MountProc && (base == "/proc" || strings.HasPrefix(base, "/proc/")) {
			return nil, 0, 0, fmt.Errorf("FilesDir %q would be hidden by MountProc", base)
		}
		if len(o.Files) > 0 {
			spec.FilesDir = base
		}
	}
	seen := map[string]string{}
	for key, content := range o.Files {
		rel, err := filesKey(base, key)
		if err != nil {
			return nil, 0, 0, err
		}
		if other, dup := seen[rel]; dup {
			return nil, 0, 0, fmt.Errorf("Files keys %q and %q name the same file", other, key)
		}
		if o.Scratch && o.MountProc && (rel == "proc" || strings.HasPrefix(rel, "proc/")) {
			return nil, 0, 0, fmt.Errorf("Files key %q would be hidden by MountProc", key)
		}
		seen[rel] = key
		spec.Files = append(spec.Files, fileSpec{Rel: rel, Content: content})
	}
	sort.Slice(spec.Files, func(i, j int) bool { return spec.Files[i].Rel < spec.Files[j].Rel })
	return spec, hostUID, hostGID, nil
}

// wantsUserNS reports whether a user namespace is wanted (Rootless, or
// "user" listed explicitly).
func (o Options) wantsUserNS() bool {
	if o.Rootless {
		return true
	}
	for _, n := range o.Namespaces {
		if n == "user" {
			return true
		}
	}
	return false
}

// filesKey maps a Files key to a path relative to base (the files root).
func filesKey(base, key string) (string, error) {
	if key == "" || strings.ContainsRune(key, 0) {
		return "", fmt.Errorf("invalid Files key %q", key)
	}
	for _, elem := range strings.Split(key, "/") {
		if elem == ".." {
			return "", fmt.Errorf("Files key %q contains \"..\"", key)
		}
	}
	p := key
	if !path.IsAbs(p) {
		p = path.Join(base, p)
	}
	p = path.Clean(p)
	var rel string
	switch {
	case base == "/":
		rel = strings.TrimPrefix(p, "/")
	case strings.HasPrefix(p, base+"/"):
		rel = strings.TrimPrefix(p, base+"/")
	}
	if rel == "" {
		return "", fmt.Errorf("Files key %q does not name a file below %s", key, base)
	}
	return rel, nil
}

// Start creates a target and returns once it is fully set up. Set-up failures
// inside the target come back as *SetupError naming the step.
func Start(opts Options) (*Sandbox, error) {
	spec, hostUID, hostGID, err := opts.compile()
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	payload, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("sandbox: encode options: %w", err)
	}
	if len(payload) > maxPayload {
		return nil, fmt.Errorf("sandbox: options (mostly Files) encode to %d bytes; the limit is %d", len(payload), maxPayload)
	}

	// Three pipes: lifeline (parent keeps the write end), status (target
	// reports set-up result, then closes it) and stderr (diagnostics if the
	// target dies unexpectedly). All are anonymous, so the target holds no
	// reference into the host's file systems.
	var toClose []*os.File
	closeAll := func() {
		for _, f := range toClose {
			f.Close()
		}
	}
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err == nil {
			toClose = append(toClose, r, w)
		}
		return r, w, err
	}
	lifeR, lifeW, err := pipe()
	if err != nil {
		return nil, fmt.Errorf("sandbox: lifeline pipe: %w", err)
	}
	statR, statW, err := pipe()
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("sandbox: status pipe: %w", err)
	}
	errR, errW, err := pipe()
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("sandbox: stderr pipe: %w", err)
	}

	var flags uintptr
	for _, n := range spec.Namespaces {
		f, _ := nsFlag(n)
		flags |= f
	}
	newCmd := func(cloneTime bool) *exec.Cmd {
		attr := &syscall.SysProcAttr{
			Cloneflags: flags &^ unix.CLONE_NEWTIME,
			Pdeathsig:  pdeathsig,
		}
		if flags&unix.CLONE_NEWTIME != 0 {
			if cloneTime {
				// Go uses clone3(2) when CLONE_NEWTIME is among the
				// clone flags, which accepts it (clone(2) cannot).
				attr.Cloneflags |= unix.CLONE_NEWTIME
			} else {
				// Fallback: unshare(CLONE_NEWTIME) in the child only
				// sets time_for_children; execve then moves the task
				// itself into it.
				attr.Unshareflags = unix.CLONE_NEWTIME
			}
		}
		if flags&unix.CLONE_NEWUSER != 0 {
			attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: hostUID, Size: RootlessIDCount}}
			attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: hostGID, Size: RootlessIDCount}}
			attr.GidMappingsEnableSetgroups = true
			// After clone the child still has the host's kuid 0, which
			// is unmapped inside; become the namespace's root (host
			// HostUID) and drop supplementary groups.
			attr.Credential = &syscall.Credential{Uid: 0, Gid: 0, Groups: []uint32{}}
		}
		return &exec.Cmd{
			Path: "/proc/self/exe",
			Args: []string{"nsplug-sandbox"},
			// A minimal environment: the target needs nothing else, and
			// e.g. GOCOVERDIR must not make it write to the host.
			// Cgroup-aware GOMAXPROCS keeps a cgroup file open for
			// the process's lifetime; turn it off so the target holds
			// no host files.
			Env: []string{
				EnvVar + "=" + string(payload),
				"GOMAXPROCS=1",
				"GODEBUG=containermaxprocs=0,updatemaxprocs=0",
			},
			Dir:         "/",
			Stderr:      errW,
			ExtraFiles:  []*os.File{lifeR, statW}, // fds 3 and 4 in the target
			SysProcAttr: attr,
		}
	}

	cmd := newCmd(!timeNSViaUnshare)
	err = spawner.Start(cmd)
	if err != nil && flags&unix.CLONE_NEWTIME != 0 && !timeNSViaUnshare && errors.Is(err, unix.ENOSYS) {
		// No clone3 (old kernel or a seccomp filter): use the unshare way.
		cmd = newCmd(false)
		err = spawner.Start(cmd)
	}
	// The target has its own copies now; ours must go so that EOF works.
	lifeR.Close()
	statW.Close()
	errW.Close()
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("sandbox: start target process: %w", err)
	}

	s := &Sandbox{
		pid:        cmd.Process.Pid,
		namespaces: spec.Namespaces,
		cmd:        cmd,
		lifeline:   lifeW,
		stderr:     errR,
	}
	err = s.awaitReady(statR)
	statR.Close()
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// report is the target's one message on the status pipe.
type report struct {
	OK    bool   `json:"ok,omitempty"`
	Step  string `json:"step,omitempty"`
	Errno int    `json:"errno,omitempty"`
	Msg   string `json:"msg,omitempty"`
}

func (s *Sandbox) awaitReady(statR *os.File) error {
	if err := statR.SetReadDeadline(time.Now().Add(setupTimeout)); err != nil {
		return fmt.Errorf("sandbox: status pipe deadline: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(statR, 1<<16))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("sandbox: target pid %d did not finish set-up within %v", s.pid, setupTimeout)
	}
	if err != nil {
		return fmt.Errorf("sandbox: read target status: %w", err)
	}
	var r report
	if len(data) > 0 {
		if err := json.Unmarshal(data, &r); err != nil {
			return fmt.Errorf("sandbox: bad status from target: %q", data)
		}
	}
	switch {
	case r.OK:
		return nil
	case r.Step != "":
		return &SetupError{Step: r.Step, Errno: unix.Errno(r.Errno), Msg: r.Msg}
	}
	// The target died before reporting: reap it and show what it said.
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	waitErr := s.cmd.Wait()
	s.lifeline.Close()
	s.stderr.SetReadDeadline(time.Now().Add(time.Second))
	out, _ := io.ReadAll(io.LimitReader(s.stderr, 4096))
	s.stderr.Close()
	return fmt.Errorf("sandbox: target exited before finishing set-up (%v); stderr: %q", waitErr, strings.TrimSpace(string(out)))
}

// PID returns the host pid of the target process.
func (s *Sandbox) PID() int { return s.pid }

// Namespaces returns the names of the namespaces created for the target, in
// the order of KnownNamespaces.
func (s *Sandbox) Namespaces() []string { return append([]string(nil), s.namespaces...) }

// Root returns the target's root directory as the host sees it
// (/proc/PID/root). Reads and writes through it are done with the caller's
// credentials.
func (s *Sandbox) Root() string { return "/proc/" + strconv.Itoa(s.pid) + "/root" }

// NSInode returns the inode number of /proc/PID/ns/<ns> as the host sees it.
// Two processes are in the same namespace iff the inodes (on the nsfs device)
// are equal.
func (s *Sandbox) NSInode(ns string) (uint64, error) {
	if _, ok := nsFlag(ns); !ok {
		return 0, fmt.Errorf("sandbox: unknown namespace %q", ns)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	// Holding mu keeps Close from reaping the pid (and the kernel from
	// reusing it) while we look.
	var st unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(s.pid)+"/ns/"+ns, &st); err != nil {
		return 0, fmt.Errorf("sandbox: %w", err)
	}
	return st.Ino, nil
}

// Close kills the target with SIGKILL and reaps it. Its namespaces and
// mounts vanish with it. Close is idempotent; later calls return nil.
func (s *Sandbox) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	// Process.Kill signals through a pidfd when available, so it cannot hit
	// a recycled pid.
	if err := s.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		errs = append(errs, fmt.Errorf("sandbox: kill target: %w", err))
	}
	if err := s.cmd.Wait(); err != nil {
		var exitErr *exec.ExitError
		if !errors.As(err, &exitErr) { // being killed is the expected outcome
			errs = append(errs, fmt.Errorf("sandbox: reap target: %w", err))
		}
	}
	s.lifeline.Close()
	s.stderr.Close()
	return errors.Join(errs...)
}
