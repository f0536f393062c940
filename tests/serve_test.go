package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/server"
	"github.com/nsplug/nsplug/wire"
)

// The CLI through the daemon (--addr, NSPLUG_ADDR) prints exactly what it
// prints in-process with the daemon's configuration, and exits the same:
// for a success, a handler's errno, a stale identity and an unknown type,
// and for plugins.
func TestDaemonCLIMatchesInProcess(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Hostname: "daemon-cli", MountProc: true})
	d := startDaemon(t, "", "")
	pid := strconv.Itoa(target.PID())
	start, err := core.StartTime(target.PID())
	if err != nil {
		t.Fatal(err)
	}
	read := `{"path":"/proc/sys/kernel/hostname"}`
	for _, c := range []struct {
		name string
		args []string
		code int
		want string // in stdout, or in stderr on failure
	}{
		{"success", []string{"call", "--pid", pid, "procfs.read", read}, 0, `"data": "ZGFlbW9uLWNsaQo="`},
		{"identity", []string{"call", "--pid", fmt.Sprintf("%s:%d", pid, start), "procfs.read", read}, 0, `"data"`},
		{"stale identity", []string{"call", "--pid", pid + ":1", "procfs.read", read}, 1, "ESRCH"},
		{"ENOENT", []string{"call", "--pid", pid, "procfs.read", `{"path":"/proc/nope"}`}, 1, "/proc/nope: no such file or directory (ENOENT)"},
		{"unknown type", []string{"call", "--pid", pid, "procfs.fly"}, 1, `unknown message type "procfs.fly"`},
		{"bad payload", []string{"call", "--pid", pid, "procfs.read", `[1]`}, 1, "EINVAL"},
		{"plugins", []string{"plugins"}, 0, "extprobe.whoami"},
		{"plugins json", []string{"plugins", "--json"}, 0, `"protocol_version": 2`},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd, rest := c.args[0], c.args[1:]
			inOut, inErr, inCode := runNsplug(t, nil, nil, append([]string{cmd, "--config", d.conf}, rest...)...)
			if inCode != c.code || !strings.Contains(inOut+inErr, c.want) {
				t.Fatalf("in-process: exit %d (want %d), stdout %q, stderr %q, want %q", inCode, c.code, inOut, inErr, c.want)
			}
			for _, via := range []struct {
				name string
				env  []string
				args []string
			}{
				{"--addr", nil, append([]string{cmd, "--addr", d.addr}, rest...)},
				{"NSPLUG_ADDR", []string{"NSPLUG_ADDR=" + d.addr}, c.args},
			} {
				out, errOut, code := runNsplug(t, via.env, nil, via.args...)
				if out != inOut || errOut != inErr || code != inCode {
					t.Errorf("through the daemon with %s: exit %d, stdout %q, stderr %q; in-process: exit %d, stdout %q, stderr %q",
						via.name, code, out, errOut, inCode, inOut, inErr)
				}
			}
		})
	}

	// The flags of an in-process core make no sense with a daemon; nor
	// does an address that is no unix socket.
	for _, u := range []struct {
		args []string
		want string
	}{
		{[]string{"call", "--addr", d.addr, "--config", d.conf, "--pid", pid, "procfs.read"}, "--config"},
		{[]string{"plugins", "--addr", d.addr, "--log-level", "debug"}, "--log-level"},
		{[]string{"call", "--addr", "tcp://127.0.0.1:1", "--pid", pid, "procfs.read"}, "unix:///PATH"},
	} {
		_, errOut, code := runNsplug(t, nil, nil, u.args...)
		if code != 2 || !strings.Contains(errOut, u.want) {
			t.Errorf("%v: exit %d, stderr %q", u.args, code, errOut)
		}
	}
	_, errOut, code := runNsplug(t, []string{"NSPLUG_ADDR=" + d.addr}, nil, "call", "--config", d.conf, "--pid", pid, "procfs.read")
	if code != 2 || !strings.Contains(errOut, "--config") || !strings.Contains(errOut, "NSPLUG_ADDR") {
		t.Errorf("--config with NSPLUG_ADDR: exit %d, stderr %q", code, errOut)
	}
	// No daemon there: one line, exit 1.
	_, errOut, code = runNsplug(t, nil, nil, "call", "--addr", "unix:///nonexistent/nsplug.sock", "--pid", pid, "procfs.read")
	if code != 1 || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "/nonexistent/nsplug.sock") {
		t.Errorf("no daemon: exit %d, stderr %q", code, errOut)
	}
}

// The standard gRPC health service answers for the daemon and the API.
func TestDaemonHealth(t *testing.T) {
	parallel(t)
	d := startDaemon(t, "", "")
	health := healthpb.NewHealthClient(d.conn(t))
	for _, svc := range []string{"", "nsplug.api.v1.Nsplug"} {
		resp, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health of %q: %v %v", svc, resp, err)
		}
	}
	if _, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("health of an unknown service: %v", err)
	}
}

// A caller other than root can connect, is told by the kernel's
// credentials of its connection, and is denied (EACCES, naming its uid and
// what it asked for). It can reach the socket in runtime_dir but neither
// list runtime_dir nor enter the core's directories in it.
func TestDaemonNonRootCaller(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	pid := strconv.Itoa(target.PID())
	// Every start of extprobe takes a while, so that the core's directory
	// of a start in progress can be looked at.
	d := startDaemon(t, "", "[plugin.options]\nstart_delay_ms = 1500\n")
	_, errOut, code := runNsplug(t, nil, nobody, "call", "--addr", d.addr, "--pid", pid, "procfs.read", `{"path":"/proc/uptime"}`)
	if code != 1 || !strings.Contains(errOut, "uid 65534") || !strings.Contains(errOut, "procfs.read") || !strings.HasSuffix(errOut, "(EACCES)\n") {
		t.Errorf("call as uid 65534: exit %d, stderr %q", code, errOut)
	}
	if _, errOut, code := runNsplug(t, nil, nobody, "plugins", "--addr", d.addr); code != 1 || !strings.Contains(errOut, "EACCES") {
		t.Errorf("plugins as uid 65534: exit %d, stderr %q", code, errOut)
	}
	_, err := d.client(t).Call(context.Background(), &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(target.PID())}, Type: "procfs.read", Payload: []byte(`{"path":"/proc/uptime"}`)})
	if err != nil {
		t.Errorf("root's call: %v", err)
	}

	fi, err := os.Stat(d.runDir)
	if err != nil || fi.Mode().Perm() != 0o711 {
		t.Errorf("runtime_dir: %v %v, want 0711", fi.Mode(), err)
	}
	started := make(chan error, 1)
	go func() {
		_, err := d.client(t).Call(context.Background(), &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(target.PID())}, Type: "extprobe.whoami"})
		started <- err
	}()
	var coreDir string
	for deadline := time.Now().Add(2 * time.Second); coreDir == "" && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		dirs, _ := filepath.Glob(filepath.Join(d.runDir, "core-*"))
		if len(dirs) > 0 {
			coreDir = dirs[0]
		}
	}
	checks := []struct {
		script string
		ok     bool
	}{
		{"test -S " + d.socket, true},
		{"ls " + d.runDir, false},
	}
	// A serving process holds its start's directory only for a moment
	// (it is removed once the process has it); when one was caught, it is
	// closed to others too.
	if coreDir != "" {
		checks = append(checks, []struct {
			script string
			ok     bool
		}{{"cd " + coreDir, false}, {"ls " + coreDir, false}}...)
	}
	for _, c := range checks {
		cmd := execAs(nobody, "/bin/sh", "-c", c.script)
		out, err := cmd.CombinedOutput()
		if (err == nil) != c.ok {
			t.Errorf("as uid 65534, %q: %v %s", c.script, err, out)
		}
	}
	if err := <-started; err != nil {
		t.Errorf("extprobe.whoami: %v", err)
	}
}

// A response that holds open files (fs.open) is refused by gRPC with
// FailedPrecondition (EXDEV), naming the type, and every fd is closed:
// the daemon keeps none.
func TestDaemonRefusesFilesAndKeepsNoFD(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d := startDaemon(t, "", "")
	c := d.client(t)
	open := func(path string) error {
		_, err := c.Call(context.Background(), &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(target.PID())}, Type: "fs.open", Payload: []byte(`{"path":"` + path + `"}`)})
		return err
	}
	// The fs instance starts, and the client's connection is up.
	if err := open("/nope"); status.Code(err) != codes.NotFound {
		t.Fatalf("fs.open of a missing file: %v", err)
	}
	before := d.fds(t)
	for range 3 {
		err := open("/proc/self/status")
		st := status.Convert(err)
		if st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "fs.open") || !strings.Contains(st.Message(), "cannot cross") {
			t.Fatalf("fs.open through the daemon: %v", err)
		}
		if e := server.ErrorFromStatus(err).(*wire.Error); e.Errno != syscall.EXDEV {
			t.Errorf("errno %v", e.Errno)
		}
	}
	if after := d.fds(t); after != before {
		t.Errorf("daemon fds: %d before, %d after three refused responses with files: %v", before, after, d.fdList())
	}
	// The CLI goes through the fast path, which hands files over
	// (TestFastPathHandsBackFiles).
}

// A client that cancels ends its request: the handler's instance is
// retired and its process killed. The timeout field does the same.
func TestDaemonCancelEndsRequest(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d := startDaemon(t, "", "")
	c := d.client(t)
	req := &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(target.PID())}, Type: "extprobe.hang"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Call(ctx, req)
		done <- err
	}()
	handler := d.waitInflight(t, c, "extprobe")
	cancel()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Errorf("cancelled call: %v", err)
	}
	procGone(t, handler, "the cancelled request's handler")

	req.Timeout = durationpb.New(300 * time.Millisecond)
	_, err := c.Call(context.Background(), req)
	if status.Code(err) != codes.DeadlineExceeded || !errorsIsErrno(server.ErrorFromStatus(err), syscall.ETIMEDOUT) {
		t.Errorf("call with a timeout: %v", err)
	}
	req.Timeout = durationpb.New(-time.Second)
	if _, err := c.Call(context.Background(), req); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("negative timeout: %v", err)
	}
	for _, in := range d.instances(t, c) {
		if in.Plugin == "extprobe" {
			procGone(t, int(in.Pid), "the timed-out request's handler")
		}
	}
}

func errorsIsErrno(err error, errno syscall.Errno) bool {
	e, ok := err.(*wire.Error)
	return ok && e.Errno == errno
}

// A client killed in the middle of a call leaves nothing in the daemon: the
// request ends, its handler is killed and reaped, and the daemon's fds are
// back where they were; its threads do not grow with each such client.
func TestDaemonClientKilledMidCall(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d := startDaemon(t, "", "")
	c := d.client(t)
	d.instances(t, c) // the test's own connection is up
	// After the first request, the daemon holds the target's pidfd for
	// the next ones.
	before := d.fds(t) + 1
	var threads []int
	for range 4 {
		cli := execAs(nil, nsplugBin, "call", "--addr", d.addr, "--pid", strconv.Itoa(target.PID()), "extprobe.hang")
		if err := cli.Start(); err != nil {
			t.Fatal(err)
		}
		handler := d.waitInflight(t, c, "extprobe")
		cli.Process.Kill()
		cli.Wait()
		procGone(t, handler, "the killed client's handler")
		d.waitQuiet(t, before)
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", d.pid()))
		threads = append(threads, len(tasks))
	}
	if threads[3] > threads[1]+2 {
		t.Errorf("daemon threads after each killed client: %v", threads)
	}
}

// SIGTERM under load: new calls are refused (Unavailable), calls in flight
// get shutdown_grace, then every plugin is killed and reaped, the socket
// is removed, nothing is left in runtime_dir, and the exit status is 0.
func TestDaemonSIGTERMUnderLoad(t *testing.T) {
	parallel(t)
	targets := []*sandbox.Sandbox{newTarget(t, sandbox.Options{MountProc: true}), newTarget(t, sandbox.Options{MountProc: true})}
	d := startDaemon(t, `shutdown_grace = "1s"`, "")
	var ok atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 8 {
		c := d.client(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(targets[i%2].PID())}, Type: "procfs.read", Payload: []byte(`{"path":"/proc/uptime"}`)}
			for {
				if _, err := c.Call(context.Background(), req); err != nil {
					errs <- err
					return
				}
				ok.Add(1)
			}
		}()
	}
	hung := make(chan error, 1)
	hc := d.client(t)
	go func() {
		_, err := hc.Call(context.Background(), &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(targets[0].PID())}, Type: "extprobe.hang"})
		hung <- err
	}()
	d.waitInflight(t, hc, "extprobe")
	for ok.Load() < 100 {
		time.Sleep(10 * time.Millisecond)
	}
	plugins := childrenOf(d.pid())
	if len(plugins) < 2 {
		t.Fatalf("daemon's plugin processes: %v", plugins)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	if code := d.wait(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d; log:\n%s", code, d.log)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if status.Code(err) != codes.Unavailable {
			t.Errorf("a call during shutdown: %v (want Unavailable)", err)
		}
	}
	if err := <-hung; err == nil {
		t.Error("the hanging call succeeded")
	}
	for _, p := range plugins {
		procGone(t, p, "a plugin process of the daemon")
	}
	if _, err := os.Lstat(d.socket); !os.IsNotExist(err) {
		t.Errorf("socket left: %v", err)
	}
	assertEmptyDir(t, d.runDir)
	if !strings.Contains(d.log.String(), "after shutdown_grace") {
		t.Errorf("no word of the call ended at shutdown_grace in the log:\n%s", d.log)
	}
}

// SIGHUP: a change of [server] alone applies to new calls at once and
// keeps the warm instances; a change of the plugins' settings builds a new
// dispatcher, and the old one retires once its calls in flight end; a bad
// configuration is logged with its file and line and the old one keeps
// serving.
func TestDaemonReload(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d := startDaemon(t, `shutdown_grace = "1m"`, "")
	c := d.client(t)
	tg := &apiv1.Target{Pid: int32(target.PID())}
	read := &apiv1.CallRequest{Target: tg, Type: "procfs.read", Payload: []byte(`{"path":"/proc/uptime"}`)}
	servingPIDOf := func(plugin string) int {
		t.Helper()
		if _, err := c.Call(context.Background(), read); err != nil {
			t.Fatalf("procfs.read: %v", err)
		}
		for _, in := range d.instances(t, c) {
			if slices.Contains(in.Plugins, plugin) {
				return int(in.Pid)
			}
		}
		t.Fatalf("no %s instance", plugin)
		return 0
	}
	first := servingPIDOf("procfs")
	orig, _ := os.ReadFile(d.conf)
	rewrite := func(body string) {
		t.Helper()
		if err := os.WriteFile(d.conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		d.cmd.Process.Signal(syscall.SIGHUP)
	}

	// [server] only: same dispatcher, same instance.
	rewrite(strings.Replace(string(orig), `shutdown_grace = "1m"`, `shutdown_grace = "2s"`, 1))
	d.waitLog(t, "reloaded", 1)
	if again := servingPIDOf("procfs"); again != first {
		t.Errorf("a [server] change replaced the procfs instance: %d, then %d", first, again)
	}

	// A plugin setting: a new dispatcher; the old one's instance serving a
	// call keeps serving it, then retires with the rest.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiting := make(chan error, 1)
	go func() {
		_, err := c.Call(ctx, &apiv1.CallRequest{Target: tg, Type: "extprobe.wait"})
		waiting <- err
	}()
	waiter := d.waitInflight(t, c, "extprobe")
	changed := strings.Replace(string(orig), `shutdown_grace = "1m"`, `shutdown_grace = "2s"`, 1) + "\n[[plugin]]\nname = \"procfs\"\nrequest_timeout = \"5s\"\n"
	rewrite(strings.Replace(changed, "[server]", "[[plugin]]\nname = \"sysctl\"\ndisabled = true\n\n[server]", 1))
	d.waitLog(t, "reloaded", 2)
	if _, err := c.Call(context.Background(), &apiv1.CallRequest{Target: tg, Type: "sysctl.get", Payload: []byte(`{"name":"kernel.hostname"}`)}); status.Code(err) != codes.Unimplemented {
		t.Errorf("sysctl.get after disabling sysctl: %v", err)
	}
	second := servingPIDOf("procfs")
	if second == first {
		t.Errorf("the procfs instance %d survived a change of its settings", first)
	}
	time.Sleep(200 * time.Millisecond) // the old dispatcher must wait for its call in flight
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", waiter)); err != nil {
		t.Fatalf("the old dispatcher's instance serving a call did not wait for it: %v", err)
	}
	cancel()
	if err := <-waiting; status.Code(err) != codes.Canceled {
		t.Errorf("the call in flight across the reload: %v", err)
	}
	procGone(t, waiter, "the old dispatcher's extprobe instance")
	procGone(t, first, "the old dispatcher's procfs instance")

	// A bad configuration: logged with its file and line; still serving.
	bad := string(orig) + "bogus_key = 1\n"
	rewrite(bad)
	line := strings.Count(bad, "\n")
	d.waitLog(t, "reload failed", 1)
	if want := fmt.Sprintf("%s:%d", d.conf, line); !strings.Contains(d.log.String(), want) {
		t.Errorf("the failed reload's log does not name %s:\n%s", want, d.log)
	}
	if again := servingPIDOf("procfs"); again != second {
		t.Errorf("a failed reload replaced the procfs instance: %d, then %d", second, again)
	}

	// The shutdown_grace now in force is the reloaded 2s, not 1m.
	go c.Call(context.Background(), &apiv1.CallRequest{Target: tg, Type: "extprobe.hang"})
	d.waitInflight(t, c, "extprobe")
	d.cmd.Process.Signal(syscall.SIGTERM)
	if code := d.wait(t, 30*time.Second); code != 0 {
		t.Errorf("exit %d; log:\n%s", code, d.log)
	}
	assertEmptyDir(t, d.runDir)
}

// A socket left by a daemon killed with SIGKILL is replaced by the next
// one; a socket another daemon serves is an error, and so is a path that
// is no socket, which is left as it is.
func TestDaemonStaleSocket(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d := startDaemon(t, "", "")
	c := d.client(t)
	if _, err := c.Call(context.Background(), &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(target.PID())}, Type: "procfs.read", Payload: []byte(`{"path":"/proc/uptime"}`)}); err != nil {
		t.Fatal(err)
	}
	plugins := childrenOf(d.pid())
	d.cmd.Process.Kill()
	d.wait(t, 10*time.Second)
	for _, p := range plugins {
		procGone(t, p, "a plugin process of the killed daemon")
	}
	if fi, err := os.Lstat(d.socket); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("the killed daemon's socket: %v %v", fi, err)
	}

	next := launchDaemon(t, d.conf)
	next.waitServing(t)
	if _, err := next.client(t).Call(context.Background(), &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(target.PID())}, Type: "procfs.read", Payload: []byte(`{"path":"/proc/uptime"}`)}); err != nil {
		t.Errorf("a call to the daemon that replaced the stale socket: %v", err)
	}

	// Another daemon serves there: refused, and the first serves on.
	second := launchDaemon(t, d.conf)
	if code := second.wait(t, 30*time.Second); code != 1 || !strings.Contains(second.log.String(), "another process is serving") {
		t.Errorf("a second daemon on a live socket: exit %d, log %s", code, second.log)
	}
	next.waitServing(t)

	// Not a socket: refused, and left alone.
	conf := daemonConfig(t, "", "")
	sock := filepath.Join(filepath.Dir(conf), "run", "nsplug.sock")
	os.MkdirAll(filepath.Dir(sock), 0o700)
	if err := os.WriteFile(sock, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	third := launchDaemon(t, conf)
	if code := third.wait(t, 30*time.Second); code != 1 || !strings.Contains(third.log.String(), "is not a socket") {
		t.Errorf("a daemon whose socket path is a regular file: exit %d, log %s", code, third.log)
	}
	if data, err := os.ReadFile(sock); err != nil || string(data) != "precious" {
		t.Errorf("the file at the socket path: %q %v", data, err)
	}
	os.Remove(sock) // for the cleanup's check of runtime_dir
}

// Types, Plugins, Instances and Prepare answer what the core's do.
func TestDaemonDescribesAndPrepares(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d := startDaemon(t, "", "")
	c := d.client(t)
	types, err := c.Types(context.Background(), &apiv1.TypesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var mount *apiv1.TypeInfo
	for _, ti := range types.Types {
		if ti.Name == "mount.mount" {
			mount = ti
		}
	}
	if mount == nil || mount.Plugin != "mount" || mount.Version == 0 || len(mount.Changes) != 1 || mount.Changes[0] != "mnt" {
		t.Errorf("mount.mount: %v", mount)
	}
	plugins, err := c.Plugins(context.Background(), &apiv1.PluginsRequest{})
	if err != nil || plugins.ProtocolVersion != wire.ProtocolVersion {
		t.Fatalf("plugins: %v %v", plugins, err)
	}
	for _, p := range plugins.Plugins {
		if p.Name == "extprobe" && (p.Builtin || p.Status != "ok" || p.Path == "" || len(p.Sha256) != 64) {
			t.Errorf("extprobe: %v", p)
		}
	}

	start, _ := core.StartTime(target.PID())
	prepare := func(st uint64, types ...string) error {
		_, err := c.Prepare(context.Background(), &apiv1.PrepareRequest{Target: &apiv1.Target{Pid: int32(target.PID()), StartTime: wrapperspb.UInt64(st)}, Types: types})
		return err
	}
	if err := prepare(start+1, "procfs.read"); status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "ESRCH") {
		t.Errorf("Prepare of a stale identity: %v", err)
	}
	if n := len(d.instances(t, c)); n != 0 {
		t.Errorf("%d instances after a refused Prepare", n)
	}
	if err := prepare(start, "procfs.read", "sysctl.get"); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, in := range d.instances(t, c) {
		for _, p := range in.Plugins {
			got[p] = true
		}
		assertNamespaces(t, int(in.Pid), target.PID(), in.Joined)
	}
	// procfs and sysctl share one process with the other built-ins.
	if len(got) != 5 || !got["procfs"] || !got["sysctl"] {
		t.Errorf("instances after Prepare: %v", got)
	}
	if err := prepare(start, "procfs.fly"); status.Code(err) != codes.Unimplemented {
		t.Errorf("Prepare of an unknown type: %v", err)
	}
}

// One gRPC connection has at most server.MaxStreamsPerConn calls in the
// daemon at once: the calls past it wait in the client, and run when one
// ends. (With MaxConnsPerUser this bounds what a user has in flight.)
func TestDaemonBoundsCallsPerConnection(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	metrics := freeLoopbackAddr(t)
	d := startDaemon(t, fmt.Sprintf("metrics_address = %q", metrics), "")
	c := d.client(t) // one connection
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const calls = server.MaxStreamsPerConn + 4
	done := make(chan error, calls)
	for i := 0; i < calls; i++ {
		go func() {
			_, err := c.Call(ctx, &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(target.PID())}, Type: "extprobe.hang"})
			done <- err
		}()
	}
	inflight := func() float64 { return scrape(t, metrics, "nsplug_requests_in_flight") }
	deadline := time.Now().Add(20 * time.Second)
	for inflight() < server.MaxStreamsPerConn && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // time for any call past the bound to arrive, were it let in
	if n := inflight(); n != server.MaxStreamsPerConn {
		t.Fatalf("%v calls in the daemon from one connection with %d made, want %d", n, calls, server.MaxStreamsPerConn)
	}
	cancel()
	for i := 0; i < calls; i++ {
		if err := <-done; status.Code(err) != codes.Canceled {
			t.Errorf("a cancelled call: %v", err)
		}
	}
}
