package tests

// What a new plugin author stumbled on (issue 9, item 6): the sdk's
// bounded read, the fresh cgroup2 mount, the target's pid in its own pid
// namespace, the start error of a plugin that never calls sdk.Serve or
// prints before it, and a panicking handler's stack in the log.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/sdk"
)

type authorPIDs struct {
	TargetPID   int `json:"target_pid"`
	TargetNSPID int `json:"target_ns_pid"`
}

type authorRead struct {
	Path string `json:"path"`
	Max  int64  `json:"max"`
}

type authorCgroup struct {
	// Dir is a cgroup as the target names it ("/inner"), relative to its
	// cgroup namespace's root.
	Dir string `json:"dir"`
}

type authorCgroupResp struct {
	RootIno     uint64 `json:"root_ino"`      // of Env.Cgroup's root
	Controllers string `json:"controllers"`   // its cgroup.controllers
	Procs       []int  `json:"procs"`         // Dir's cgroup.procs
	NSPID       int    `json:"target_ns_pid"` // Env.TargetNSPID, to compare
}

// authorPlugin is a test built-in written as a new author would write one.
func authorPlugin() *sdk.Plugin {
	return &sdk.Plugin{
		Name: "author",
		Handlers: []sdk.Handler{
			sdk.Handle("author.pids", "the target's pid as the core and as its own pid namespace see it",
				func(ctx context.Context, _ empty) (authorPIDs, error) {
					env := sdk.EnvFrom(ctx)
					return authorPIDs{TargetPID: env.TargetPID, TargetNSPID: env.TargetNSPID}, nil
				}),
			sdk.Handle("author.read", "read a file with Env.ReadFile", func(ctx context.Context, r authorRead) (struct {
				Data string `json:"data"`
			}, error) {
				data, err := sdk.EnvFrom(ctx).ReadFile(r.Path, r.Max)
				return struct {
					Data string `json:"data"`
				}{string(data)}, err
			}),
			sdk.Handle("author.cgroup", "look at the fresh cgroup2 mount", authorCgroupHandler),
			sdk.Handle("author.panic", "panic in a named function", authorPanickingHandler),
		},
	}
}

func authorCgroupHandler(ctx context.Context, r authorCgroup) (authorCgroupResp, error) {
	env := sdk.EnvFrom(ctx)
	if env.Cgroup == nil {
		return authorCgroupResp{}, sdk.Errorf(syscall.ENOENT, "no fresh cgroup mount (Env.Cgroup is nil)")
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(env.Cgroup.Fd()), &st); err != nil {
		return authorCgroupResp{}, err
	}
	controllers, err := env.ReadFile("/sys/fs/cgroup/cgroup.controllers", 4096)
	if err != nil {
		return authorCgroupResp{}, err
	}
	procs, err := env.ReadFile(filepath.Join("/sys/fs/cgroup", r.Dir, "cgroup.procs"), 1<<20)
	if err != nil {
		return authorCgroupResp{}, err
	}
	resp := authorCgroupResp{RootIno: st.Ino, Controllers: string(controllers), Procs: []int{}, NSPID: env.TargetNSPID}
	for _, f := range strings.Fields(string(procs)) {
		n, _ := strconv.Atoi(f)
		resp.Procs = append(resp.Procs, n)
	}
	return resp, nil
}

func authorPanickingHandler(context.Context, empty) (empty, error) {
	var m map[string]int
	m["boom"]++ // assignment to entry in nil map
	return empty{}, nil
}

// Env.TargetNSPID is the target's pid as its own pid namespace numbers
// it: 1 for a target that is its pid namespace's init (as the target
// itself sees, from the host through nsenter), the host pid for one that
// shares the core's pid namespace.
func TestTargetNSPID(t *testing.T) {
	parallel(t)
	inPIDNS := newTarget(t, sandbox.Options{MountProc: true})
	sharing := newTarget(t, sandbox.Options{Namespaces: []string{"uts"}})
	d, _ := newDispatcher(t, "")

	// The target's own view: its /proc (a procfs of its pid namespace)
	// names it by that pid.
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(inPIDNS.PID()), "-m", "-p", "readlink", "/proc/"+strconv.Itoa(1)+"/exe").CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter: %v: %s", err, out)
	}
	own, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", inPIDNS.PID()))
	if err != nil || strings.TrimSpace(string(out)) != own {
		t.Fatalf("pid 1 of the target's pid namespace is %q, the target is %q (%v): the test proves nothing", out, own, err)
	}
	var p authorPIDs
	mustCall(t, d, inPIDNS.PID(), "author.pids", `{}`, &p)
	if p.TargetPID != inPIDNS.PID() || p.TargetNSPID != 1 {
		t.Errorf("target in its own pid namespace: TargetPID %d TargetNSPID %d, want %d and 1", p.TargetPID, p.TargetNSPID, inPIDNS.PID())
	}
	mustCall(t, d, sharing.PID(), "author.pids", `{}`, &p)
	if p.TargetPID != sharing.PID() || p.TargetNSPID != sharing.PID() {
		t.Errorf("target sharing the core's pid namespace: TargetPID %d TargetNSPID %d, want %d twice", p.TargetPID, p.TargetNSPID, sharing.PID())
	}
}

// Env.ReadFile through the real core: beneath the fresh procfs (whose
// files say they are empty) and in the target's filesystem, bounded, and
// refusing what is not a regular file without opening it.
func TestEnvReadFile(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Hostname: "reader", Files: map[string]string{"/mnt/small": "hello"}})
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"author\"\nfresh_mounts = [\"proc\"]\n")
	pid := target.PID()
	var r struct {
		Data string `json:"data"`
	}
	mustCall(t, d, pid, "author.read", `{"path":"/proc/sys/kernel/hostname","max":100}`, &r)
	if r.Data != "reader\n" {
		t.Errorf("hostname through the fresh procfs: %q", r.Data)
	}
	mustCall(t, d, pid, "author.read", `{"path":"/mnt/small","max":5}`, &r)
	if r.Data != "hello" {
		t.Errorf("/mnt/small: %q", r.Data)
	}
	wantErrno(t, call(t, d, pid, "author.read", `{"path":"/mnt/small","max":4}`, nil), syscall.EFBIG, "/mnt/small", "4-byte limit")
	wantErrno(t, call(t, d, pid, "author.read", `{"path":"/proc/sys/kernel/hostname","max":3}`, nil), syscall.EFBIG, "3-byte limit")
	wantErrno(t, call(t, d, pid, "author.read", `{"path":"/mnt","max":5}`, nil), syscall.EISDIR, "/mnt")
	wantErrno(t, call(t, d, pid, "author.read", `{"path":"/mnt/none","max":5}`, nil), syscall.ENOENT, "/mnt/none")
	wantErrno(t, call(t, d, pid, "author.read", `{"path":"/mnt/small","max":0}`, nil), syscall.EINVAL, "limit 0")
	fifo := filepath.Join(target.Root(), "mnt/fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	wantErrno(t, call(t, d, pid, "author.read", `{"path":"/mnt/fifo","max":5}`, nil), syscall.EINVAL, "/mnt/fifo", "not a regular file", "FIFO")
	if time.Since(start) > 5*time.Second {
		t.Errorf("a FIFO took %v", time.Since(start))
	}
}

// cgroup2Mount is where this host mounts the cgroup2 hierarchy, and this
// process's cgroup in it.
func cgroup2Mount(t *testing.T) (mount, self string) {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SOURCE OPTS
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if fields := strings.Fields(pre); ok && strings.HasPrefix(post, "cgroup2 ") && len(fields) >= 5 && fields[3] == "/" {
			mount = fields[4]
			break
		}
	}
	if mount == "" {
		t.Fatal("no cgroup2 hierarchy mounted on this host")
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return mount, rest
		}
	}
	t.Fatal("this process is in no cgroup2 cgroup")
	return "", ""
}

// fresh_mounts = ["cgroup"]: Env.Cgroup is a cgroup2 mount rooted at the
// root of the target's cgroup namespace (not the host's tree), where the
// target's cgroup lists the target by its pid in its own pid namespace.
func TestFreshCgroupMount(t *testing.T) {
	parallel(t)
	mount, self := cgroup2Mount(t)
	root := filepath.Join(mount, self, fmt.Sprintf("nsplug-test-%d", os.Getpid()))
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(filepath.Join(root, "inner"))
		os.Remove(root)
	})
	dir, err := os.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	// The target: a process started in cgroup root that unshares its
	// cgroup namespace (rooted there) and a pid namespace whose init
	// then moves on into root/inner.
	cmd := exec.Command("unshare", "--cgroup", "--pid", "--fork", "--kill-child", "sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd()), Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	var pid int
	waitFor(t, "the target to start", func() bool {
		kids := childrenOf(cmd.Process.Pid)
		if len(kids) == 1 {
			pid = kids[0]
		}
		return pid != 0
	})
	if err := os.Mkdir(filepath.Join(root, "inner"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "inner", "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		t.Fatal(err)
	}
	// The target's own view of its cgroup: "/inner", below its
	// namespace's root.
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-C", "cat", fmt.Sprintf("/proc/%d/cgroup", pid)).CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter: %v: %s", err, out)
	}
	var own string
	for _, line := range strings.Split(string(out), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			own = rest
		}
	}
	if own != "/inner" {
		t.Fatalf("the target sees itself in cgroup %q, want /inner:\n%s", own, out)
	}

	d, _ := newDispatcher(t, "[[plugin]]\nname = \"author\"\nfresh_mounts = [\"cgroup\"]\n")
	var resp authorCgroupResp
	mustCall(t, d, pid, "author.cgroup", fmt.Sprintf(`{"dir":%q}`, own), &resp)
	var st, hostRoot unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(mount, &hostRoot); err != nil {
		t.Fatal(err)
	}
	if resp.RootIno != st.Ino || resp.RootIno == hostRoot.Ino {
		t.Errorf("Env.Cgroup's root is inode %d; the target's cgroup namespace root is %d, the host's cgroup2 root %d", resp.RootIno, st.Ino, hostRoot.Ino)
	}
	if len(resp.Procs) != 1 || resp.Procs[0] != 1 || resp.NSPID != 1 {
		t.Errorf("%s/cgroup.procs through Env.Cgroup lists %v (TargetNSPID %d), want the target as its pid namespace numbers it, [1]", own, resp.Procs, resp.NSPID)
	}
	hostControllers, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil || resp.Controllers != string(hostControllers) {
		t.Errorf("cgroup.controllers through Env.Cgroup %q, on the host %q (%v)", resp.Controllers, hostControllers, err)
	}
	if _, err := config.Parse([]byte("[[plugin]]\nname = \"author\"\nfresh_mounts = [\"cgroups\"]\n"), "bad.toml"); err == nil || !strings.Contains(err.Error(), "cgroup") {
		t.Errorf("fresh_mounts = [\"cgroups\"]: %v", err)
	}
}

// A plugin that never calls sdk.Serve, or prints on stdout before it, is
// told so by the start error, not with go-plugin's "Unrecognized remote
// plugin message".
func TestStartErrorSaysWhatIsWrong(t *testing.T) {
	parallel(t)
	for _, c := range []struct {
		mistake string
		want    []string
	}{
		{"print", []string{`printed "hello from main" on stdout before its handshake line`, "must call sdk.Serve and print nothing on stdout before it"}},
		{"exit", []string{"exited (exit status 0) before its handshake line", "did main call sdk.Serve?"}},
	} {
		t.Run(c.mistake, func(t *testing.T) {
			bin := sdkBuild(t, "./testdata/noserve", "-ldflags", "-X main.mistake="+c.mistake)
			cfg := sdkConfig(t, "noserve", bin, "")
			cfg.FailOnPluginError = true // by default it is only recorded as failed
			started := &startedProcs{}
			d, err := core.New(cfg, core.Options{Started: started.add})
			if err == nil {
				d.Close()
				t.Fatal("core.New accepted the plugin")
			}
			msg := err.Error()
			t.Logf("core.New: %s", msg)
			for _, w := range append(c.want, "plugin noserve") {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not say %q", msg, w)
				}
			}
			if strings.Contains(msg, "Unrecognized") || strings.Contains(msg, "\n") {
				t.Errorf("error %q is go-plugin's, or more than one line", msg)
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

// A panicking handler's stack reaches the core's log at debug level,
// naming the handler's function; the caller gets EIO.
func TestHandlerPanicStackIsLogged(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{})
	d, logs := newLoggedDispatcher(t, "log_level = \"debug\"\n")
	wantErrno(t, call(t, d, target.PID(), "author.panic", `{}`, nil), syscall.EIO, "panicked", "nil map")
	var stack string
	waitFor(t, "the stack in the log", func() bool {
		for _, l := range logLines(logs, "DEBUG") {
			if strings.Contains(l, "handler panic stack") {
				stack = logs.String()[strings.Index(logs.String(), l):]
				return true
			}
		}
		return false
	})
	if !strings.Contains(stack, "authorPanickingHandler") {
		t.Errorf("the logged stack does not name the handler's function:\n%s", stack)
	}
	if errs := logLines(logs, "ERROR"); len(errs) != 1 || !strings.Contains(errs[0], "handler panicked") {
		t.Errorf("error lines: %q", errs)
	}
}

// Which log level wins in the CLI: --log-level when given, over the
// configuration's log_level, for nsplug's lines and its plugins' alike;
// absent, the file's log_level; neither, warn (a served call prints
// nothing).
func TestCLILogLevelPrecedence(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	pid := strconv.Itoa(target.PID())
	debugConf := cliConfig(t, "log_level = \"debug\"\n")
	warnConf := cliConfig(t, "log_level = \"warn\"\n")
	for _, c := range []struct {
		name        string
		args        []string
		debug       bool // nsplug's own debug lines
		pluginDebug bool // the plugin's own debug lines (it logs at the level too)
	}{
		{"neither", []string{"--config", cliConfig(t, "")}, false, false},
		{"no file", nil, false, false},
		{"config only", []string{"--config", debugConf}, true, true},
		{"flag over config", []string{"--config", debugConf, "--log-level", "error"}, false, false},
		{"flag raises the config's", []string{"--config", warnConf, "--log-level", "debug"}, true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append(append([]string{"call"}, c.args...), "--pid", pid, "procfs.read", `{"path":"/proc/sys/kernel/hostname"}`)
			_, stderr, code := runCLI(t, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var debug, pluginDebug bool
			for _, l := range strings.Split(stderr, "\n") {
				if strings.Contains(l, "[DEBUG]") {
					debug = true
					pluginDebug = pluginDebug || strings.Contains(l, "nsplug.procfs")
				}
			}
			if debug != c.debug || pluginDebug != c.pluginDebug {
				t.Errorf("debug lines %v (plugin's %v), want %v (%v):\n%s", debug, pluginDebug, c.debug, c.pluginDebug, stderr)
			}
			if !c.debug && stderr != "" {
				t.Errorf("a served call at a level above debug printed:\n%s", stderr)
			}
		})
	}
}
