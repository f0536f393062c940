package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nsplug/nsplug/sandbox"
)

// The front (bin/nsplug) hands serve, health and third-party plugins to
// bin/nsplugd beside it, and to nothing else: a missing, foreign or
// writable nsplugd is refused with a message naming it, before anything
// runs.
func TestFrontHandsOverOnlyToASafeFullBinary(t *testing.T) {
	t.Parallel()
	front, err := os.ReadFile(nsplugBin)
	if err != nil {
		t.Fatal(err)
	}
	full, err := os.ReadFile(filepath.Join(filepath.Dir(nsplugBin), "nsplugd"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		setup func(dir string) // makes dir/nsplugd, or not
		want  string
	}{
		{"missing", func(string) {}, "this command needs"},
		{"group-writable", func(dir string) { write(t, dir, full, 0o775) }, "writable by group or others"},
		{"foreign owner", func(dir string) {
			write(t, dir, full, 0o755)
			if err := os.Chown(filepath.Join(dir, "nsplugd"), 4242, 4242); err != nil {
				t.Fatal(err)
			}
		}, "owned by uid 4242"},
		{"not a regular file", func(dir string) {
			if err := os.Mkdir(filepath.Join(dir, "nsplugd"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
		{"safe", func(dir string) { write(t, dir, full, 0o755) }, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			write(t, dir, front, 0o755)
			c.setup(dir)
			out, err := exec.Command(filepath.Join(dir, "nsplug"), "health", "--addr", "unix://"+filepath.Join(dir, "none.sock"), "--timeout", "1s").CombinedOutput()
			code := exitCode(err)
			if c.want == "" {
				// nsplugd ran: its health check of a socket that is not there.
				if code != 1 || !strings.Contains(string(out), "health of unix://") || strings.Contains(string(out), "refusing") {
					t.Errorf("exit %d, output %q: want nsplugd's failed health check", code, out)
				}
				return
			}
			if code != 1 || !strings.Contains(string(out), c.want) || !strings.Contains(string(out), filepath.Join(dir, "nsplugd")) {
				t.Errorf("exit %d (%v), output %q: want exit 1 and %q naming %s", code, err, out, c.want, filepath.Join(dir, "nsplugd"))
			}
		})
	}
}

func write(t *testing.T, dir string, data []byte, mode os.FileMode) {
	t.Helper()
	name := "nsplug"
	if _, err := os.Stat(filepath.Join(dir, "nsplug")); err == nil {
		name = "nsplugd"
	}
	writeExecutable(t, filepath.Join(dir, name), data, mode)
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// A call whose payload comes on stdin ("-") and that the front hands to
// nsplugd (here, for a configuration with a third-party plugin) reaches
// nsplugd with the same payload: the front read stdin before it knew.
func TestFrontHandsOverThePayloadOnStdin(t *testing.T) {
	t.Parallel()
	target := newTarget(t, sandbox.Options{Hostname: "front-stdin", MountProc: true})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	conf := cliConfig(t, fmt.Sprintf("[[plugin]]\nname = \"extprobe\"\npath = %q\n", self))
	cmd := exec.Command(nsplugBin, "call", "--config", conf, "--pid", strconv.Itoa(target.PID()), "procfs.read", "-")
	cmd.Stdin = strings.NewReader(`{"path":"/proc/sys/kernel/hostname"}`)
	out, err := cmd.Output()
	var resp struct{ Data []byte }
	if err != nil || json.Unmarshal(out, &resp) != nil || string(resp.Data) != "front-stdin\n" {
		t.Errorf("out %q, err %v: want the target's hostname", out, err)
	}
}
