// Package sysctl is the built-in plugin that reads and writes kernel
// parameters (/proc/sys) as a target sees them: the net.* values of its
// network namespace, its hostname, its IPC limits, and so on.
//
// It is written with the public sdk only (its lean part, sdk/handler, which
// a built-in imports so that its process links no go-plugin), as a
// third-party plugin would be.
//
// Every access goes through the plugin's own fresh procfs (FreshMounts
// "proc"), resolved beneath it without following any link or crossing any
// mount, never through the target's /proc: a FROM-scratch target without
// /proc works, and a target cannot redirect a write by mounting one
// /proc/sys file over another. Which value a /proc/sys file shows is
// decided by the namespaces of the process that opens it, and the handler
// runs in the target's.
//
// sysctl.set only writes sysctls a namespace owns (see package sysctlns), and
// only from a namespace that is not the machine's initial one; anything
// else would change the host, and needs the name listed in the plugin's
// allow_host_sysctls option.
package sysctl

import (
	"context"
	"errors"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/plugins/internal/sysctlns"
	"github.com/nsplug/nsplug/sdk/handler"
)

// DefaultMaxListEntries bounds sysctl.list unless options.max_list_entries
// says otherwise. A network namespace with a few interfaces has some 600
// entries, the whole tree about 1,500.
const DefaultMaxListEntries = 10000

// Options are the plugin's [plugin.options].
type Options struct {
	// AllowHostSysctls are machine-wide sysctls sysctl.set may write,
	// by name (dotted or slash form), e.g. ["vm.overcommit_memory"]. A
	// namespaced sysctl listed here may also be written from the initial
	// namespace (a target sharing the host's).
	AllowHostSysctls []string `json:"allow_host_sysctls"`
	// MaxListEntries bounds the entries sysctl.list returns.
	MaxListEntries int `json:"max_list_entries"`
}

// Plugin returns the sysctl plugin.
func Plugin() *handler.Plugin {
	return &handler.Plugin{
		Name:        "sysctl",
		FreshMounts: []string{"proc"},
		Configure:   handler.TypedOptions(Options{MaxListEntries: DefaultMaxListEntries}, checkOptions),
		Handlers: []handler.Handler{
			handler.Handle("sysctl.get", "read a sysctl as the target sees it (name in dotted or slash form)", get),
			handler.Handle("sysctl.set", "write a namespaced sysctl of the target and read it back", set).MayChange(sysctlns.Namespaces()...),
			handler.Handle("sysctl.list", "list the sysctls under a prefix with their values", list),
		},
	}
}

// Names and values are handler.Name: bytes, a plain JSON string when UTF-8,
// {"base64": "..."} when not. An interface name may hold any byte but
// '/', ':', whitespace and NUL, so net.ipv4.conf.<interface>.* names need
// not be UTF-8, and string values (kernel.hostname) need not be either.

// GetRequest names one sysctl.
type GetRequest struct {
	Name handler.Name `json:"name"`
}

// Value is one sysctl and its value, without the trailing newline.
type Value struct {
	Name  handler.Name `json:"name"`
	Value handler.Name `json:"value"`
}

// SetRequest writes Value to the sysctl Name.
type SetRequest struct {
	Name  handler.Name `json:"name"`
	Value handler.Name `json:"value"`
}

// SetResponse is the value read back after the write; Value is absent
// when it cannot be read back (a write-only sysctl such as
// net.ipv4.route.flush).
type SetResponse struct {
	Name  handler.Name  `json:"name"`
	Value *handler.Name `json:"value,omitempty"`
}

// ListRequest names a subtree; an empty prefix lists everything.
type ListRequest struct {
	Prefix handler.Name `json:"prefix"`
}

// ListEntry is one sysctl of a listing: its value, or, when it cannot be
// read (a write-only entry, or one whose read fails), the errno name in
// Error and no value.
type ListEntry struct {
	Name  handler.Name  `json:"name"`
	Value *handler.Name `json:"value,omitempty"`
	Error string        `json:"error,omitempty"`
}

// ListResponse lists sysctls sorted by path.
type ListResponse struct {
	Entries []ListEntry `json:"entries"`
}

// checkOptions validates the options once, when the plugin is loaded.
func checkOptions(o *Options) error {
	for i, a := range o.AllowHostSysctls {
		if _, err := parseName("allow_host_sysctls entry", a); err != nil {
			return handler.OptionErrorf("allow_host_sysctls["+strconv.Itoa(i)+"]", "%s", handler.AsError(err).Message)
		}
	}
	if o.MaxListEntries <= 0 {
		return handler.OptionErrorf("max_list_entries", "must be positive, got %d", o.MaxListEntries)
	}
	return nil
}

// options are the options checkOptions validated (never an error now
// that they are checked at load).
func options(ctx context.Context) (Options, error) {
	return handler.OptionsFrom[Options](ctx), nil
}

// procRoot is the fresh procfs the core mounted for this plugin.
func procRoot(ctx context.Context) (*os.File, error) {
	p := handler.EnvFrom(ctx).Proc
	if p == nil {
		return nil, handler.Errorf(syscall.ENOTSUP, "sysctl: no fresh procfs (the plugin declares FreshMounts [\"proc\"]; is it run by an nsplug core?)")
	}
	return p, nil
}

// resolve is how every /proc/sys file is opened: beneath the fresh
// procfs, with no symbolic or magic link and no mount crossing (/proc/sys
// has none of either).
const resolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

func openAt(dir *os.File, rel string, flags int) (*os.File, error) {
	fd, err := unix.Openat2(int(dir.Fd()), rel, &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW),
		Resolve: resolve,
	})
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), rel), nil
}

// readValue reads one /proc/sys file. The kernel formats a numeric entry
// in a single read at offset 0 (a read at any other offset is EOF), so
// the first read gets a buffer large enough for any of them.
func readValue(f *os.File) (handler.Name, error) {
	buf := make([]byte, MaxReadLen+1)
	n := 0
	for n < len(buf) {
		m, err := f.Read(buf[n:])
		n += m
		if errors.Is(err, io.EOF) || (err == nil && m == 0) {
			break
		}
		if err != nil {
			return "", err
		}
	}
	if n > MaxReadLen {
		return "", syscall.EFBIG
	}
	v := buf[:n]
	if len(v) > 0 && v[len(v)-1] == '\n' {
		v = v[:len(v)-1]
	}
	return handler.Name(v), nil
}

func readName(proc *os.File, n name) (handler.Name, error) {
	f, err := openAt(proc, n.path(), unix.O_RDONLY)
	if err != nil {
		return "", handler.Errorf(errnoOf(err), "sysctl %s: %s", n, describe(err))
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return "", handler.Errorf(syscall.EISDIR, "sysctl %s is a directory; use sysctl.list", n)
	}
	v, err := readValue(f)
	if err != nil {
		if errors.Is(err, syscall.EFBIG) {
			return "", handler.Errorf(syscall.EFBIG, "sysctl %s: value is longer than %d bytes", n, MaxReadLen)
		}
		return "", handler.Errorf(errnoOf(err), "sysctl %s: read: %s", n, describe(err))
	}
	return v, nil
}

// describe is an error's text without the path an *os.PathError adds
// (the message names the sysctl instead).
func describe(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if errno == syscall.ENOENT {
			return "no such sysctl"
		}
		return errno.Error()
	}
	return err.Error()
}

// checkRoots applies the plugin's allowed_roots to the /proc/sys path of
// a name, so a configuration can narrow the plugin to, say,
// ["/proc/sys/net"]. The default ("/") allows every sysctl.
func checkRoots(ctx context.Context, n name) error {
	p := "/proc/sys"
	if len(n) > 0 {
		p += "/" + strings.Join(n, "/")
	}
	if _, err := handler.EnvFrom(ctx).CheckPath(p); err != nil {
		e := handler.AsError(err)
		return handler.Errorf(e.Errno, "sysctl %s: %s", n, e.Message)
	}
	return nil
}

func get(ctx context.Context, req GetRequest) (Value, error) {
	n, err := parseName("name", string(req.Name))
	if err != nil {
		return Value{}, err
	}
	if err := checkRoots(ctx, n); err != nil {
		return Value{}, err
	}
	proc, err := procRoot(ctx)
	if err != nil {
		return Value{}, err
	}
	// Without waking the Go runtime (Env.ReadProcSys); a failure is
	// repeated by readName, which names the sysctl in its message.
	if data, err := handler.EnvFrom(ctx).ReadProcSys(strings.Join(n, "/"), MaxReadLen); err == nil {
		return Value{Name: handler.Name(n.String()), Value: handler.Name(strings.TrimSuffix(string(data), "\n"))}, nil
	}
	v, err := readName(proc, n)
	if err != nil {
		return Value{}, err
	}
	return Value{Name: handler.Name(n.String()), Value: v}, nil
}

// allowed decides whether sysctl.set may write n: a namespaced sysctl
// from a non-initial namespace, or a name listed in allow_host_sysctls.
func allowed(ctx context.Context, proc *os.File, n name, opts Options) error {
	canon := n.String()
	for _, a := range opts.AllowHostSysctls {
		an, err := parseName("allow_host_sysctls entry", a)
		if err != nil {
			return err
		}
		if an.String() == canon {
			return nil
		}
	}
	ns := sysctlns.Of(canon)
	if ns == "" {
		return handler.Errorf(syscall.EPERM, "sysctl %s is not namespaced: writing it would change the host (list it in the sysctl plugin's allow_host_sysctls option to allow that)", canon)
	}
	// The sdk's rule for every type that changes a namespace.
	env := handler.EnvFrom(ctx)
	if err := env.RequireJoined(ns); err != nil {
		return handler.Errorf(syscall.EPERM, "sysctl %s: %s, and so does listing %s in the allow_host_sysctls option", canon, handler.AsError(err).Message, canon)
	}
	if env.HostChangesAllowed(ns) {
		return nil
	}
	initial, err := sysctlns.InInitial(proc, ns)
	if err != nil {
		return err
	}
	if initial {
		return handler.Errorf(syscall.EPERM, "sysctl %s belongs to the %s namespace, and the handler is in the host's initial one (the target shares it, or the request did not join it): writing it would change the host (list it in allow_host_sysctls to allow that)", canon, ns)
	}
	return nil
}

func set(ctx context.Context, req SetRequest) (SetResponse, error) {
	n, err := parseName("name", string(req.Name))
	if err != nil {
		return SetResponse{}, err
	}
	if err := checkRoots(ctx, n); err != nil {
		return SetResponse{}, err
	}
	if err := checkValue(string(req.Value)); err != nil {
		return SetResponse{}, handler.Errorf(syscall.EINVAL, "sysctl %s: %s", n, handler.AsError(err).Message)
	}
	opts, err := options(ctx)
	if err != nil {
		return SetResponse{}, err
	}
	proc, err := procRoot(ctx)
	if err != nil {
		return SetResponse{}, err
	}
	if err := allowed(ctx, proc, n, opts); err != nil {
		return SetResponse{}, err
	}
	if err := write(proc, n, string(req.Value)); err != nil {
		return SetResponse{}, err
	}
	handler.EnvFrom(ctx).Log.Info("sysctl set", "name", n.String(), "value", string(req.Value))
	resp := SetResponse{Name: handler.Name(n.String())}
	// The write happened: a failed read-back (EACCES for a write-only
	// entry) leaves the value out rather than failing the request.
	if v, err := readName(proc, n); err == nil {
		resp.Value = &v
	} else if !errors.Is(err, syscall.EACCES) {
		handler.EnvFrom(ctx).Log.Warn("sysctl written but not read back", "name", n.String(), "error", err)
	}
	return resp, nil
}

func write(proc *os.File, n name, value string) error {
	switch n.String() {
	case "kernel.hostname":
		// /proc/sys/kernel/{hostname,domainname} only let the host's
		// root write; sethostname(2) checks CAP_SYS_ADMIN over the uts
		// namespace, as `hostname` does in a rootless container. Same
		// field, same value.
		if err := unix.Sethostname([]byte(value)); err != nil {
			return handler.Errorf(errnoOf(err), "sysctl %s: sethostname %q: %s", n, value, describe(err))
		}
		return nil
	case "kernel.domainname":
		if err := unix.Setdomainname([]byte(value)); err != nil {
			return handler.Errorf(errnoOf(err), "sysctl %s: setdomainname %q: %s", n, value, describe(err))
		}
		return nil
	}
	f, err := openAt(proc, n.path(), unix.O_WRONLY)
	if err != nil {
		return handler.Errorf(errnoOf(err), "sysctl %s: %s", n, describe(err))
	}
	defer f.Close()
	// One write(2) at offset 0: the kernel parses the value from a single
	// write.
	m, err := f.Write([]byte(value))
	if err != nil {
		return handler.Errorf(errnoOf(err), "sysctl %s: writing %q: %s", n, value, describe(err))
	}
	if m != len(value) {
		return handler.Errorf(syscall.EIO, "sysctl %s: short write of %q (%d of %d bytes)", n, value, m, len(value))
	}
	return nil
}

func list(ctx context.Context, req ListRequest) (ListResponse, error) {
	opts, err := options(ctx)
	if err != nil {
		return ListResponse{}, err
	}
	proc, err := procRoot(ctx)
	if err != nil {
		return ListResponse{}, err
	}
	var prefix name
	if req.Prefix != "" {
		if prefix, err = parseName("prefix", string(req.Prefix)); err != nil {
			return ListResponse{}, err
		}
	}
	if err := checkRoots(ctx, prefix); err != nil {
		return ListResponse{}, err
	}
	rel := "sys"
	if len(prefix) > 0 {
		rel = prefix.path()
	}
	f, err := openAt(proc, rel, unix.O_RDONLY)
	if errors.Is(err, syscall.EACCES) && len(prefix) > 0 {
		// A write-only entry named as the prefix: listed like any other.
		return ListResponse{Entries: []ListEntry{{Name: handler.Name(prefix.String()), Error: handler.ErrnoName(syscall.EACCES)}}}, nil
	}
	if err != nil {
		return ListResponse{}, handler.Errorf(errnoOf(err), "sysctl prefix %q: %s", prefix.String(), describe(err))
	}
	defer f.Close()
	w := &walker{ctx: ctx, max: opts.MaxListEntries, entries: []ListEntry{}}
	if err := w.walk(f, prefix); err != nil {
		return ListResponse{}, err
	}
	return ListResponse{Entries: w.entries}, nil
}

type walker struct {
	ctx     context.Context
	max     int
	entries []ListEntry
}

// walk lists f, the file or directory of sysctl n, depth first in name
// order.
func (w *walker) walk(f *os.File, n name) error {
	if err := w.ctx.Err(); err != nil {
		return handler.Errorf(syscall.ECANCELED, "sysctl.list: %v", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return handler.Errorf(errnoOf(err), "sysctl %s: stat: %v", n, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if len(w.entries) >= w.max {
			return handler.Errorf(syscall.E2BIG, "sysctl.list: more than %d entries (max_list_entries); name a narrower prefix", w.max)
		}
		e := ListEntry{Name: handler.Name(n.String())}
		if v, err := readValue(f); err != nil {
			e.Error = handler.ErrnoName(errnoOf(err))
		} else {
			e.Value = &v
		}
		w.entries = append(w.entries, e)
		return nil
	}
	if len(n) >= MaxComponents {
		return nil // deeper than any sysctl; not followed
	}
	names, err := f.Readdirnames(-1)
	if err != nil {
		return handler.Errorf(errnoOf(err), "sysctl %s: listing: %v", n, err)
	}
	sort.Strings(names)
	for _, child := range names {
		cn := append(append(name{}, n...), child)
		cf, err := openAt(f, child, unix.O_RDONLY)
		if err != nil {
			// Unreadable entries (write-only: mode 0200) fail at open.
			if len(w.entries) >= w.max {
				return handler.Errorf(syscall.E2BIG, "sysctl.list: more than %d entries (max_list_entries); name a narrower prefix", w.max)
			}
			w.entries = append(w.entries, ListEntry{Name: handler.Name(cn.String()), Error: handler.ErrnoName(errnoOf(err))})
			continue
		}
		err = w.walk(cf, cn)
		cf.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func errnoOf(err error) syscall.Errno {
	if e := handler.AsError(err); e.Errno != 0 {
		return e.Errno
	}
	return syscall.EIO
}
