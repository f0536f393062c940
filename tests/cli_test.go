package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/wire"
)

// runCLI runs bin/nsplug with args; it returns stdout, stderr and the exit code.
func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return runNsplug(t, nil, nil, args...)
}

// cliConfig writes a config file with its own runtime_dir.
func cliConfig(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "nsplug.toml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf("runtime_dir = %q\n%s", filepath.Join(dir, "run"), body)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCLICallPrintsJSONAndLeavesNothing(t *testing.T) {
	for _, kind := range []struct {
		name string
		opts sandbox.Options
		conf string
	}{
		{"container", sandbox.Options{Hostname: "cli-ctr", MountProc: true}, ""},
		{"rootless", sandbox.Options{Hostname: "cli-rootless", Rootless: true, MountProc: true}, ""},
		{"scratch", sandbox.Options{Hostname: "cli-scratch", Rootless: true, Scratch: true}, "[[plugin]]\nname = \"procfs\"\nfresh_mounts = [\"proc\"]\n"},
	} {
		t.Run(kind.name, func(t *testing.T) {
			target := newTarget(t, kind.opts)
			conf := cliConfig(t, kind.conf)
			stdout, stderr, code := runCLI(t, "call", "--config", conf, "--pid", strconv.Itoa(target.PID()),
				"procfs.read", `{"path":"/proc/sys/kernel/hostname"}`)
			if code != 0 {
				t.Fatalf("exit %d, stderr: %s", code, stderr)
			}
			var resp struct{ Data []byte }
			if err := json.Unmarshal([]byte(stdout), &resp); err != nil || string(resp.Data) != kind.opts.Hostname+"\n" {
				t.Errorf("stdout %q (%v)", stdout, err)
			}
			if procs := processesInPIDNamespaceOf(t, target.PID()); len(procs) != 1 {
				t.Errorf("processes in the target after nsplug call returned: %v", procs)
			}
			left, _ := filepath.Glob(filepath.Join(filepath.Dir(conf), "run", "*"))
			if len(left) != 0 {
				t.Errorf("left in runtime_dir: %v", left)
			}
		})
	}
}

func TestCLIErrors(t *testing.T) {
	target := newTarget(t, sandbox.Options{MountProc: true})
	pid := strconv.Itoa(target.PID())
	conf := cliConfig(t, "")
	bad := cliConfig(t, "[defaults]\nmode = \"pooled\"\nidle_timeout = 30\n")
	cases := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"missing file", []string{"call", "--config", conf, "--pid", pid, "procfs.read", `{"path":"/proc/nope"}`}, 1, []string{"ENOENT", "/proc/nope"}},
		{"dead pid", []string{"call", "--config", conf, "--pid", "1073741824", "procfs.read", `{}`}, 1, []string{"ESRCH", "1073741824"}},
		{"unknown type", []string{"call", "--config", conf, "--pid", pid, "procfs.fly"}, 1, []string{"ENOTSUP", "procfs.fly"}},
		{"malformed payload", []string{"call", "--config", conf, "--pid", pid, "procfs.read", `{"path"`}, 1, []string{"EINVAL", "JSON"}},
		{"bad toml", []string{"call", "--config", bad, "--pid", pid, "procfs.read", `{}`}, 1, []string{"nsplug.toml:4", "idle_timeout"}},
		{"missing config", []string{"call", "--config", "/nonexistent.toml", "--pid", pid, "procfs.read"}, 1, []string{"/nonexistent.toml"}},
		{"no pid", []string{"call", "procfs.read"}, 2, []string{"--pid"}},
		{"bad namespace", []string{"call", "--config", conf, "--pid", pid, "--ns", "net,bogus", "procfs.read", `{"path":"/proc/version"}`}, 1, []string{"bogus"}},
		{"unknown command", []string{"fly"}, 2, []string{"fly"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			stdout, stderr, code := runCLI(t, c.args...)
			if code != c.code {
				t.Errorf("exit %d, want %d; stderr %q", code, c.code, stderr)
			}
			if stdout != "" {
				t.Errorf("stdout on error: %q", stdout)
			}
			first := strings.SplitN(stderr, "\n", 2)[0]
			if c.code == 1 && strings.Count(stderr, "\n") != 1 {
				t.Errorf("want one line on stderr, got %q", stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(first, w) {
					t.Errorf("stderr %q does not mention %q", first, w)
				}
			}
		})
	}
}

func TestCLIPlugins(t *testing.T) {
	conf := cliConfig(t, "")
	stdout, stderr, code := runCLI(t, "plugins", "--config", conf)
	if code != 0 || !strings.Contains(stdout, "procfs.read") || !strings.Contains(stdout, "built-in") {
		t.Errorf("exit %d\n%s\n%s", code, stdout, stderr)
	}
	stdout, _, code = runCLI(t, "plugins", "--json", "--config", conf)
	var out struct {
		ProtocolVersion int `json:"protocol_version"`
		Plugins         []struct {
			Name  string
			Types []struct {
				Name        string
				Version     int
				Description string
			}
		}
	}
	if err := json.Unmarshal([]byte(stdout), &out); err != nil || code != 0 || out.ProtocolVersion != wire.ProtocolVersion {
		t.Fatalf("plugins --json: %v %s", err, stdout)
	}
	found := false
	for _, p := range out.Plugins {
		for _, ty := range p.Types {
			if ty.Name == "procfs.stat" && ty.Version == 1 && ty.Description != "" {
				found = true
			}
		}
	}
	if !found {
		t.Errorf("procfs.stat missing from %s", stdout)
	}
}

func TestCLIDemo(t *testing.T) {
	stdout, stderr, code := runCLI(t, "demo")
	if code != 0 {
		t.Fatalf("demo exit %d: %s", code, stderr)
	}
	for _, want := range []string{"demo-container", "hello from inside the container", "ENOENT", "handlers gone: true, target gone: true, runtime dir entries left: 0"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("demo output lacks %q:\n%s", want, stdout)
		}
	}
}

func TestCLIPayloadFromStdin(t *testing.T) {
	target := newTarget(t, sandbox.Options{Hostname: "from-stdin"})
	cmd := exec.Command(nsplugBin, "call", "--config", cliConfig(t, ""), "--pid", strconv.Itoa(target.PID()), "sysctl.get", "-")
	cmd.Stdin = strings.NewReader(`{"name":"kernel.hostname"}`)
	out, err := cmd.Output()
	if err != nil || !strings.Contains(string(out), `"from-stdin"`) {
		t.Errorf("payload on stdin: %v: %s", err, out)
	}
}

// nsplug plugins with a broken plugin in the configuration shows it as
// failed, with its error, and the others as ok, and exits 0: the core
// serves. A FIFO as a plugin's path does not make it hang.
func TestCLIPluginsShowsFailedPlugins(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := cliConfig(t, fmt.Sprintf("[[plugin]]\nname = \"fifo\"\npath = %q\n[[plugin]]\nname = \"procfs\"\n[plugin.options]\nmax_read_bytes = -1\n", fifo))
	stdout, stderr, code := runCLI(t, "plugins", "--config", conf)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	for _, want := range []string{"fifo  ", `nsplug.toml:4: key "plugin.path" in plugin #1 "fifo": ` + fifo + " is not a regular file (a FIFO)", "nsplug.toml:8: key \"plugin.options.max_read_bytes\"", "ids.user"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout does not mention %q:\n%s", want, stdout)
		}
	}
	stdout, _, code = runCLI(t, "plugins", "--json", "--config", conf)
	var out struct{ Plugins []core.PluginInfo }
	if err := json.Unmarshal([]byte(stdout), &out); err != nil || code != 0 {
		t.Fatalf("plugins --json: exit %d, %v\n%s", code, err, stdout)
	}
	status := make(map[string]string)
	for _, p := range out.Plugins {
		status[p.Name] = p.Status + ": " + p.Error
	}
	if !strings.HasPrefix(status["fifo"], "failed: ") || !strings.HasPrefix(status["procfs"], "failed: ") || status["ids"] != "ok: " {
		t.Errorf("plugins --json: %v", status)
	}
	// A call to a healthy plugin is served; one to the failed plugin's
	// type names why it failed.
	target := newTarget(t, sandbox.Options{MountProc: true})
	if _, stderr, code := runCLI(t, "call", "--config", conf, "--pid", strconv.Itoa(target.PID()), "ids.user", `{"id":0}`); code != 0 {
		t.Errorf("ids.user: exit %d: %s", code, stderr)
	}
	_, stderr, code = runCLI(t, "call", "--log-level", "off", "--config", conf, "--pid", strconv.Itoa(target.PID()), "procfs.read", `{"path":"/proc/uptime"}`)
	if code != 1 || !strings.Contains(stderr, "ENOPKG") || !strings.Contains(stderr, "nsplug.toml:8") {
		t.Errorf("procfs.read: exit %d: %s", code, stderr)
	}
}

// A request whose plugin cannot start prints exactly one line on stderr
// at the default log level: the error, not go-plugin's account of the
// process's exit nor the lines of its messages.
func TestCLIStartFailuresAreOneLine(t *testing.T) {
	target := newTarget(t, sandbox.Options{MountProc: true})
	pid := strconv.Itoa(target.PID())
	zombie := exec.Command("sh", "-c", "sleep 0 & exec sleep 60")
	if err := zombie.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { zombie.Process.Kill(); zombie.Wait() }()
	var zpid string
	for deadline := time.Now().Add(5 * time.Second); zpid == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		kids := childrenOf(zombie.Process.Pid)
		if len(kids) == 1 {
			if stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", kids[0])); strings.Contains(string(stat), ") Z ") {
				zpid = strconv.Itoa(kids[0])
			}
		}
	}
	if zpid == "" {
		t.Fatal("no zombie")
	}
	conf := cliConfig(t, "")
	read := []string{"procfs.read", `{"path":"/proc/version"}`}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"plugin exits at start", []string{"--config", cliConfig(t, "[[plugin]]\nname = \"x\"\npath = \"/bin/false\"\ntypes = [\"x.y\"]\n"), "--pid", pid, "x.y"}, "exit status 1"},
		{"root that does not exist", append([]string{"--config", conf, "--pid", pid, "--root", "/nonexistent"}, read...), "credentials' root"},
		{"cwd that does not exist", append([]string{"--config", conf, "--pid", pid, "--cwd", "/nonexistent"}, read...), "/nonexistent"},
		{"start timeout", append([]string{"--config", cliConfig(t, "[defaults]\nstart_timeout = \"1ns\"\n"), "--pid", pid}, read...), "timeout"},
		{"target died", append([]string{"--config", conf, "--pid", zpid}, read...), "ESRCH"},
		{"bad config", append([]string{"--config", cliConfig(t, "[defaults]\nfresh_mounts = [\"dev\"]\n"), "--pid", pid}, read...), "fresh_mounts"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			stdout, stderr, code := runCLI(t, append([]string{"call"}, c.args...)...)
			if code != 1 || stdout != "" {
				t.Errorf("exit %d, stdout %q", code, stdout)
			}
			if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "nsplug: ") || !strings.Contains(stderr, c.want) {
				t.Errorf("want one line mentioning %q on stderr, got:\n%s", c.want, stderr)
			}
		})
	}
}

// A plugin that fails to load does not make every call noisy: a call
// served by another plugin prints nothing on stderr, at the default log
// level; a call of the failed plugin's type prints one line, its own
// error, naming the load failure. `plugins` lists it, and --log-level
// debug still shows the load failure as it happened.
func TestCLIFailedPluginIsQuietUnlessCalled(t *testing.T) {
	conf := cliConfig(t, fmt.Sprintf(`[[plugin]]
name = "gone"
path = "/nonexistent/plugin"
types = ["gone.read"]
[[plugin]]
name = "badsum"
path = "/bin/true"
sha256 = %q
types = ["badsum.x"]
`, strings.Repeat("0", 64)))
	target := newTarget(t, sandbox.Options{MountProc: true})
	pid := strconv.Itoa(target.PID())
	stdout, stderr, code := runCLI(t, "call", "--config", conf, "--pid", pid, "ids.user", `{"id":0}`)
	if code != 0 || stderr != "" || !strings.Contains(stdout, `"name"`) {
		t.Errorf("ids.user: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	for _, c := range []struct{ typ, plugin, why string }{
		{"gone.read", "gone", "no such file"},
		{"badsum.x", "badsum", "sha256"},
	} {
		stdout, stderr, code := runCLI(t, "call", "--config", conf, "--pid", pid, c.typ, `{}`)
		if code != 1 || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "nsplug: ") ||
			!strings.Contains(stderr, "plugin "+c.plugin+" failed to load") || !strings.Contains(stderr, c.why) || !strings.Contains(stderr, "ENOPKG") {
			t.Errorf("%s: exit %d, stdout %q, want one line naming the load failure on stderr, got %q", c.typ, code, stdout, stderr)
		}
	}
	stdout, stderr, code = runCLI(t, "plugins", "--config", conf)
	if code != 0 || !strings.Contains(stdout, `nsplug.toml:4: key "plugin.path" in plugin #1 "gone": open /nonexistent/plugin`) || !strings.Contains(stdout, `key "plugin.sha256" in plugin #2 "badsum": sha256 of /bin/true`) {
		t.Errorf("plugins: exit %d, stdout:\n%s\nstderr %q", code, stdout, stderr)
	}
	_, stderr, code = runCLI(t, "call", "--log-level", "debug", "--config", conf, "--pid", pid, "ids.user", `{"id":0}`)
	if code != 0 || !strings.Contains(stderr, "[DEBUG] nsplug: plugin failed to load") || !strings.Contains(stderr, "plugin=gone") {
		t.Errorf("ids.user at debug: exit %d, stderr:\n%s", code, stderr)
	}
}

// What root runs is root's alone. A configuration file that others may
// write is refused, naming it (whoever can write it decides what nsplug
// runs as root and who may call it), and so is a third-party plugin
// executable without sha256 that others may write: it is shown as failed
// at its path key, and loads once its content is pinned with sha256.
func TestRootRunsOnlyWhatOthersCannotWrite(t *testing.T) {
	parallel(t)
	conf := cliConfig(t, "")
	os.Chmod(conf, 0o666)
	_, stderr, code := runNsplug(t, nil, nil, "plugins", "--config", conf)
	if code == 0 || !strings.Contains(stderr, "refusing "+conf) || !strings.Contains(stderr, "writable by group or others") {
		t.Errorf("a configuration others may write: exit %d, %s", code, stderr)
	}
	serveConf := daemonConfig(t, "", "")
	os.Chmod(filepath.Dir(serveConf), 0o777)
	_, stderr, code = runNsplug(t, nil, nil, "serve", "--config", serveConf)
	if code == 0 || !strings.Contains(stderr, "refusing "+serveConf) || !strings.Contains(stderr, "is writable by group or others") {
		t.Errorf("serve, with a configuration in a directory others may write: exit %d, %s", code, stderr)
	}

	dir := t.TempDir()
	plugin := filepath.Join(dir, "extprobe")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	writeExecutable(t, plugin, data, 0o775)
	entry := fmt.Sprintf("[[plugin]]\nname = \"extprobe\"\npath = %q\n", plugin)
	out, _, code := runNsplug(t, nil, nil, "plugins", "--json", "--config", cliConfig(t, entry))
	if code != 0 || !strings.Contains(out, "refusing "+plugin) || !strings.Contains(out, "writable by group or others") || !strings.Contains(out, "sha256") {
		t.Errorf("a plugin others may write: exit %d, %s", code, out)
	}
	pinned := entry + fmt.Sprintf("sha256 = %q\n", sha256File(t, plugin))
	out, _, code = runNsplug(t, nil, nil, "plugins", "--json", "--config", cliConfig(t, pinned))
	if code != 0 || strings.Contains(out, "refusing") || !strings.Contains(out, `"extprobe`) {
		t.Errorf("the same plugin pinned with sha256: exit %d, %s", code, out)
	}
}
