package tests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	apiv1 "github.com/nsplug/nsplug/api/v1"
	apisvc "github.com/nsplug/nsplug/api/v1/service"
	"github.com/nsplug/nsplug/server"
)

// A daemon is a real `nsplug serve` process (the nsplug binary built for
// the tests), with its own configuration, runtime_dir and socket.
type daemon struct {
	conf   string // its configuration file
	runDir string // runtime_dir, which holds the socket
	socket string
	addr   string // unix:///socket
	cmd    *exec.Cmd
	log    *sdkLogs // its stderr
	done   chan struct{}
	err    error // its exit, once done is closed
}

// daemonConfig writes a daemon's configuration into a fresh directory
// that every user may search (so that a non-root caller reaches the
// socket), with the socket in runtime_dir, open to every local user (each
// call is authorized from its caller's credentials), and extra appended.
// The test binary is the external plugin extprobe (probePlugin); extra
// follows its [[plugin]] entry (so it may add its [plugin.options]).
func daemonConfig(t *testing.T, server, extra string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nsplug-serve-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	self, _ := os.Executable()
	path := filepath.Join(dir, "nsplug.toml")
	body := fmt.Sprintf("runtime_dir = %q\n\n[[plugin]]\nname = \"extprobe\"\npath = %q\n%s\n[server]\nsocket = %q\nsocket_mode = 0o666\n%s\n",
		filepath.Join(dir, "run"), self, extra, filepath.Join(dir, "run", "nsplug.sock"), server)
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// startDaemon starts `nsplug serve` with a configuration made by
// daemonConfig and waits until its health check says SERVING. When the
// test ends it is sent SIGTERM (unless it has exited), and it must exit 0
// leaving nothing in runtime_dir, its socket included.
func startDaemon(t *testing.T, server, extra string) *daemon {
	t.Helper()
	d := launchDaemon(t, daemonConfig(t, server, extra))
	d.waitServing(t)
	return d
}

// launchDaemon starts `nsplug serve --config conf` and returns at once.
func launchDaemon(t *testing.T, conf string) *daemon {
	t.Helper()
	runDir := filepath.Join(filepath.Dir(conf), "run")
	d := &daemon{conf: conf, runDir: runDir, socket: filepath.Join(runDir, "nsplug.sock"), log: &sdkLogs{}, done: make(chan struct{})}
	d.addr = "unix://" + d.socket
	d.cmd = exec.Command(nsplugBin, "serve", "--config", conf)
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		if d.exited() {
			return
		}
		d.cmd.Process.Signal(syscall.SIGTERM)
		if code := d.wait(t, time.Minute); code != 0 {
			t.Errorf("daemon exited %d on SIGTERM; its log:\n%s", code, d.log)
		}
		assertEmptyDir(t, d.runDir)
	})
	return d
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// wait waits for the daemon to exit and returns its exit code.
func (d *daemon) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-d.done:
	case <-time.After(limit):
		d.cmd.Process.Kill()
		<-d.done
		t.Fatalf("daemon did not exit within %v; its log:\n%s", limit, d.log)
	}
	if ee, ok := d.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if d.err != nil {
		t.Fatalf("daemon: %v", d.err)
	}
	return 0
}

// waitServing waits until the daemon's health check answers SERVING.
func (d *daemon) waitServing(t *testing.T) {
	t.Helper()
	conn := d.conn(t)
	health := healthpb.NewHealthClient(conn)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if d.exited() {
			t.Fatalf("daemon exited before serving (%v); its log:\n%s", d.err, d.log)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon not serving after a minute (%v); its log:\n%s", err, d.log)
		}
	}
}

// conn is a new client connection to the daemon, closed with the test.
func (d *daemon) conn(t *testing.T) *grpc.ClientConn {
	t.Helper()
	_, conn, err := server.Dial(d.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func (d *daemon) client(t *testing.T) apisvc.NsplugClient {
	return apisvc.NewNsplugClient(d.conn(t))
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// fds counts the daemon's open fds.
func (d *daemon) fds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", d.pid()))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// fdList names the daemon's fds, for a failure's message.
func (d *daemon) fdList() []string {
	var out []string
	dir := fmt.Sprintf("/proc/%d/fd", d.pid())
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		out = append(out, e.Name()+":"+target)
	}
	return out
}

// waitFDs waits until the daemon has at most want fds open and no child
// process (every plugin process reaped).
func (d *daemon) waitQuiet(t *testing.T, want int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		fds, kids := d.fds(t), childrenOf(d.pid())
		if fds <= want && len(kids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon: %d fds (want at most %d): %v; child processes %v", fds, want, d.fdList(), kids)
		}
	}
}

// instances lists the daemon's live plugin processes.
func (d *daemon) instances(t *testing.T, c apisvc.NsplugClient) []*apiv1.InstanceInfo {
	t.Helper()
	resp, err := c.Instances(context.Background(), &apiv1.InstancesRequest{})
	if err != nil {
		t.Fatalf("Instances: %v", err)
	}
	return resp.Instances
}

// waitInflight waits until an instance of plugin is serving a request and
// returns its pid.
func (d *daemon) waitInflight(t *testing.T, c apisvc.NsplugClient, plugin string) int {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, in := range d.instances(t, c) {
			if in.Plugin == plugin && in.Inflight > 0 {
				return int(in.Pid)
			}
		}
	}
	t.Fatalf("no %s instance serving a request; daemon log:\n%s", plugin, d.log)
	return 0
}

// waitLog waits until the daemon's log holds n lines containing s.
func (d *daemon) waitLog(t *testing.T, s string, n int) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if strings.Count(d.log.String(), s) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon log has no %d× %q:\n%s", n, s, d.log)
		}
	}
}

// procGone waits until process pid no longer exists (or is a zombie).
func procGone(t *testing.T, pid int, what string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || bytes.Contains(stat, []byte(") Z ")) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s (pid %d) still runs", what, pid)
		}
	}
}

// runNsplug runs the nsplug binary with env added to the test's and, when
// cred is set, as that user; it returns stdout, stderr and the exit code.
func runNsplug(t *testing.T, env []string, cred *syscall.Credential, args ...string) (string, string, int) {
	t.Helper()
	cmd := execAs(cred, nsplugBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running nsplug: %v", err)
	}
	return out.String(), errb.String(), code
}

// nobody is the credential of a caller that is not root.
var nobody = &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}

// execAs is a command run from / as cred (the test's own user when nil).
func execAs(cred *syscall.Credential, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = "/"
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	return cmd
}
