package tests

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsplug/nsplug/core"
)

// A target whose user namespace maps host uid 0 (`unshare -U -r` run as
// root) is privileged: the kernel gives the owner of a non-dumpable
// process's /proc files (root of the host's user namespace) to its root.
// This documents, from the target's side, what that root can do to a
// busy handler (README, security model): list its fds and raise its
// oom_score_adj, though not read where the fds point or its environment.
func TestMappedRootTargetReachesHandlerProcFiles(t *testing.T) {
	parallel(t)
	probe := exec.Command("sh", "-c", `read h
ls /proc/$h/fd >/dev/null 2>&1 && echo fd-list-allowed
echo 1000 >/proc/$h/oom_score_adj 2>/dev/null && echo oom-raise-allowed
readlink /proc/$h/fd/0 >/dev/null 2>&1 || echo fd-readlink-denied
cat /proc/$h/environ >/dev/null 2>&1 || echo environ-denied
echo done
read _`)
	probe.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
		Pdeathsig:   syscall.SIGKILL,
	}
	in, _ := probe.StdinPipe()
	out, _ := probe.StdoutPipe()
	if err := probe.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { in.Close(); probe.Process.Kill(); probe.Wait() }()
	if m, _ := os.ReadFile(fmt.Sprintf("/proc/%d/uid_map", probe.Process.Pid)); len(strings.Fields(string(m))) != 3 || strings.Fields(string(m))[1] != "0" {
		t.Fatalf("target's uid_map: %q", m)
	}
	d, _ := newDispatcher(t, "")
	p := d.Go(context.Background(), core.Request{PID: probe.Process.Pid, Type: "probe.wait"})
	defer p.Terminate()
	var h int
	for deadline := time.Now().Add(10 * time.Second); h == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if live := d.Instances(); len(live) == 1 && live[0].Inflight == 1 {
			h = live[0].PID
		}
	}
	if h == 0 {
		t.Fatal("no busy handler")
	}
	assertNamespaces(t, h, probe.Process.Pid, []string{"user", "mnt"})
	fmt.Fprintln(in, h)
	var seen []string
	s := bufio.NewScanner(out)
	for s.Scan() && s.Text() != "done" {
		seen = append(seen, s.Text())
	}
	want := []string{"fd-list-allowed", "oom-raise-allowed", "fd-readlink-denied", "environ-denied"}
	if strings.Join(seen, " ") != strings.Join(want, " ") {
		t.Errorf("the target's root, on busy handler %d: %v, want %v", h, seen, want)
	}
	if adj, _ := os.ReadFile(fmt.Sprintf("/proc/%d/oom_score_adj", h)); strings.TrimSpace(string(adj)) != "1000" {
		t.Errorf("handler's oom_score_adj is %q", adj)
	}
}
