package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/plugins/builtin"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/sdk"
	"github.com/nsplug/nsplug/sdk/sdktest"
	"github.com/nsplug/nsplug/wire"
)

// sdkBuild builds the main package pkg (relative to tests/) with extra
// go build flags into a temporary directory.
func sdkBuild(t *testing.T, pkg string, flags ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	args := append(append([]string{"build", "-o", out}, flags...), pkg)
	if msg, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
	return out
}

// sdkConfig is a configuration with its own runtime_dir and one external
// plugin, by path and sha256.
func sdkConfig(t *testing.T, name, bin, extra string) *config.Config {
	t.Helper()
	text := fmt.Sprintf("runtime_dir = %q\n[[plugin]]\nname = %q\npath = %q\nsha256 = %q\n%s", t.TempDir(), name, bin, sha256File(t, bin), extra)
	cfg, err := config.Parse([]byte(text), "sdk.toml")
	if err != nil {
		t.Fatalf("config: %v\n%s", err, text)
	}
	return cfg
}

// A plugin built for another version of the plugin protocol is refused
// when the core starts (with fail_on_plugin_error), with an error naming
// the plugin and both versions, and nothing of it is left running.
func TestProtocolVersionMismatch(t *testing.T) {
	parallel(t)
	for _, v := range []int{wire.ProtocolVersion - 1, wire.ProtocolVersion + 1} { // built against an older sdk, a newer one
		t.Run(fmt.Sprintf("plugin speaks %d", v), func(t *testing.T) {
			bin := sdkBuild(t, "./testdata/oldproto", "-ldflags", fmt.Sprintf("-X main.protocolVersion=%d", v))
			cfg := sdkConfig(t, "oldproto", bin, "")
			cfg.FailOnPluginError = true // by default it is only recorded as failed
			started := &startedProcs{}
			d, err := core.New(cfg, core.Options{Started: started.add})
			if err == nil {
				d.Close()
				t.Fatalf("core.New accepted a plugin speaking protocol version %d", v)
			}
			msg := err.Error()
			t.Logf("core.New: %s", msg)
			plugin := regexp.MustCompile(fmt.Sprintf(`(?i)plugin\b[^0-9]*\b%d\b`, v))
			ours := regexp.MustCompile(fmt.Sprintf(`(?i)(client|core|nsplug)[a-z ]*versions?:? *\[?%d\b`, wire.ProtocolVersion))
			if !strings.Contains(msg, "oldproto") || !plugin.MatchString(msg) || !ours.MatchString(msg) {
				t.Errorf("error %q does not name plugin oldproto, its version %d and the core's %d", msg, v, wire.ProtocolVersion)
			}
			var ce *core.Error
			if !errors.As(err, &ce) || ce.Errno != syscall.EIO {
				t.Errorf("error %T %v, want a *core.Error with EIO", err, err)
			}
			if started.none() {
				t.Error("core.New started no plugin process")
			}
			if left := started.alive(); len(left) > 0 {
				t.Errorf("plugin processes left: %v", left)
			}
		})
	}
}

// sdkLogs is a logger destination safe for concurrent use.
type sdkLogs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *sdkLogs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *sdkLogs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// A plugin that implements the wire contract without the sdk, the wire
// codec or go-plugin's server, from wire/README.md, as one in another
// language must (see sdk/README.md, "Other languages"): the handshake
// line, the socket bound by a relative name in the socket directory,
// Describe over gRPC, every request on the frame channel (a response split
// into part frames, a file handed back, a cancel frame), hclog JSON lines
// on stderr. With the nsexec preamble linked in it runs in the target's
// namespaces; without the controller service it still loads (Describe)
// and stops at once (serving processes run without go-plugin and end when
// the frame channel closes); without the preamble it runs on the host; in
// oneshot mode it serves one request.
func TestPluginWithoutTheSDK(t *testing.T) {
	parallel(t)
	host, _ := os.Hostname()
	for _, c := range []struct {
		name     string
		flags    []string
		inTarget bool
	}{
		{"preamble and controller", nil, true},
		{"no controller", []string{"-ldflags", "-X main.controller=no"}, true},
		{"no preamble", []string{"-tags", "nopreamble"}, false},
		{"oneshot", nil, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			oneshot := c.name == "oneshot"
			bin := sdkBuild(t, "./testdata/rawplugin", c.flags...)
			target := newTarget(t, sandbox.Options{Hostname: "raw-target"})
			var logs sdkLogs
			log := hclog.New(&hclog.LoggerOptions{Name: "nsplug", Level: hclog.Debug, Output: &logs})
			extra := ""
			if oneshot {
				extra = "mode = \"oneshot\"\n"
			}
			cfg := sdkConfig(t, "raw", bin, extra)
			runDir := cfg.RuntimeDir
			before := snapshot(t)
			d, err := core.New(cfg, core.Options{Logger: log, Started: before.started.add})
			if err != nil {
				t.Fatalf("core.New: %v", err)
			}
			t.Cleanup(func() {
				d.Close()
				before.assertNoLeaks(t, runDir)
			})
			types := d.Types()
			if len(types) != 5 || types[4].Name != "raw.whoami" || types[4].Version != 1 || types[4].Description == "" {
				t.Errorf("described types: %+v", types)
			}

			var w struct {
				Hostname string `json:"hostname"`
				PID      int    `json:"pid"`
			}
			mustCall(t, d, target.PID(), "raw.whoami", `{}`, &w)
			if oneshot {
				if w.Hostname != "raw-target" {
					t.Errorf("oneshot handler saw hostname %q: not the target's", w.Hostname)
				}
				if n := len(d.Instances()); n != 0 {
					t.Errorf("oneshot left %d instances", n)
				}
			} else {
				h := servingPID(t, d, "raw")
				if c.inTarget {
					if w.Hostname != "raw-target" || w.PID == h {
						t.Errorf("handler saw hostname %q, pid %d (host pid %d): not the target's", w.Hostname, w.PID, h)
					}
					assertNamespaces(t, h, target.PID(), noUserNS)
				} else {
					if w.Hostname != host {
						t.Errorf("without the preamble the handler saw hostname %q, want the host's %q", w.Hostname, host)
					}
					assertNamespaces(t, h, target.PID(), nil)
				}
			}
			wantErrno(t, call(t, d, target.PID(), "raw.fail", `{}`, nil), syscall.ENOENT, "asked to fail")
			// A plugin that knows no direct channels answers the core's
			// request for one as any unknown type: EOPNOTSUPP, said so.
			if !oneshot {
				_, err := d.OpenChannel(context.Background(), core.Request{PID: target.PID(), Type: "raw.whoami"}, core.ChannelOptions{})
				wantErrno(t, err, syscall.EOPNOTSUPP, "raw.whoami", "serves no direct channels")
				mustCall(t, d, target.PID(), "raw.whoami", `{}`, nil)
			}

			// A response of several frames: part frames, then the final one.
			var big struct{ X string }
			mustCall(t, d, target.PID(), "raw.big", `{"n": 200000}`, &big)
			if len(big.X) != 200000 || strings.Trim(big.X, "x") != "" {
				t.Errorf("raw.big: %d bytes back, want 200000 x", len(big.X))
			}
			// A file handed back: the root the handler saw, close-on-exec.
			resp, err := d.Call(context.Background(), core.Request{PID: target.PID(), Type: "raw.open", Payload: json.RawMessage(`{}`)})
			if err != nil {
				t.Fatalf("raw.open: %v", err)
			}
			if len(resp.Files) != 1 {
				t.Fatalf("raw.open: %d files, want 1", len(resp.Files))
			}
			root := "/"
			if c.inTarget {
				root = fmt.Sprintf("/proc/%d/root/", target.PID())
			}
			var got, want syscall.Stat_t
			if err := syscall.Fstat(int(resp.Files[0].Fd()), &got); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Stat(root, &want); err != nil {
				t.Fatal(err)
			}
			if got.Dev != want.Dev || got.Ino != want.Ino {
				t.Errorf("raw.open handed back %d:%d, want %s, %d:%d", got.Dev, got.Ino, root, want.Dev, want.Ino)
			}
			if flags, err := unix.FcntlInt(resp.Files[0].Fd(), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC == 0 {
				t.Errorf("handed-back fd flags %#x, %v: want close-on-exec", flags, err)
			}
			resp.Files[0].Close()
			// A request that times out is cancelled with a cancel frame; a
			// handler that stops within the grace leaves its instance.
			serving := d.Instances()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			_, err = d.Call(ctx, core.Request{PID: target.PID(), Type: "raw.sleep", Payload: json.RawMessage(`{}`)})
			cancel()
			wantErrno(t, err, syscall.ETIMEDOUT, "timed out")
			if after := d.Instances(); !oneshot && (len(after) != 1 || len(serving) != 1 || after[0].PID != serving[0].PID) {
				t.Errorf("instances %v before a cancelled request that stopped, %v after: want the same one", serving, after)
			}

			start := time.Now()
			d.Close()
			took := time.Since(start)
			if took >= time.Second {
				t.Errorf("Close took %v: a serving process ends when its frame channel closes, controller or not", took)
			}
			out := logs.String()
			found := false
			for _, line := range strings.Split(out, "\n") {
				// Relayed fields come in no particular order; the
				// last one has no space after it.
				line += " "
				if regexp.MustCompile(`\[INFO\] +nsplug\.raw[.a-z]*: handling: `).MatchString(line) &&
					strings.Contains(line, " request_id=1 ") && strings.Contains(line, " target_pid="+strconv.Itoa(target.PID())+" ") {
					found = true
				}
			}
			if !found {
				t.Errorf("the plugin's JSON log line did not reach the core's log as info with its fields:\n%s", out)
			}
		})
	}
}

// The plugin written without the sdk takes from packages wire and
// wire/control only what protoc generated from plugin.proto and
// control/control.proto (the messages and the gRPC service glue), never wire's codec, limits or helpers: its frames are built from
// wire/README.md alone, so that the spec is checked by code that does not
// share ours.
func TestRawPluginUsesOnlyGeneratedWire(t *testing.T) {
	fset := token.NewFileSet()
	generated := map[string]bool{}
	pbs, err := filepath.Glob("../wire/*.pb.go")
	control, _ := filepath.Glob("../wire/control/*.pb.go")
	if err != nil || len(pbs) == 0 || len(control) == 0 {
		t.Fatalf("no generated files in wire/ and wire/control/: %v", err)
	}
	pbs = append(pbs, control...)
	for _, path := range pbs {
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for name, obj := range f.Scope.Objects {
			if ast.IsExported(name) && obj != nil {
				generated[name] = true
			}
		}
	}
	raws, err := filepath.Glob("testdata/rawplugin/*.go")
	if err != nil || len(raws) == 0 {
		t.Fatalf("no rawplugin sources: %v", err)
	}
	for _, path := range raws {
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			if p := strings.Trim(imp.Path.Value, `"`); strings.HasPrefix(p, "github.com/nsplug/nsplug/") &&
				p != "github.com/nsplug/nsplug/wire" && p != "github.com/nsplug/nsplug/wire/control" && p != "github.com/nsplug/nsplug/nsexec" {
				t.Errorf("%s imports %s: a plugin without the sdk takes only wire's generated code and the nsexec preamble", path, p)
			}
		}
		f, err = parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok {
				if x, ok := sel.X.(*ast.Ident); ok && (x.Name == "wire" || x.Name == "control") && !generated[sel.Sel.Name] {
					t.Errorf("%s: %s.%s is not generated from plugin.proto or control.proto", fset.Position(sel.Pos()), x.Name, sel.Sel.Name)
				}
			}
			return true
		})
	}
}

// Nothing in core/ or config/ knows a built-in plugin by name: no import of
// plugins/, no string naming one or one of its message types, no
// [[plugin]] entry for one in the embedded default configuration.
func TestCoreKnowsNoPluginByName(t *testing.T) {
	parallel(t)
	var names []string
	for _, p := range builtin.All() {
		names = append(names, p.Name)
	}
	files, err := filepath.Glob("../core/*.go")
	configFiles, err2 := filepath.Glob("../config/*.go")
	files = append(files, configFiles...)
	if err != nil || err2 != nil || len(configFiles) == 0 {
		t.Fatalf("core and config sources: %v %v %v", files, err, err2)
	}
	fset := token.NewFileSet()
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			if path, _ := strconv.Unquote(imp.Path.Value); strings.Contains(path, "/plugins/") {
				t.Errorf("%s imports %s", fset.Position(imp.Pos()), path)
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, _ := strconv.Unquote(lit.Value)
			for _, name := range names {
				if s == name || strings.HasPrefix(s, name+".") || strings.HasPrefix(s, "nsplug-"+name) {
					t.Errorf("%s: string %q names built-in plugin %s", fset.Position(lit.Pos()), s, name)
				}
			}
			return true
		})
	}
	toml, err := os.ReadFile("../config/default.toml")
	if err != nil {
		t.Fatal(err)
	}
	if regexp.MustCompile(`(?m)^\s*\[\[plugin\]\]`).Match(toml) {
		t.Errorf("config/default.toml has a [[plugin]] entry")
	}
}

// sdktest.Call runs handlers in-process the way the wire does.
func TestSdktestCall(t *testing.T) {
	probe := probePlugin("probe")
	w, err := sdktest.Call[empty, whoami](t, probe, "probe.whoami", empty{})
	if err != nil || w.PID != os.Getpid() {
		t.Errorf("whoami in-process: %+v %v", w, err)
	}
	_, err = sdktest.Call[errnoReq, empty](t, probe, "probe.errno", errnoReq{Errno: int(syscall.EACCES)})
	var se *sdk.Error
	if !errors.As(err, &se) || se.Errno != syscall.EACCES || !errors.Is(err, syscall.EACCES) {
		t.Errorf("errno: %T %v", err, err)
	}
	if _, err := sdktest.Call[empty, empty](t, probe, "probe.panic", empty{}); !errors.Is(err, syscall.EIO) {
		t.Errorf("panic: %v", err)
	}
	if _, err := sdktest.CallJSON(t, probe, "probe.whoami", `{"x":1}`); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("unknown field: %v", err)
	}
	if _, err := sdktest.CallJSON(t, probe, "probe.fly", `{}`); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("unserved type: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := sdktest.Call[empty, empty](t, probe, "probe.wait", empty{}, sdktest.Env{Context: ctx}); err == nil || ctx.Err() == nil {
		t.Errorf("wait with a deadline: %v", err)
	}

	// Options, allowed roots and the logger reach the handler's Env.
	type opts struct {
		Greeting string `json:"greeting"`
	}
	type req struct {
		Path string `json:"path"`
	}
	type resp struct {
		Greeting string `json:"greeting"`
		Path     string `json:"path"`
	}
	p := &sdk.Plugin{Name: "envy", Configure: sdk.TypedOptions(opts{}, nil), Handlers: []sdk.Handler{
		sdk.Handle("envy.check", "", func(ctx context.Context, r req) (resp, error) {
			env := sdk.EnvFrom(ctx)
			o := sdk.OptionsFrom[opts](ctx)
			path, err := env.CheckPath(r.Path)
			if err != nil {
				return resp{}, err
			}
			env.Log.Info("checked", "path", path)
			return resp{Greeting: o.Greeting, Path: path}, nil
		}),
	}}
	var logs sdkLogs
	env := sdktest.Env{
		Options:      map[string]any{"greeting": "hi"},
		AllowedRoots: []string{"/proc"},
		Log:          hclog.New(&hclog.LoggerOptions{Output: &logs}),
		RequestID:    "r-7",
		TargetPID:    4242,
	}
	got, err := sdktest.Call[req, resp](t, p, "envy.check", req{Path: "/proc/uptime"}, env)
	if err != nil || got.Greeting != "hi" || got.Path != "/proc/uptime" {
		t.Errorf("envy.check: %+v %v", got, err)
	}
	if out := logs.String(); !strings.Contains(out, "request_id=r-7") || !strings.Contains(out, "target_pid=4242") || !strings.Contains(out, "path=/proc/uptime") {
		t.Errorf("handler log: %s", out)
	}
	if _, err := sdktest.Call[req, resp](t, p, "envy.check", req{Path: "/etc/passwd"}, env); !errors.Is(err, syscall.EACCES) {
		t.Errorf("path outside allowed roots: %v", err)
	}
	env.Options = map[string]any{"greting": "hi"}
	if _, err := sdktest.Call[req, resp](t, p, "envy.check", req{Path: "/proc"}, env); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("misspelt option: %v", err)
	}
}

// sdktest.NewHarness runs a built plugin through the core against a
// target, and when the test ends leaves nothing running.
func TestSdktestHarness(t *testing.T) {
	self, _ := os.Executable() // serves the "extprobe" plugin when a core starts it
	var handler, targetPID int
	t.Run("harness", func(t *testing.T) {
		h := sdktest.NewHarness(t, sdktest.Config{
			PluginPath: self,
			Name:       "extprobe",
			Target:     sandbox.Options{Rootless: true, Hostname: "harnessed"},
			TOML:       "log_level = \"debug\"\n",
			PluginTOML: "request_timeout = \"300ms\"\n",
		})
		var w whoami
		if err := h.Call("extprobe.whoami", nil, &w); err != nil || w.Hostname != "harnessed" || w.UID != 0 {
			t.Errorf("whoami: %+v %v", w, err)
		}
		handler, targetPID = h.HandlerPID(), h.Target().PID()
		assertNamespaces(t, handler, targetPID, allNS)
		err := h.Call("extprobe.errno", errnoReq{Errno: int(syscall.EROFS)}, nil)
		var ce *core.Error
		if !errors.As(err, &ce) || ce.Errno != syscall.EROFS {
			t.Errorf("errno through the core: %v", err)
		}
		if err := h.Call("extprobe.hang", nil, nil); !errors.Is(err, syscall.ETIMEDOUT) {
			t.Errorf("hang with request_timeout 300ms: %v", err)
		}
		if raw, err := h.CallJSON("extprobe.whoami", `{"pid":1}`); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("unknown field: %s %v", raw, err)
		}
		if h.Name() != "extprobe" || h.SHA256() != sha256File(t, self) || !strings.Contains(h.ConfigText(), h.SHA256()) {
			t.Errorf("name %q sha256 %q config:\n%s", h.Name(), h.SHA256(), h.ConfigText())
		}
		found := false
		for _, e := range h.Logs() {
			if strings.Contains(e.Name, "extprobe") && e.Message == "plugin address" {
				found = true
			}
		}
		if !found {
			t.Errorf("the plugin's debug lines are not in Logs(): %v", h.Logs())
		}
	})
	if handler == 0 {
		t.FailNow()
	}
	for _, pid := range []int{handler, targetPID} {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !os.IsNotExist(err) {
			t.Errorf("pid %d still exists after the harness's test ended", pid)
		}
	}
}

// sdkRecorder is a testing.TB that records errors and cleanups instead of
// acting on them, to watch what a harness's cleanup reports.
type sdkRecorder struct {
	testing.TB
	mu       sync.Mutex
	errors   []string
	cleanups []func()
}

func (r *sdkRecorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func (r *sdkRecorder) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

// The harness's cleanup fails the test when a plugin process is left in
// the target or a file in runtime_dir.
func TestSdktestHarnessReportsLeftovers(t *testing.T) {
	self, _ := os.Executable()
	rec := &sdkRecorder{TB: t}
	h := sdktest.NewHarness(rec, sdktest.Config{PluginPath: self, Name: "extprobe"})
	if err := h.Call("extprobe.whoami", nil, nil); err != nil {
		t.Fatal(err)
	}
	// A stray file in runtime_dir.
	m := regexp.MustCompile(`(?m)^runtime_dir = "(.*)"$`).FindStringSubmatch(h.ConfigText())
	if m == nil {
		t.Fatalf("no runtime_dir in\n%s", h.ConfigText())
	}
	if err := os.WriteFile(filepath.Join(m[1], "stray.sock"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A process in the target's network namespace whose executable is a
	// memfd named like the core's sealed plugin copies.
	mem, err := unix.MemfdCreate("nsplug-stray", 0)
	if err != nil {
		t.Fatal(err)
	}
	memf := os.NewFile(uintptr(mem), "memfd")
	defer memf.Close()
	sleep, err := os.Open("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(memf, sleep)
	sleep.Close()
	stray := exec.Command("nsenter", "-t", strconv.Itoa(h.Target().PID()), "-n", "/proc/self/fd/3", "60")
	stray.ExtraFiles = []*os.File{memf}
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stray.Process.Kill()
		stray.Wait()
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", stray.Process.Pid))
		if strings.Contains(exe, "memfd:nsplug-stray") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stray process did not start: exe %q", exe)
		}
		time.Sleep(10 * time.Millisecond)
	}

	for i := len(rec.cleanups) - 1; i >= 0; i-- {
		rec.cleanups[i]()
	}
	all := strings.Join(rec.errors, "\n")
	for _, want := range []string{"stray.sock", fmt.Sprintf("pid %d", stray.Process.Pid), "net namespace"} {
		if !strings.Contains(all, want) {
			t.Errorf("the harness's cleanup did not report %q; it reported:\n%s", want, all)
		}
	}
	if len(rec.errors) != 2 {
		t.Errorf("want two reports, got %d:\n%s", len(rec.errors), all)
	}
}
