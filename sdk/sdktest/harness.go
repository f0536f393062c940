package sdktest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	_ "github.com/nsplug/nsplug/core/goplugin" // the plugin under test is a third-party one
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/sdk"
)

// Config says what a Harness runs.
type Config struct {
	// PluginPath is the plugin executable to run, as built for
	// production (see Build). Required. The harness names it in the
	// configuration by its absolute path and its sha256, which it
	// computes.
	PluginPath string
	// Name is the plugin's name in the configuration ([[plugin]] name).
	// Default: the base name of PluginPath, which must then match
	// [a-z0-9][a-z0-9_-]*.
	Name string
	// Target describes the throwaway target process, made with
	// sandbox.Start. The zero value is a container-like target: every
	// namespace but user, its own hostname, the host's filesystem.
	// Rootless: true gives it a user namespace mapping root to host uid
	// 100000; Scratch: true an empty root with no libc, /proc or /sys.
	Target sandbox.Options
	// TOML is configuration text placed before the plugin's entry:
	// top-level keys such as log_level, a [defaults] table, other
	// [[plugin]] entries. runtime_dir is set by the harness (a temporary
	// directory) and must not appear.
	TOML string
	// PluginTOML are more keys of the plugin's own [[plugin]] entry,
	// written after its name, path and sha256: types, mode,
	// fresh_mounts, allowed_roots, request_timeout, a [plugin.options]
	// table...
	PluginTOML string
}

// Harness is a built plugin running through the real core against a
// throwaway target. Make one with NewHarness; the test's cleanup closes
// it. Its methods may be called from any goroutine, except that the
// helpers that fail the test (Call, HandlerPID) must be called from the
// test's own.
type Harness struct {
	t      testing.TB
	name   string
	sha256 string
	text   string
	runDir string
	target *sandbox.Sandbox
	core   *core.Dispatcher
	logs   *logSink
}

var pluginNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// NewHarness starts a target, then a core (core.New) configured with the
// plugin by path and sha256 and a runtime_dir of its own, so that the
// plugin is described and registered exactly as in production; an error
// there (a type named in types that the plugin does not serve, a
// protocol version mismatch, a plugin that does not start) fails the
// test with the core's message.
//
// When the test ends the harness closes the core, checks that no plugin
// process it started is left (neither the processes it knew nor any
// plugin process in the target's namespaces) and that runtime_dir holds
// no socket or directory, failing the test otherwise, and then kills the
// target.
//
// It needs root (making namespaces and joining them); without it the
// test is skipped. The core's log, the plugin's lines included, goes to
// the test's log and is recorded (see Logs).
func NewHarness(t testing.TB, cfg Config) *Harness {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("sdktest: NewHarness needs root (it makes namespaces and the core joins them)")
	}
	if cfg.PluginPath == "" {
		t.Fatal("sdktest: Config.PluginPath is empty")
	}
	path, err := filepath.Abs(cfg.PluginPath)
	if err != nil {
		t.Fatalf("sdktest: %v", err)
	}
	name := cfg.Name
	if name == "" {
		name = filepath.Base(path)
	}
	if !pluginNameRE.MatchString(name) {
		t.Fatalf("sdktest: plugin name %q does not match [a-z0-9][a-z0-9_-]*; set Config.Name", name)
	}
	sum, err := fileSHA256(path)
	if err != nil {
		t.Fatalf("sdktest: plugin executable: %v", err)
	}
	h := &Harness{t: t, name: name, sha256: sum}

	target, err := sandbox.Start(cfg.Target)
	if err != nil {
		t.Fatalf("sdktest: starting the target: %v", err)
	}
	t.Cleanup(func() {
		if err := target.Close(); err != nil {
			t.Errorf("sdktest: closing the target: %v", err)
		}
	})
	h.target = target
	h.runDir = t.TempDir()

	var b strings.Builder
	fmt.Fprintf(&b, "runtime_dir = %s\n", tomlString(h.runDir))
	if cfg.TOML != "" {
		b.WriteString(strings.TrimRight(cfg.TOML, "\n") + "\n")
	}
	fmt.Fprintf(&b, "\n[[plugin]]\nname = %s\npath = %s\nsha256 = %s\n", tomlString(name), tomlString(path), tomlString(sum))
	if cfg.PluginTOML != "" {
		b.WriteString(strings.TrimRight(cfg.PluginTOML, "\n") + "\n")
	}
	h.text = b.String()
	conf, err := config.Parse([]byte(h.text), "sdktest.toml")
	if err != nil {
		t.Fatalf("sdktest: configuration:\n%s\n%v", numbered(h.text), err)
	}

	level := hclog.LevelFromString(conf.LogLevel)
	h.logs = &logSink{level: level}
	w := &testWriter{t: t}
	t.Cleanup(w.stop)
	log := hclog.NewInterceptLogger(&hclog.LoggerOptions{Name: "nsplug", Level: level, Output: w})
	log.RegisterSink(h.logs)

	d, err := core.New(conf, core.Options{Logger: log})
	if err != nil {
		t.Fatalf("sdktest: core.New: %v", err)
	}
	for _, p := range d.Plugins() {
		if p.Status != core.PluginOK {
			d.Close()
			t.Fatalf("sdktest: plugin %s failed to load: %s", p.Name, p.Error)
		}
	}
	h.core = d
	t.Cleanup(h.close)
	return h
}

// Call sends one request of message type typ through the core to the
// plugin, in the target's namespaces. req is encoded as JSON (nil sends
// {}); when resp is not nil the response is decoded strictly into it (an
// unknown field fails the test). The error is the core's: a *core.Error
// whose Errno is the handler's errno (errors.Is(err, syscall.ENOENT)
// works), or ETIMEDOUT, ESRCH, EIO for what happened around it.
func (h *Harness) Call(typ string, req, resp any) error {
	h.t.Helper()
	payload := []byte("{}")
	if req != nil {
		var err error
		if payload, err = json.Marshal(req); err != nil {
			h.t.Fatalf("sdktest: %s: encoding the request: %v", typ, err)
		}
	}
	out, err := h.CallJSON(typ, string(payload))
	if err != nil {
		return err
	}
	if resp != nil {
		if err := sdk.DecodeStrict(out, resp); err != nil {
			h.t.Fatalf("sdktest: %s: response %s does not decode into %T: %v", typ, out, resp, err)
		}
	}
	return nil
}

// CallJSON sends a request with payload given as JSON text and returns
// the response as the core returned it.
func (h *Harness) CallJSON(typ, payload string) (json.RawMessage, error) {
	return h.core.Dispatch(context.Background(), core.Request{PID: h.target.PID(), Type: typ, Payload: json.RawMessage(payload)})
}

// Core returns the dispatcher, for what Call does not cover: a context
// of one's own, Request.Namespaces or Credentials, Types, Plugins,
// Instances. Do not Close it; the harness does.
func (h *Harness) Core() *core.Dispatcher { return h.core }

// Target returns the target process (its PID, its root as the host sees
// it, its namespaces).
func (h *Harness) Target() *sandbox.Sandbox { return h.target }

// Name returns the plugin's name in the configuration.
func (h *Harness) Name() string { return h.name }

// SHA256 returns the hex sha256 of the plugin executable, as configured.
func (h *Harness) SHA256() string { return h.sha256 }

// ConfigText returns the configuration the harness gave the core.
func (h *Harness) ConfigText() string { return h.text }

// HandlerPID returns the host pid of the process serving the plugin's
// requests in the target (for a plugin in the target's pid namespace,
// the child of the waiter the core started). It fails the test unless
// exactly one instance of the plugin is live: call it after a request,
// with the default pooled mode.
func (h *Harness) HandlerPID() int {
	h.t.Helper()
	var pids []int
	for _, in := range h.core.Instances() {
		if in.Plugin == h.name {
			pids = append(pids, in.PID)
		}
	}
	if len(pids) != 1 {
		h.t.Fatalf("sdktest: want one live instance of plugin %s, have %v", h.name, h.core.Instances())
	}
	return pids[0]
}

// Logs returns what reached the core's log so far, at the configured
// log_level, the plugin's relayed lines included.
func (h *Harness) Logs() []LogEntry { return h.logs.snapshot() }

// close is the harness's cleanup: close the core, then check that it
// left nothing behind.
func (h *Harness) close() {
	t := h.t
	var pids []int
	for _, in := range h.core.Instances() {
		pids = append(pids, in.PID, in.RunnerPID)
	}
	if err := h.core.Close(); err != nil {
		t.Errorf("sdktest: closing the core: %v", err)
	}
	// Close kills and reaps; allow a moment for a waiter's child.
	deadline := time.Now().Add(5 * time.Second)
	var left []string
	for {
		left = left[:0]
		for _, pid := range pids {
			if exe, ok := pluginExe(pid); ok {
				left = append(left, fmt.Sprintf("pid %d (%s)", pid, exe))
			}
		}
		left = append(left, h.pluginsInTarget()...)
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Errorf("sdktest: plugin processes left after the core was closed: %s", strings.Join(left, ", "))
	}
	filepath.Walk(h.runDir, func(p string, info os.FileInfo, err error) error {
		if err == nil && p != h.runDir {
			t.Errorf("sdktest: left in runtime_dir after the core was closed: %s (%v)", p, info.Mode())
		}
		return nil
	})
}

// pluginExe reports whether pid is a live plugin process: the core runs
// plugins from sealed memfd copies named nsplug-<name>.
func pluginExe(pid int) (string, bool) {
	exe, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	if err != nil || !strings.Contains(exe, "memfd:nsplug") {
		return "", false
	}
	return exe, true
}

// pluginsInTarget lists plugin processes that share a namespace of the
// target's own (one the test process is not in).
func (h *Harness) pluginsInTarget() []string {
	var own []string
	for _, ns := range h.target.Namespaces() {
		mine, err1 := ownNSIno(ns)
		theirs, err2 := h.target.NSInode(ns)
		if err1 == nil && err2 == nil && mine != theirs {
			own = append(own, ns)
		}
	}
	if len(own) == 0 {
		return nil
	}
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == h.target.PID() {
			continue
		}
		exe, ok := pluginExe(pid)
		if !ok {
			continue
		}
		for _, ns := range own {
			ino, err := nsIno(e.Name(), ns)
			want, _ := h.target.NSInode(ns)
			if err == nil && ino == want {
				out = append(out, fmt.Sprintf("pid %d (%s) in the target's %s namespace", pid, exe, ns))
				break
			}
		}
	}
	return out
}

// ownNSIno is the test process's own namespace of kind ns, read on a
// locked thread: /proc/self shows the main thread's, which code that
// joined a namespace on a locked thread and let it end may have left in a
// foreign one (a thread that cannot exit stays there).
func ownNSIno(ns string) (uint64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return nsIno("thread-self", ns)
}

func nsIno(pid, ns string) (uint64, error) {
	st, err := os.Stat("/proc/" + pid + "/ns/" + ns)
	if err != nil {
		return 0, err
	}
	return statIno(st), nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04x", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func numbered(text string) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	for i, l := range lines {
		lines[i] = fmt.Sprintf("%3d  %s", i+1, l)
	}
	return strings.Join(lines, "\n")
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
