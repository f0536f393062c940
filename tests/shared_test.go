package tests

import (
	"context"
	"slices"
	"testing"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// builtinNames are nsplug's built-ins (the test binary serves probe and
// author as built-ins too).
var builtinNames = []string{"procfs", "fs", "ids", "sysctl", "mount"}

// instancesIn are the live instances serving the target.
func instancesIn(d *core.Dispatcher, pid int) []core.InstanceInfo {
	var out []core.InstanceInfo
	for _, in := range d.Instances() {
		if in.Target == pid {
			out = append(out, in)
		}
	}
	return out
}

// The built-ins of a target, every one warm, are one process (and its
// waiter) in the target's namespaces, one per target; a third-party
// plugin has a process of its own there. Seen from the host: pids and
// /proc/PID/ns inodes.
func TestBuiltinsShareOneProcessPerTarget(t *testing.T) {
	parallel(t)
	bin := sdkBuild(t, "./testdata/stallstart")
	a := newTarget(t, sandbox.Options{Rootless: true, MountProc: true})
	b := newTarget(t, sandbox.Options{Rootless: true, MountProc: true})
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"stallstart\"\npath = \""+bin+"\"\nsha256 = \""+sha256File(t, bin)+"\"\n")
	for _, target := range []*sandbox.Sandbox{a, b} {
		if err := d.Prepare(context.Background(), core.Target{PID: target.PID()}); err != nil {
			t.Fatal(err)
		}
		for _, r := range [][2]string{
			{"procfs.read", `{"path":"/proc/self/stat"}`},
			{"sysctl.get", `{"name":"kernel.hostname"}`},
			{"ids.user", `{"id":0}`},
			{"fs.listxattr", `{"path":"/"}`},
			{"mount.info", `{}`},
			{"stallstart.ping", `{}`},
		} {
			mustCall(t, d, target.PID(), r[0], r[1], nil)
		}
	}
	var shared []int
	for _, target := range []*sandbox.Sandbox{a, b} {
		insts := instancesIn(d, target.PID())
		if len(insts) != 2 {
			t.Fatalf("target %d: want 2 processes (the built-ins', stallstart's), have %+v", target.PID(), insts)
		}
		var builtins, external *core.InstanceInfo
		for i := range insts {
			if slices.Contains(insts[i].Plugins, "stallstart") {
				external = &insts[i]
			} else {
				builtins = &insts[i]
			}
		}
		if external == nil || builtins == nil || !slices.Equal(external.Plugins, []string{"stallstart"}) {
			t.Fatalf("target %d: the third-party plugin shares a process: %+v", target.PID(), insts)
		}
		for _, name := range append(builtinNames, "probe") {
			if !slices.Contains(builtins.Plugins, name) {
				t.Errorf("target %d: built-in %s not in the shared process %+v", target.PID(), name, builtins)
			}
		}
		if builtins.PID == external.PID || builtins.RunnerPID == external.RunnerPID {
			t.Errorf("target %d: one process for built-ins and a third-party plugin: %+v", target.PID(), insts)
		}
		// Both are in every namespace of the target, each a process
		// of its own.
		assertNamespaces(t, builtins.PID, target.PID(), allNS)
		assertNamespaces(t, external.PID, target.PID(), allNS)
		shared = append(shared, builtins.PID)
	}
	if shared[0] == shared[1] {
		t.Errorf("two targets served by one process %d", shared[0])
	}
	// servingPID agrees: every built-in's requests go to the one process.
	for _, name := range builtinNames {
		var pids []int
		for _, in := range instancesIn(d, a.PID()) {
			if slices.Contains(in.Plugins, name) {
				pids = append(pids, in.PID)
			}
		}
		if !slices.Equal(pids, []int{shared[0]}) {
			t.Errorf("built-in %s served by %v, want only %d", name, pids, shared[0])
		}
	}
}

// Built-ins that share a process keep their own rules: mount, allowed to
// change the host's mount namespace, does; fs, in the same process, is
// still refused, and the host is left as it was. Settings that make a
// process different (here: namespaces) give a built-in a process of its
// own.
func TestSharedProcessKeepsEachPluginsRules(t *testing.T) {
	f := newHostFixture(t)
	target := newTarget(t, sandbox.Options{Namespaces: []string{"uts", "net"}})
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"mount\"\nallow_host_changes = [\"mnt\"]\n[[plugin]]\nname = \"ids\"\nnamespaces = [\"uts\"]\n")
	mntCall(t, d, target.PID(), f.changeRequests()[0][1])
	if !hostMounted(t, f.dir) {
		t.Fatalf("allowed mount of %s did not land on the host", f.dir)
	}
	mustCall(t, d, target.PID(), "mount.umount", `{"unmounts":[{"target":"`+f.dir+`"}]}`, nil)
	for _, r := range f.changeRequests()[1:] {
		wantHostChangeRefused(t, call(t, d, target.PID(), r[0], r[1], nil), r[0])
	}
	f.assertUnchanged(t)
	mustCall(t, d, target.PID(), "ids.user", `{"id":0}`, nil)

	insts := instancesIn(d, target.PID())
	var mountPID, fsPID, procfsPID, idsPID int
	for _, in := range insts {
		for _, p := range in.Plugins {
			switch p {
			case "mount":
				mountPID = in.PID
			case "fs":
				fsPID = in.PID
			case "procfs":
				procfsPID = in.PID
			case "ids":
				idsPID = in.PID
			}
		}
	}
	if mountPID == 0 || mountPID != fsPID || mountPID != procfsPID {
		t.Errorf("mount, fs and procfs do not share one process (%d, %d, %d): %+v", mountPID, fsPID, procfsPID, insts)
	}
	if idsPID == 0 || idsPID == mountPID {
		t.Errorf("ids, configured with other namespaces, shares the process: %+v", insts)
	}
}
