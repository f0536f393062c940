// Package bench measures nsplug against what it replaces and against its
// own floors: nsenter(1) per request, a fresh handler process per request
// (oneshot, the sysbox-fs model), warm pooled instances, cold starts, a bare
// go-plugin plugin, and a host read plus one unix-socket round trip.
//
// Run (used by cmd/nsplug-bench and `make bench`) takes every measurement in
// one process and one run, prints a table with the target ratios and writes
// results.json. The Benchmark functions in bench_test.go time the same
// operations under `go test -bench`.
//
// A binary using this package must call builtin.Main() first thing in main
// (or TestMain): the core starts the built-in plugins by re-executing it.
// Importing this package also imports package sandbox, whose init turns a
// re-executed copy into a target.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/internal/buildbin"
	"github.com/nsplug/nsplug/plugins/builtin"
	"github.com/nsplug/nsplug/sandbox"
)

// File is the small file every case reads.
const File = "/proc/sys/kernel/hostname"

// Hostname is the targets' hostname: reading File inside one gives it.
const Hostname = "nsplug-bench"

// readPayload asks procfs.read for File.
var readPayload = json.RawMessage(`{"path":"` + File + `"}`)

// Env holds what the cases share: a private runtime directory, a logger,
// and the bare plugin binary once built. Close it to remove them.
type Env struct {
	RunDir string
	Log    hclog.Logger

	mu          sync.Mutex
	bare, cli   builtBinary // built on first use unless set by SetBarePlugin, SetNsplugCLI
	dispatchers []*core.Dispatcher
	closers     []func()
}

// NewEnv makes an Env with a fresh, root-only runtime directory.
func NewEnv() (*Env, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("bench: needs root (namespaces, pidfd setns)")
	}
	dir, err := os.MkdirTemp("", "nsplug-bench-")
	if err != nil {
		return nil, err
	}
	log := hclog.New(&hclog.LoggerOptions{
		Name:   "nsplug-bench",
		Level:  hclog.Warn,
		Output: os.Stderr,
		// go-plugin logs the death of every plugin process at error
		// level; the cold case kills its targets, and their instances
		// with them, on purpose. A plugin that dies unexpectedly fails
		// its request, which stops the run.
		Exclude: func(_ hclog.Level, msg string, _ ...interface{}) bool { return msg == "plugin process exited" },
	})
	return &Env{RunDir: dir, Log: log}, nil
}

// Close closes the cores the Env started (killing their plugins), then
// the rest of what it made, last first, and removes its directory.
func (e *Env) Close() {
	e.mu.Lock()
	ds, closers := e.dispatchers, e.closers
	e.dispatchers, e.closers = nil, nil
	e.mu.Unlock()
	for _, d := range ds {
		d.Close()
	}
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
	os.RemoveAll(e.RunDir)
}

func (e *Env) onClose(fn func()) {
	e.mu.Lock()
	e.closers = append(e.closers, fn)
	e.mu.Unlock()
}

// Dispatcher starts a core serving the built-ins with log_level warn, this
// Env's runtime directory and the extra TOML given. It is closed with the
// Env.
func (e *Env) Dispatcher(extraTOML string) (*core.Dispatcher, error) {
	cfg, err := config.Parse([]byte(fmt.Sprintf("log_level = \"warn\"\nruntime_dir = %q\n%s", e.RunDir, extraTOML)), "bench.toml")
	if err != nil {
		return nil, err
	}
	d, err := core.New(cfg, core.Options{Logger: e.Log, Builtins: builtin.All()})
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	e.dispatchers = append(e.dispatchers, d)
	e.mu.Unlock()
	return d, nil
}

// NewTarget starts a container-like sandbox target: every namespace but
// user, hostname Hostname, the host's file system in a private mount
// namespace. The caller closes it.
func NewTarget() (*sandbox.Sandbox, error) {
	return sandbox.Start(sandbox.Options{Hostname: Hostname})
}

// Target starts a target that is closed with the Env.
func (e *Env) Target() (*sandbox.Sandbox, error) {
	t, err := NewTarget()
	if err != nil {
		return nil, err
	}
	e.onClose(func() { t.Close() })
	return t, nil
}

// read dispatches procfs.read of File into pid and checks the answer.
func read(ctx context.Context, d *core.Dispatcher, pid int) error {
	resp, err := d.Dispatch(ctx, core.Request{PID: pid, Type: "procfs.read", Payload: readPayload})
	if err != nil {
		return err
	}
	return checkRead(resp)
}

func checkRead(resp json.RawMessage) error {
	var out struct{ Data []byte }
	if err := json.Unmarshal(resp, &out); err != nil {
		return fmt.Errorf("procfs.read: response %s: %v", resp, err)
	}
	if string(out.Data) != Hostname+"\n" {
		return fmt.Errorf("procfs.read %s: got %q, want %q", File, out.Data, Hostname+"\n")
	}
	return nil
}

// SetBarePlugin uses an already built bench/bareplugin binary.
func (e *Env) SetBarePlugin(path string) { e.setBinary(&e.bare, path) }

// BarePlugin returns the bare plugin binary, building it on first use with
// the go command (the working directory must lie in the nsplug module).
func (e *Env) BarePlugin() (string, error) {
	return e.binary(&e.bare, "github.com/nsplug/nsplug/bench/bareplugin", "bareplugin")
}

// SetNsplugCLI uses an already built bin/nsplug.
func (e *Env) SetNsplugCLI(path string) { e.setBinary(&e.cli, path) }

// NsplugCLI returns the nsplug command, building it on first use like
// BarePlugin.
func (e *Env) NsplugCLI() (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cli.path == "" && e.cli.err == nil {
		e.cli.path = filepath.Join(e.RunDir, "nsplug") // and nsplugd beside it
		if e.cli.err = buildbin.Build(e.RunDir); e.cli.err != nil {
			e.cli.path = ""
		}
	}
	return e.cli.path, e.cli.err
}

// builtBinary is a binary of this module a case runs: given, or built once.
type builtBinary struct {
	path string
	err  error
}

func (e *Env) setBinary(b *builtBinary, path string) {
	e.mu.Lock()
	b.path, b.err = path, nil
	e.mu.Unlock()
}

func (e *Env) binary(b *builtBinary, pkg, name string) (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if b.path != "" || b.err != nil {
		return b.path, b.err
	}
	gocmd, err := exec.LookPath("go")
	if err != nil {
		gocmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(e.RunDir, name)
	build := exec.Command(gocmd, "build", "-o", out, pkg)
	// Built as `make build` builds: no race detector or coverage even
	// when the bench itself runs under them.
	build.Env = append(os.Environ(), "GOFLAGS=")
	start := time.Now()
	if msg, err := build.CombinedOutput(); err != nil {
		b.err = fmt.Errorf("building %s: %v\n%s", pkg, err, msg)
		return "", b.err
	}
	e.Log.Debug("built", "package", pkg, "path", out, "took", time.Since(start))
	b.path = out
	return out, nil
}
