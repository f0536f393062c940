package tests

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// python is Debian's interpreter, with its python3-grpcio and
// python3-grpc-tools (.ci/run installs them); not a PATH's other python.
const python = "/usr/bin/python3"

// A client in another language: Python, with stubs generated at run time
// from the published api/v1/nsplug.proto by Debian's grpc-tools, calls the
// daemon as root and as a user on their own rootless container and on
// someone else's; errors arrive with the errno detail.
func TestPythonClient(t *testing.T) {
	parallel(t)
	d := startDaemon(t, "[[server.allow]]\nuids = [4242]\ntypes = [\"procfs.*\"]\ntargets = \"owned\"\n", "")
	// The script and the proto, where every user can read them.
	dir := filepath.Dir(d.conf)
	for _, f := range [][2]string{{"testdata/pyclient/nsplug_client.py", "nsplug_client.py"}, {"../api/v1/nsplug.proto", "api/v1/nsplug.proto"}, {"../api/v1/service/service.proto", "api/v1/service/service.proto"}, {"../wire/plugin.proto", "api/wire/plugin.proto"}} {
		data, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Join(dir, filepath.Dir(f[1])), 0o755)
		if err := os.WriteFile(filepath.Join(dir, f[1]), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(dir, "api"), 0o755)
	os.Chmod(filepath.Join(dir, "api", "wire"), 0o755)
	client := func(cred *syscall.Credential, args ...string) (map[string]any, int) {
		t.Helper()
		cmd := exec.Command(python, append([]string{filepath.Join(dir, "nsplug_client.py"), filepath.Join(dir, "api"), d.socket}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Dir = "/"
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("python client %v: %v", args, err)
		}
		var v map[string]any
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("python client %v: output %q (exit %d): %v\nstderr: %s", args, out, code, err, stderr.String())
		}
		return v, code
	}

	if v, code := client(nil, "health"); code != 0 || v["status"] != "SERVING" {
		t.Errorf("health: %v (exit %d)", v, code)
	}
	v, code := client(nil, "types")
	if types, _ := v["types"].([]any); code != 0 || !strings.Contains(fmt.Sprint(types), "procfs.read") || !strings.Contains(fmt.Sprint(types), "changes:[mnt] name:mount.mount plugin:mount") {
		t.Errorf("types: %v (exit %d)", v, code)
	}

	target := newTarget(t, sandbox.Options{Hostname: "pyclient"})
	start, err := core.StartTime(target.PID())
	if err != nil {
		t.Fatal(err)
	}
	identity := fmt.Sprintf("%d:%d", target.PID(), start)
	hostname := func(v map[string]any) string {
		p, _ := v["payload"].(map[string]any)
		data, _ := base64.StdEncoding.DecodeString(fmt.Sprint(p["data"]))
		return strings.TrimSpace(string(data))
	}
	if v, code := client(nil, "call", identity, "procfs.read", `{"path":"/proc/sys/kernel/hostname"}`); code != 0 || hostname(v) != "pyclient" {
		t.Errorf("procfs.read of the target's hostname: %v (exit %d)", v, code)
	}
	for _, tc := range []struct {
		name, target, typ, payload string
		code, errnoName            string
		errno                      float64
	}{
		{"missing file", identity, "procfs.read", `{"path":"/proc/nope"}`, "NOT_FOUND", "ENOENT", 2},
		{"stale identity", fmt.Sprintf("%d:%d", target.PID(), start+1), "procfs.read", `{"path":"/proc/uptime"}`, "NOT_FOUND", "ESRCH", 3},
		{"unknown type", identity, "procfs.nope", `{}`, "UNIMPLEMENTED", "ENOTSUP", 95},
		{"bad payload", identity, "procfs.read", `[1]`, "INVALID_ARGUMENT", "EINVAL", 22},
	} {
		v, code := client(nil, "call", tc.target, tc.typ, tc.payload)
		if code != 1 || v["code"] != tc.code || v["errno_name"] != tc.errnoName || v["errno"] != tc.errno || v["message"] == "" {
			t.Errorf("%s: %v (exit %d), want %s with %s (%v)", tc.name, v, code, tc.code, tc.errnoName, tc.errno)
		}
	}

	// A user on their own rootless container, and on someone else's.
	user := &syscall.Credential{Uid: 4242, Gid: 4242}
	mine, theirs := ownedTarget(t, 4242), ownedTarget(t, 4343)
	if v, code := client(user, "call", fmt.Sprint(mine), "procfs.read", `{"path":"/proc/self/uid_map"}`); code != 0 || !strings.Contains(fmt.Sprint(v["payload"]), "data:") {
		t.Errorf("uid 4242 on its own container: %v (exit %d)", v, code)
	}
	// Instances says whom each handler is charged to: the user's, and
	// root's (the first target's) to nobody.
	accounts := map[string]int{}
	for _, in := range d.instances(t, d.client(t)) {
		accounts[in.Account]++
	}
	if accounts["uid 4242"] != 1 || accounts[""] != 1 || len(accounts) != 2 {
		t.Errorf("instances by account %v, want one of uid 4242's and one of root's", accounts)
	}
	v, code = client(user, "call", fmt.Sprint(theirs), "procfs.read", `{"path":"/proc/self/uid_map"}`)
	if code != 1 || v["code"] != "PERMISSION_DENIED" || v["errno_name"] != "EACCES" || !strings.Contains(fmt.Sprint(v["message"]), "owned by uid 4343") {
		t.Errorf("uid 4242 on uid 4343's container: %v (exit %d)", v, code)
	}
	// A direct channel, opened and used by hand: the fast path's frames,
	// the socket taken from SCM_RIGHTS, the plugin contract's messages.
	if v, code := client(user, "channel", fmt.Sprint(mine), "procfs.read", "100", `{"path":"/proc/self/uid_map"}`); code != 0 || v["served"] != 100.0 || !strings.Contains(fmt.Sprint(v["payload"]), "data:") {
		t.Errorf("uid 4242's channel to its own container: %v (exit %d)", v, code)
	}
	if v, code := client(user, "channel", fmt.Sprint(theirs), "procfs.read", "1"); code != 1 || v["errno_name"] != "EACCES" {
		t.Errorf("uid 4242's channel to uid 4343's container: %v (exit %d)", v, code)
	}
	v, code = client(user, "call", fmt.Sprint(mine), "sysctl.get", `{"name":"kernel.hostname"}`)
	if code != 1 || v["code"] != "PERMISSION_DENIED" || !strings.Contains(fmt.Sprint(v["message"]), "sysctl.get") {
		t.Errorf("uid 4242 outside its types: %v (exit %d)", v, code)
	}
}

// nsplug health is a probe: SERVING and exit 0 from a serving daemon, a
// failure (exit 1) where none serves.
func TestCLIHealth(t *testing.T) {
	parallel(t)
	d := startDaemon(t, "", "")
	if out, errOut, code := runNsplug(t, nil, nil, "health", "--addr", d.addr); code != 0 || out != "SERVING\n" {
		t.Errorf("health: %q %q exit %d", out, errOut, code)
	}
	if out, errOut, code := runNsplug(t, []string{"NSPLUG_ADDR=" + d.addr}, &syscall.Credential{Uid: 65534, Gid: 65534}, "health"); code != 0 || out != "SERVING\n" {
		t.Errorf("health as nobody through NSPLUG_ADDR: %q %q exit %d", out, errOut, code)
	}
	gone := "unix://" + filepath.Join(t.TempDir(), "none.sock")
	if _, errOut, code := runNsplug(t, nil, nil, "health", "--addr", gone, "--timeout", "2s"); code != 1 || !strings.Contains(errOut, "health of "+gone) {
		t.Errorf("health with no daemon: %q exit %d", errOut, code)
	}
}
