package handler

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

const procSysChild = "NSPLUG_TEST_PROCSYS_CHILD"

// ReadProcSys reads a sysctl of the process's /proc/sys and refuses
// (EXDEV) what a mount covers instead of reading past it: a file bound on
// the sysctl, and a /proc/sys that a later mount replaced, which it must
// notice. The checks run in a child in a mount namespace of its own
// (unshare -m), so that its mounts stay its own.
func TestReadProcSys(t *testing.T) {
	if os.Getenv(procSysChild) == "" {
		if os.Geteuid() != 0 {
			t.Skip("needs root: the child mounts in a mount namespace of its own")
		}
		cmd := exec.Command("unshare", "-m", "--propagation", "private", os.Args[0], "-test.run", "^TestReadProcSys$", "-test.v")
		cmd.Env = append(os.Environ(), procSysChild+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		return
	}
	env := EnvFrom(WithEnv(context.Background(), &Env{}))
	host, err := os.ReadFile("/proc/sys/kernel/hostname")
	if err != nil {
		t.Fatal(err)
	}
	read := func(want []byte, wantErr syscall.Errno, after string) {
		t.Helper()
		got, err := env.ReadProcSys("kernel/hostname", 64)
		if wantErr != 0 {
			if !errors.Is(err, wantErr) {
				t.Errorf("after %s: ReadProcSys = %q, %v; want %v", after, got, err, wantErr)
			}
			return
		}
		if err != nil || string(got) != string(want) {
			t.Errorf("after %s: ReadProcSys = %q, %v; want %q", after, got, err, want)
		}
	}
	mount := func(src, dst, fstype string, flags uintptr) string {
		t.Helper()
		if err := unix.Mount(src, dst, fstype, flags, ""); err != nil {
			t.Fatalf("mount %s on %s: %v", src, dst, err)
		}
		return "a mount on " + dst
	}
	unmount := func(dst string) string {
		t.Helper()
		if err := unix.Unmount(dst, 0); err != nil {
			t.Fatalf("umount %s: %v", dst, err)
		}
		return "unmounting " + dst
	}
	planted := filepath.Join(t.TempDir(), "planted")
	if err := os.WriteFile(planted, []byte("planted\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	read(host, 0, "the start")
	read(host, 0, "a second read")
	read(nil, syscall.EXDEV, mount(planted, "/proc/sys/kernel/hostname", "", unix.MS_BIND))
	read(host, 0, unmount("/proc/sys/kernel/hostname"))
	read(nil, syscall.EXDEV, mount("none", "/proc/sys", "tmpfs", 0))
	read(host, 0, unmount("/proc/sys"))
	// A bind of procfs's own /proc/sys (as runc makes it read-only) is
	// still the sysctl root.
	read(host, 0, mount("/proc/sys", "/proc/sys", "", unix.MS_BIND))
	if _, err := env.ReadProcSys("kernel/no-such-sysctl", 64); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("a missing sysctl: %v, want ENOENT", err)
	}
	if _, err := env.ReadProcSys("kernel/hostname", 2); !errors.Is(err, syscall.EFBIG) {
		t.Errorf("a 2-byte limit: %v, want EFBIG", err)
	}
	if _, err := env.ReadProcSys("../self/status", 4096); err == nil {
		t.Errorf("a path out of /proc/sys was read")
	}
}
