package tests

import (
	"bufio"
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
)

// assertEmptyDir fails the test for anything in dir.
func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && p != dir {
			t.Errorf("left in runtime_dir: %s (%v)", p, info.Mode())
		}
		return nil
	})
}

// waitHandler waits until a process other than the target runs in the
// target's pid namespace (the handler), and returns its pid.
func waitHandler(t *testing.T, target int) int {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, p := range processesInPIDNamespaceOf(t, target) {
			if p != target {
				return p
			}
		}
	}
	t.Fatal("no handler started in the target")
	return 0
}

// A core SIGKILLed in the middle of a request (warm or oneshot) leaves
// nothing in runtime_dir: no socket, no directory, without another core
// starting to clean up.
func TestKilledCoreLeavesNoRuntimeFiles(t *testing.T) {
	for _, mode := range []string{"pooled", "oneshot"} {
		t.Run(mode, func(t *testing.T) {
			target := newTarget(t, sandbox.Options{MountProc: true})
			runDir := t.TempDir()
			self, _ := os.Executable()
			cmd := exec.Command(self)
			cmd.Env = append(os.Environ(), envTestCore+"="+strconv.Itoa(target.PID()), "NSPLUG_TEST_RUNDIR="+runDir,
				envTestThen+"=probe.hang", envTestTOML+"=[[plugin]]\nname = \"probe\"\nmode = \""+mode+"\"\nrequest_timeout = \"1h\"\n")
			out, _ := cmd.StdoutPipe()
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Wait()
			defer cmd.Process.Kill()
			if line, err := bufio.NewReader(out).ReadString('\n'); err != nil {
				t.Fatalf("test core said %q (%v)", line, err)
			}
			h := waitHandler(t, target.PID())
			time.Sleep(200 * time.Millisecond) // well into probe.hang
			cmd.Process.Kill()
			cmd.Wait()
			waitGone(t, h, 5*time.Second)
			assertEmptyDir(t, runDir)
		})
	}
}

// The same for the command, SIGKILLed while a handler blocks opening a
// FIFO in the target that has no writer.
func TestKilledCLILeavesNoRuntimeFiles(t *testing.T) {
	target := newTarget(t, sandbox.Options{MountProc: true, Files: map[string]string{"/mnt/x": ""}})
	if err := unix.Mkfifo(fmt.Sprintf("/proc/%d/root/mnt/fifo", target.PID()), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := cliConfig(t, "")
	cmd := exec.Command(nsplugBin, "call", "--config", conf, "--pid", strconv.Itoa(target.PID()), "fs.open", `{"path":"/mnt/fifo"}`)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	h := handlerBlockedInOpen(t, target.PID())
	cmd.Process.Kill()
	cmd.Wait()
	waitGone(t, h, 5*time.Second)
	assertEmptyDir(t, filepath.Join(filepath.Dir(conf), "run"))
}

// An interrupted `nsplug call` ends by its signal, in process and through
// the daemon alike, as a shell expects of an interrupted command, and
// leaves nothing behind: in process, the core kills and reaps the blocked
// handler and empties runtime_dir before the signal ends it; through the
// daemon, the daemon ends the request when the connection closes.
func TestInterruptedCallEndsBySignal(t *testing.T) {
	target := newTarget(t, sandbox.Options{MountProc: true, Files: map[string]string{"/mnt/x": ""}})
	if err := unix.Mkfifo(fmt.Sprintf("/proc/%d/root/mnt/fifo", target.PID()), 0o600); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(target.PID())
	endedBy := func(t *testing.T, cmd *exec.Cmd, sig syscall.Signal) {
		t.Helper()
		cmd.Wait()
		ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ok || !ws.Signaled() || ws.Signal() != sig {
			t.Errorf("after %v: %v, want the command ended by %v", sig, cmd.ProcessState, sig)
		}
	}
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run("in process, "+unix.SignalName(sig), func(t *testing.T) {
			conf := cliConfig(t, "")
			cmd := exec.Command(nsplugBin, "call", "--config", conf, "--pid", pid, "fs.open", `{"path":"/mnt/fifo"}`)
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			h := handlerBlockedInOpen(t, target.PID())
			cmd.Process.Signal(sig)
			endedBy(t, cmd, sig)
			waitGone(t, h, 5*time.Second)
			assertEmptyDir(t, filepath.Join(filepath.Dir(conf), "run"))
		})
	}
	d := startDaemon(t, "", "")
	c := d.client(t)
	d.instances(t, c)
	before := d.fds(t) + 1 // the target's pidfd, held after its first request
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run("through the daemon, "+unix.SignalName(sig), func(t *testing.T) {
			cmd := exec.Command(nsplugBin, "call", "--addr", d.addr, "--pid", pid, "extprobe.hang")
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			h := d.waitInflight(t, c, "extprobe")
			cmd.Process.Signal(sig)
			endedBy(t, cmd, sig)
			procGone(t, h, "the interrupted call's handler")
			d.waitQuiet(t, before)
		})
	}
}

// runtime_dir keeps at most search permission for others (so that `nsplug
// serve` can offer its socket in it), never read or write; one that belongs
// to another user is refused.
func TestRuntimeDirPermissions(t *testing.T) {
	parallel(t)
	newWith := func(dir string) error {
		cfg, err := config.Parse([]byte(fmt.Sprintf("runtime_dir = %q\n", dir)), "test.toml")
		if err != nil {
			t.Fatal(err)
		}
		d, err := core.New(cfg, core.Options{Builtins: testBuiltins()})
		if err == nil {
			d.Close()
		}
		return err
	}
	for _, c := range []struct{ before, after os.FileMode }{{0o777, 0o711}, {0o750, 0o710}, {0o711, 0o711}, {0o500, 0o700}} {
		dir := filepath.Join(t.TempDir(), "run")
		if err := os.Mkdir(dir, c.before); err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, c.before)
		if err := newWith(dir); err != nil {
			t.Fatalf("runtime_dir %v: %v", c.before, err)
		}
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != c.after {
			t.Errorf("runtime_dir %v became %v, want %v", c.before, fi.Mode().Perm(), c.after)
		}
	}
	fresh := filepath.Join(t.TempDir(), "fresh")
	if err := newWith(fresh); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(fresh); fi.Mode().Perm() != 0o700 {
		t.Errorf("a new runtime_dir is %v", fi.Mode().Perm())
	}
	theirs := filepath.Join(t.TempDir(), "theirs")
	os.Mkdir(theirs, 0o700)
	os.Chown(theirs, 1000, 1000)
	if err := newWith(theirs); err == nil || !strings.Contains(err.Error(), "belongs to uid 1000") {
		t.Errorf("a runtime_dir of uid 1000: %v", err)
	}
}
