package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// Root of a target that shares the host's user namespace (a privileged
// container: every capability, CAP_SYS_PTRACE among them, so that it may
// open /proc/PID/exe of a handler in its pid namespace) can read the
// executable a handler runs but not change it: not the built-ins' (the
// core's own executable through a detached read-only overlay, or its
// sealed copy where the overlay cannot be made: a comma in runtime_dir
// stands for that) and not a third-party plugin's (always a sealed copy).
func TestTargetRootCannotModifyTheHandlersExecutable(t *testing.T) {
	parallel(t)
	self, _ := os.Executable()
	sum := sha256File(t, self)
	for _, c := range []struct {
		name, runDir, toml, plugin, typ, exe string
	}{
		{"builtin", "run", "", "probe", "probe.whoami", "/" + filepath.Base(self)},
		{"builtin copy", "run,copy", "", "probe", "probe.whoami", "/memfd:nsplug-builtin"},
		// Named apart from extprobe, which other tests watch for by name.
		{"third-party", "run", fmt.Sprintf("[[plugin]]\nname = \"sealprobe\"\npath = %q\nsha256 = %q\n", self, sum), "sealprobe", "extprobe.whoami", "/memfd:nsplug-sealprobe"},
	} {
		t.Run(c.name, func(t *testing.T) {
			target := newTarget(t, sandbox.Options{MountProc: true})
			d, _, err := newCoreIn(t, filepath.Join(t.TempDir(), c.runDir), c.toml, core.Options{}, time.Minute, nil)
			if err != nil {
				t.Fatal(err)
			}
			mustCall(t, d, target.PID(), c.typ, `{}`, nil)
			h := servingPID(t, d, c.plugin)
			if link, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", h)); !strings.HasPrefix(link, c.exe) {
				t.Errorf("handler exe %q, want %s...", link, c.exe)
			}
			assertExeSealed(t, h)
			exe := fmt.Sprintf("/proc/%d/exe", innerPID(t, h))
			inTarget := func(script string) (string, error) {
				out, err := exec.Command("nsenter", "-t", strconv.Itoa(target.PID()), "-a", "sh", "-c", script).CombinedOutput()
				return string(out), err
			}
			// The file is there to be read: the writes below fail for
			// what it is, not for want of access.
			if out, err := inTarget("head -c4 " + exe); err != nil || out != "\x7fELF" {
				t.Fatalf("root in the target could not read %s: %v %q", exe, err, out)
			}
			for _, script := range []string{
				"printf x >> " + exe,
				"printf x 1<> " + exe,
				"exec 3<> " + exe + " && dd if=/dev/zero bs=1 count=1 seek=100 conv=notrunc >&3",
				"truncate -s 0 " + exe,
			} {
				out, err := inTarget(script)
				if err == nil {
					t.Errorf("root in the target: %q succeeded: %s", script, out)
				} else if !strings.Contains(out, "Read-only file system") && !strings.Contains(out, "Operation not permitted") && !strings.Contains(out, "Text file busy") {
					// EROFS: the overlay; EPERM: the memfd's seals; ETXTBSY:
					// a file being executed, on kernels that still say so.
					t.Errorf("root in the target: %q failed, but not as a sealed file: %v %s", script, err, out)
				}
			}
			if got := sha256File(t, fmt.Sprintf("/proc/%d/exe", h)); got != sum {
				t.Errorf("the handler's executable changed: sha256 %s, want %s", got, sum)
			}
			mustCall(t, d, target.PID(), c.typ, `{}`, nil)
		})
	}
}

// assertExeSealed checks that the executable of plugin process pid is no
// host file: a sealed memfd, or a file on a mount attached nowhere (the
// path /proc/PID/exe shows is not it); and that not even host root can
// write it.
func assertExeSealed(t *testing.T, pid int) {
	t.Helper()
	exe := fmt.Sprintf("/proc/%d/exe", pid)
	link, err := os.Readlink(exe)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(link, "/memfd:nsplug") {
		var got, named unix.Stat_t
		if err := unix.Stat(exe, &got); err != nil {
			t.Fatal(err)
		}
		if unix.Stat(link, &named) == nil && named.Dev == got.Dev && named.Ino == got.Ino {
			t.Errorf("plugin process %d runs a host file: %s", pid, link)
		}
	}
	f, err := os.OpenFile(exe, os.O_WRONLY|os.O_APPEND, 0)
	if err == nil {
		_, err = f.Write([]byte{0})
		f.Close()
	}
	if err == nil {
		t.Errorf("host root wrote to the executable of plugin process %d (%s)", pid, link)
	}
}
