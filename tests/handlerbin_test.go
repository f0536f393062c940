package tests

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/nsexec/boot"
	"github.com/nsplug/nsplug/plugins/builtin"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/wire"
)

// The command runs its built-ins from bin/nsplug-handler next to it: seen
// from the host, on the handler process of a request blocked in the
// target (its /proc/PID/exe names the file on the detached overlay,
// "/NAME", and has that file's size). Alone, it refuses, saying what to
// install: it is built without cgo, so it cannot serve them itself, and
// nothing of it runs in the target.
func TestCLIStartsBuiltinsFromTheHandlerBinary(t *testing.T) {
	parallel(t)
	exe, size := blockedCLIHandler(t, nsplugBin)
	st, err := os.Stat(handlerBin)
	if err != nil {
		t.Fatal(err)
	}
	if exe != "/"+filepath.Base(handlerBin) || size != st.Size() {
		t.Errorf("the handler runs %s (%d bytes), want %s (%d bytes)", exe, size, "/"+filepath.Base(handlerBin), st.Size())
	}

	alone := filepath.Join(t.TempDir(), "nsplug")
	copyExecutable(t, nsplugBin, alone)
	target := newTarget(t, sandbox.Options{Hostname: "alone", MountProc: true})
	out, err := exec.Command(alone, "call", "--config", cliConfig(t, ""), "--pid", strconv.Itoa(target.PID()),
		"procfs.read", `{"path":"/proc/sys/kernel/hostname"}`).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no "+core.HandlerExecutable+" beside") || !strings.Contains(string(out), "without cgo") {
		t.Errorf("nsplug call without nsplug-handler beside it: %v, output:\n%s", err, out)
	}
	if procs := processesInPIDNamespaceOf(t, target.PID()); len(procs) != 1 {
		t.Errorf("processes in the target after the refused call: %v", procs)
	}
}

// The front has no nsexec preamble (built without cgo): started as a
// built-in's process, with a bootstrap, it says so on the status pipe,
// where a core reads a failed start, and exits before serving anything.
func TestFrontNeverServesInATarget(t *testing.T) {
	parallel(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cmd := exec.Command(nsplugBin, "plugins")
	cmd.Env = append(os.Environ(), boot.EnvName+"=1", wire.EnvBuiltin+"=procfs")
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	cmd.ExtraFiles = make([]*os.File, boot.StatusFD-2) // fds 3 and up
	for i := range cmd.ExtraFiles {
		cmd.ExtraFiles[i] = null
	}
	cmd.ExtraFiles[boot.StatusFD-3] = w
	var stdout strings.Builder
	cmd.Stdout = &stdout
	err = cmd.Run()
	w.Close()
	status, _ := io.ReadAll(r)
	if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(status), "built without cgo") {
		t.Errorf("the front started with a bootstrap: exit %d (%v), status pipe %q; want exit 1 and the reason", code, err, status)
	}
	if stdout.Len() != 0 {
		t.Errorf("the front ran its command anyway: %q", stdout.String())
	}
}

// A handler binary from another build (here: this test binary, whose
// built-ins include the test plugins) next to the command fails every
// built-in start with an error that says so; nothing is served by it.
func TestCLIRefusesAHandlerBinaryOfAnotherBuild(t *testing.T) {
	parallel(t)
	dir := t.TempDir()
	cli := filepath.Join(dir, "nsplug")
	copyExecutable(t, nsplugBin, cli)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	copyExecutable(t, self, filepath.Join(dir, core.HandlerExecutable))
	target := newTarget(t, sandbox.Options{Hostname: "mismatch", MountProc: true})
	out, err := exec.Command(cli, "call", "--config", cliConfig(t, ""), "--pid", strconv.Itoa(target.PID()),
		"procfs.read", `{"path":"/proc/sys/kernel/hostname"}`).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not of the core's build") {
		t.Errorf("nsplug call with a handler binary of another build: %v, output:\n%s", err, out)
	}
}

// core.Options.Executable names the handler binary for an embedder: the
// built-ins' instances run it. With built-ins it does not have (the test
// plugins), their start fails naming the mismatch.
func TestHandlerExecutableOption(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Hostname: "lean", MountProc: true})
	req := core.Request{PID: target.PID(), Type: "procfs.read", Payload: []byte(`{"path":"/proc/sys/kernel/hostname"}`)}

	d, _ := newDispatcherWith(t, "", core.Options{Executable: handlerBin, Builtins: builtin.All()})
	if _, err := d.Dispatch(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	in := d.Instances()
	if len(in) != 1 {
		t.Fatalf("instances: %+v", in)
	}
	if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", in[0].PID)); exe != "/"+core.HandlerExecutable {
		t.Errorf("the built-ins' instance runs %q, want /%s", exe, core.HandlerExecutable)
	}

	other, _ := newDispatcherWith(t, "", core.Options{Executable: handlerBin, Builtins: testBuiltins()})
	if _, err := other.Dispatch(context.Background(), req); err == nil || !strings.Contains(err.Error(), "not of the core's build") {
		t.Errorf("built-ins the handler binary lacks: %v", err)
	}
}

// blockedCLIHandler runs `cli call` with a request that blocks in a target
// (opening a FIFO that has no writer) and returns what the host sees of
// the handler process: its /proc/PID/exe link and the size of that file,
// which must not open for writing.
func blockedCLIHandler(t *testing.T, cli string) (exe string, size int64) {
	t.Helper()
	target := newTarget(t, sandbox.Options{MountProc: true, Files: map[string]string{"/mnt/x": ""}})
	if err := unix.Mkfifo(fmt.Sprintf("/proc/%d/root/mnt/fifo", target.PID()), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(cli, "call", "--config", cliConfig(t, ""), "--pid", strconv.Itoa(target.PID()), "fs.open", `{"path":"/mnt/fifo"}`)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	h := handlerBlockedInOpen(t, target.PID())
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", h))
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(fmt.Sprintf("/proc/%d/exe", h))
	if err != nil {
		t.Fatal(err)
	}
	// Nor can anyone, through the link, change what the handler runs
	// (CVE-2019-5736): it is on a read-only mount, or a sealed copy.
	if f, err := os.OpenFile(fmt.Sprintf("/proc/%d/exe", h), os.O_WRONLY, 0); err == nil {
		f.Close()
		t.Errorf("the executable of handler %d (%s) opens for writing", h, exe)
	}
	cmd.Process.Kill()
	cmd.Wait()
	waitGone(t, h, 5*time.Second)
	return exe, st.Size()
}

// handlerBlockedInOpen waits for a process in target's pid namespace,
// other than the target, to block in openat2 (system call 437 on every
// architecture), and returns its host pid.
func handlerBlockedInOpen(t *testing.T, target int) int {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		for _, p := range processesInPIDNamespaceOf(t, target) {
			tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/syscall", p))
			for _, task := range tasks {
				if sc, _ := os.ReadFile(task); p != target && strings.HasPrefix(string(sc), "437 ") {
					return p
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no handler blocked opening the FIFO")
		}
	}
}

// copyExecutable copies src to dst, mode 0755.
func copyExecutable(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeExecutable(t, dst, data, 0o755)
}
