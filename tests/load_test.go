package tests

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// Loading plugins: what a bad plugin path, a broken plugin or a bad
// option does to the core (nothing to the other plugins), and what a
// plugin is given to describe itself (no privilege).

// pluginInfo is the entry of d.Plugins() named name.
func pluginInfo(t *testing.T, d *core.Dispatcher, name string) core.PluginInfo {
	t.Helper()
	for _, p := range d.Plugins() {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("no plugin %s in %+v", name, d.Plugins())
	return core.PluginInfo{}
}

func wantFailed(t *testing.T, d *core.Dispatcher, name string, fragments ...string) {
	t.Helper()
	p := pluginInfo(t, d, name)
	if p.Status != core.PluginFailed || len(p.Types) != 0 {
		t.Errorf("plugin %s: status %q, types %v; want failed and none", name, p.Status, p.Types)
	}
	for _, f := range fragments {
		if !strings.Contains(p.Error, f) {
			t.Errorf("plugin %s: error %q does not mention %q", name, p.Error, f)
		}
	}
}

// A FIFO at a plugin's path is refused at once (it used to block core.New
// in open(2) forever), and so is a huge sparse file, without copying it;
// max_plugin_bytes sets the bound.
func TestBadPluginPathsAreRefusedQuickly(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o755); err != nil {
		t.Fatal(err)
	}
	sparse := filepath.Join(dir, "sparse")
	if f, err := os.OpenFile(sparse, os.O_CREATE|os.O_WRONLY, 0o755); err != nil {
		t.Fatal(err)
	} else {
		f.Truncate(2 << 30)
		f.Close()
	}
	self, _ := os.Executable()
	small := filepath.Join(dir, "small")
	os.Symlink(self, small)
	// Opening the FIFO for writing releases an open(2) blocked on it.
	unblock := func() {
		if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
	}
	d, _, err := newCore(t, fmt.Sprintf(`
[[plugin]]
name = "fifo"
path = %q
types = ["fifo.read"]
[[plugin]]
name = "sparse"
path = %q
`, fifo, sparse), core.Options{}, 5*time.Second, unblock)
	if err != nil {
		t.Fatalf("core.New: %v", err)
	}
	wantFailed(t, d, "fifo", fifo, "not a regular file", "FIFO")
	wantFailed(t, d, "sparse", sparse, "2147483648 bytes", "max_plugin_bytes (268435456)")
	target := newTarget(t, sandbox.Options{MountProc: true})
	mustCall(t, d, target.PID(), "procfs.read", `{"path":"/proc/self/stat"}`, nil)
	wantErrno(t, call(t, d, target.PID(), "fifo.read", `{}`, nil), syscall.ENOPKG, "plugin fifo failed to load", "FIFO")

	// The bound is the configuration's; the test binary is larger than 1 KiB.
	d.Close()
	d, _, err = newCore(t, fmt.Sprintf("max_plugin_bytes = 1024\n[[plugin]]\nname = \"small\"\npath = %q\n", small), core.Options{}, 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantFailed(t, d, "small", "more than max_plugin_bytes (1024)")
}

// One broken plugin (a wrong sha256, a missing binary, a type it does not
// serve, a binary that is no plugin) leaves the others serving; Plugins
// says which failed and why, a request of its types names the failure,
// and fail_on_plugin_error makes it New's error instead.
func TestBrokenPluginsLeaveTheOthersServing(t *testing.T) {
	parallel(t)
	self, _ := os.Executable()
	conf := fmt.Sprintf(`
[[plugin]]
name = "badsum"
path = %[1]q
sha256 = "%[2]s"
[[plugin]]
name = "gone"
path = "/nonexistent/plugin"
types = ["gone.read"]
[[plugin]]
name = "mismatch"
path = %[1]q
types = ["extprobe.whoami", "extprobe.fly"]
[[plugin]]
name = "noplugin"
path = "/bin/true"
[[plugin]]
name = "extprobe"
path = %[1]q
[[plugin]]
name = "nosuch"
`, self, strings.Repeat("0", 64))
	d, _, err := newCore(t, conf, core.Options{}, 30*time.Second, nil)
	if err != nil {
		t.Fatalf("core.New: %v", err)
	}
	wantFailed(t, d, "badsum", "sha256 of "+self, strings.Repeat("0", 64))
	wantFailed(t, d, "gone", "/nonexistent/plugin", "no such file")
	wantFailed(t, d, "mismatch", `"extprobe.fly"`, "does not serve")
	wantFailed(t, d, "noplugin", "starting plugin noplugin")
	// Each failure found at load names the key of the configuration it is
	// about, with file and line.
	wantFailed(t, d, "badsum", `test.toml:6: key "plugin.sha256" in plugin #1 "badsum"`)
	wantFailed(t, d, "gone", `test.toml:9: key "plugin.path" in plugin #2 "gone"`)
	wantFailed(t, d, "mismatch", `test.toml:14: key "plugin.types" in plugin #3 "mismatch"`)
	wantFailed(t, d, "nosuch", `test.toml:22: key "plugin.name" in plugin #6 "nosuch"`, "no built-in plugin of that name")
	for _, name := range []string{"procfs", "extprobe"} {
		if p := pluginInfo(t, d, name); p.Status != core.PluginOK || p.Error != "" || len(p.Types) == 0 {
			t.Errorf("plugin %s: %+v", name, p)
		}
	}

	target := newTarget(t, sandbox.Options{MountProc: true, Hostname: "served"})
	var w whoami
	mustCall(t, d, target.PID(), "extprobe.whoami", `{}`, &w)
	if w.Hostname != "served" {
		t.Errorf("extprobe saw hostname %q", w.Hostname)
	}
	mustCall(t, d, target.PID(), "procfs.read", `{"path":"/proc/self/stat"}`, nil)
	wantErrno(t, call(t, d, target.PID(), "gone.read", `{}`, nil), syscall.ENOPKG, "plugin gone failed to load", "no such file")
	wantErrno(t, call(t, d, target.PID(), "extprobe.fly", `{}`, nil), syscall.ENOPKG, "plugin mismatch failed to load", "does not serve")
	// A type of no known plugin hints at the plugins whose types are
	// unknown because they failed.
	wantErrno(t, call(t, d, target.PID(), "noplugin.x", `{}`, nil), syscall.EOPNOTSUPP, "unknown message type", "plugin noplugin, which may serve it, failed to load")
	wantErrno(t, call(t, d, target.PID(), "other.x", `{}`, nil), syscall.EOPNOTSUPP, "failed to load", "badsum", "noplugin")

	// The operator's choice: any plugin error fails start-up.
	cfg, err := config.Parse([]byte(fmt.Sprintf("runtime_dir = %q\nfail_on_plugin_error = true\n%s", t.TempDir(), conf)), "test.toml")
	if err != nil {
		t.Fatal(err)
	}
	if d, err := core.New(cfg, core.Options{Builtins: testBuiltins()}); err == nil || !strings.Contains(err.Error(), `in plugin #1 "badsum"`) {
		if d != nil {
			d.Close()
		}
		t.Errorf("fail_on_plugin_error: core.New: %v", err)
	}
}

// Options are checked when the plugin is loaded, by the plugin's own hook,
// and a bad one names the file and line of the option: for a built-in (in
// the core) and for an external plugin (where it describes itself).
func TestPluginOptionsAreCheckedAtLoad(t *testing.T) {
	parallel(t)
	self, _ := os.Executable()
	d, _, err := newCore(t, fmt.Sprintf(`
[[plugin]]
name = "procfs"
[plugin.options]
max_read_bytes = -1
[[plugin]]
name = "ids"
[plugin.options]
passwd_file = "/etc/passwd"
pasword_file = "/etc/x"
[[plugin]]
name = "extprobe"
path = %q
[plugin.options]
start_delay_ms = "soon"
`, self), core.Options{}, 30*time.Second, nil)
	if err != nil {
		t.Fatalf("core.New: %v", err)
	}
	wantFailed(t, d, "procfs", `test.toml:6: key "plugin.options.max_read_bytes" in plugin #1 "procfs"`, "got -1")
	wantFailed(t, d, "ids", `test.toml:11: key "plugin.options.pasword_file"`, "unknown option", "passwd_file")
	wantFailed(t, d, "extprobe", `test.toml:16: key "plugin.options.start_delay_ms" in plugin #3 "extprobe"`, "expected int")
	target := newTarget(t, sandbox.Options{MountProc: true})
	wantErrno(t, call(t, d, target.PID(), "procfs.read", `{"path":"/proc/self/stat"}`, nil), syscall.ENOPKG, "plugin procfs failed to load", "test.toml:6:", "max_read_bytes")
	mustCall(t, d, target.PID(), "sysctl.get", `{"name":"kernel.hostname"}`, nil)

	// Good options reach the handlers.
	d.Close()
	d, _, err = newCore(t, "[[plugin]]\nname = \"procfs\"\n[plugin.options]\nmax_read_bytes = 10\n", core.Options{}, 10*time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantErrno(t, call(t, d, target.PID(), "procfs.read", `{"path":"/proc/self/stat"}`, nil), syscall.EFBIG, "max_read_bytes (10)")
}

// An external plugin describes itself with nothing serving does not need:
// seen from the host, its process is uid 65534, not root, in none of the
// host's namespaces, with an empty root directory. (Serial: the watcher
// takes any child process of that name, and parallel tests start
// extprobe processes of their own.)
func TestDescribeRunsUnprivileged(t *testing.T) {
	self, _ := os.Executable()
	seen := make(chan describeProcess, 1)
	go func() { seen <- watchDescribe("nsplug-extprobe", 10*time.Second) }()
	// The probe waits 1.5 s before serving: time to look at it.
	d, _, err := newCore(t, fmt.Sprintf("[[plugin]]\nname = \"extprobe\"\npath = %q\n[plugin.options]\nstart_delay_ms = 1500\n", self), core.Options{}, 20*time.Second, nil)
	if err != nil {
		t.Fatalf("core.New: %v", err)
	}
	p := <-seen
	if p.pid == 0 {
		t.Fatal("saw no describing extprobe process")
	}
	for _, field := range []string{"Uid", "Gid"} {
		if got := statusField(p.status, field); got != "65534\t65534\t65534\t65534" {
			t.Errorf("describing process %s: %q, want 65534 (nobody) throughout", field, got)
		}
	}
	if len(p.root) != 0 {
		t.Errorf("describing process's root holds %v, want an empty directory", p.root)
	}
	for _, ns := range []string{"user", "mnt", "pid", "net", "ipc", "uts", "cgroup"} {
		if p.ns[ns] == ownNSInode(t, ns) {
			t.Errorf("describing process is in the host's %s namespace", ns)
		}
	}
	waitGone(t, p.pid, 5*time.Second)
	if info := pluginInfo(t, d, "extprobe"); info.Status != core.PluginOK || len(info.Types) == 0 {
		t.Fatalf("extprobe: %+v", info)
	}
	// Serving, it is the target's root as before.
	target := newTarget(t, sandbox.Options{Hostname: "after-describe"})
	var w whoami
	mustCall(t, d, target.PID(), "extprobe.whoami", `{}`, &w)
	if w.UID != 0 || w.Hostname != "after-describe" {
		t.Errorf("serving: %+v", w)
	}
}

// describeProcess is what the host sees of a plugin process.
type describeProcess struct {
	pid    int
	status string
	root   []string
	ns     map[string]uint64
}

// watchDescribe waits for a child of this process whose argv[0] is name,
// then (once its constructor has chrooted it) records what it is.
func watchDescribe(name string, within time.Duration) describeProcess {
	var p describeProcess
	deadline := time.Now().Add(within)
	for p.pid == 0 && time.Now().Before(deadline) {
		for _, kid := range childrenOf(os.Getpid()) {
			if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", kid)); strings.HasPrefix(string(cmd), name+"\x00") {
				p.pid = kid
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if p.pid == 0 {
		return p
	}
	for i := 0; i < 100; i++ {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
		p.status = string(data)
		p.root = nil
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/root", p.pid))
		for _, e := range ents {
			p.root = append(p.root, e.Name())
		}
		if err == nil && len(ents) == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.ns = make(map[string]uint64)
	for _, ns := range allNS {
		var st unix.Stat_t
		if unix.Stat(fmt.Sprintf("/proc/%d/ns/%s", p.pid, ns), &st) == nil {
			p.ns[ns] = st.Ino
		}
	}
	return p
}

// statusField is the value of a /proc/PID/status line.
func statusField(status, name string) string {
	sc := bufio.NewScanner(strings.NewReader(status))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && k == name {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
