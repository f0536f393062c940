package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// inTarget runs a shell command in every namespace of the target, as its
// root (what a process of the container would do).
func inTarget(t *testing.T, pid int, script string) {
	t.Helper()
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-a", "sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("in target: %s: %v: %s", script, err, out)
	}
}

func callAs(d *core.Dispatcher, pid int, creds *core.Credentials, typ, payload string) (json.RawMessage, error) {
	return d.Dispatch(context.Background(), core.Request{PID: pid, Type: typ, Payload: json.RawMessage(payload), Credentials: creds})
}

// A request acting for an unprivileged uid gets EACCES where that uid
// would; groups and capabilities it holds are honoured.
func TestCredentialsArePermissionChecked(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, MountProc: true, Files: map[string]string{"/mnt/placeholder": ""}})
	pid := target.PID()
	inTarget(t, pid, "echo secret > /mnt/secret && chmod 600 /mnt/secret && "+
		"echo team > /mnt/team && chown 0:2000 /mnt/team && chmod 640 /mnt/team && "+
		"mkdir -p /mnt/jail && echo jailed > /mnt/jail/inside")
	d, _ := newDispatcher(t, "")
	read := `{"path":"/mnt/secret"}`

	if _, err := callAs(d, pid, nil, "procfs.read", read); err != nil {
		t.Fatalf("as the target's root: %v", err)
	}
	user := &core.Credentials{UID: 1000, GID: 1000}
	_, err := callAs(d, pid, user, "procfs.read", read)
	wantErrno(t, err, syscall.EACCES, "/mnt/secret")
	// The same read, done by that uid inside the target, fails the same way.
	out, nerr := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-a", "-S", "1000", "-G", "1000", "cat", "/mnt/secret").CombinedOutput()
	if nerr == nil || !strings.Contains(string(out), "Permission denied") {
		t.Errorf("nsenter -S 1000 cat: %v %s", nerr, out)
	}

	// The handler runs as that uid: 1000 inside, 101000 on the host.
	var w whoami
	resp, err := callAs(d, pid, &core.Credentials{UID: 1000, GID: 1000, Cwd: "/mnt"}, "probe.whoami", `{}`)
	if err != nil {
		t.Fatal(err)
	}
	json.Unmarshal(resp, &w)
	if w.UID != 1000 || w.GID != 1000 || w.Cwd != "/mnt" {
		t.Errorf("handler as 1000: %+v", w)
	}
	for _, in := range d.Instances() {
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", in.PID))
		// The process that answered, whose pid in the target is w.PID:
		// the built-ins' process for root credentials serves probe too.
		if !slices.Contains(in.Plugins, "probe") || !regexp.MustCompile(fmt.Sprintf(`(?m)^NSpid:.*\t%d$`, w.PID)).Match(status) {
			continue
		}
		if !strings.Contains(string(status), "Uid:\t101000\t101000\t101000\t101000") || !strings.Contains(string(status), "CapEff:\t0000000000000000") {
			t.Errorf("host view of the handler acting for 1000:\n%s", status)
		}
	}

	// Supplementary groups count.
	if _, err := callAs(d, pid, &core.Credentials{UID: 1000, GID: 1000}, "procfs.read", `{"path":"/mnt/team"}`); err == nil {
		t.Errorf("uid 1000 without group 2000 read a 0640 file of group 2000")
	}
	if _, err := callAs(d, pid, &core.Credentials{UID: 1000, GID: 1000, Groups: []uint32{2000}}, "procfs.read", `{"path":"/mnt/team"}`); err != nil {
		t.Errorf("uid 1000 in group 2000: %v", err)
	}

	// Capabilities count: CAP_DAC_READ_SEARCH lets uid 1000 read anything.
	dacRead := uint64(1) << 2
	caps := &core.Credentials{UID: 1000, GID: 1000, Capabilities: &core.CapabilitySets{Effective: dacRead, Permitted: dacRead}}
	if _, err := callAs(d, pid, caps, "procfs.read", read); err != nil {
		t.Errorf("uid 1000 with CAP_DAC_READ_SEARCH: %v", err)
	}

	// Root: paths resolve beneath it.
	var r struct{ Data []byte }
	resp, err = callAs(d, pid, &core.Credentials{UID: 0, GID: 0, Root: "/mnt/jail"}, "procfs.read", `{"path":"/inside"}`)
	if err != nil || json.Unmarshal(resp, &r) != nil || string(r.Data) != "jailed\n" {
		t.Errorf("with root /mnt/jail: %s %v", resp, err)
	}

	// One caller's instance never serves another's.
	keys := make(map[string]int)
	for _, in := range d.Instances() {
		for _, p := range in.Plugins {
			keys[p]++
		}
	}
	if keys["procfs"] < 5 {
		t.Errorf("want an instance per set of credentials, have %v", d.Instances())
	}

	// Bad credentials get precise errors.
	_, err = callAs(d, pid, &core.Credentials{UID: 70000, GID: 0}, "procfs.read", read)
	wantErrno(t, err, syscall.EINVAL, "70000", "not mapped")
	_, err = callAs(d, pid, &core.Credentials{UID: 1000, GID: 1000, Capabilities: &core.CapabilitySets{Effective: 4}}, "procfs.read", read)
	wantErrno(t, err, syscall.EINVAL, "not all permitted")
	_, err = callAs(d, pid, &core.Credentials{Root: "relative"}, "procfs.read", read)
	wantErrno(t, err, syscall.EINVAL, "not absolute")
	_, err = callAs(d, pid, &core.Credentials{UID: 1000, GID: 1000, Cwd: "/nonexistent"}, "procfs.read", read)
	wantErrno(t, err, syscall.EIO, "/nonexistent")
}

// In a target sharing the core's user namespace, credentials are host ids.
func TestCredentialsInARootfulTarget(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true, Files: map[string]string{"/mnt/placeholder": ""}})
	inTarget(t, target.PID(), "echo secret > /mnt/secret && chmod 600 /mnt/secret")
	d, _ := newDispatcher(t, "")
	_, err := callAs(d, target.PID(), &core.Credentials{UID: 65534, GID: 65534}, "procfs.read", `{"path":"/mnt/secret"}`)
	wantErrno(t, err, syscall.EACCES)
	var w whoami
	resp, err := callAs(d, target.PID(), &core.Credentials{UID: 65534, GID: 65534}, "probe.whoami", `{}`)
	if err != nil || json.Unmarshal(resp, &w) != nil || w.UID != 65534 {
		t.Errorf("whoami as nobody: %s %v", resp, err)
	}
}
