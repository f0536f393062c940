package core

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/config"
)

// overlayOrSkip opens path through the detached overlay, skipping the
// test where the kernel or the privileges allow none (the fallback's
// case, tested below).
func overlayOrSkip(t *testing.T, path, below string) *sealedExecutable {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the overlay needs CAP_SYS_ADMIN")
	}
	exe, err := overlayExecutable("t", path, below, 1<<30)
	if errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOSYS) {
		t.Skipf("no overlayfs or no new mount API in this kernel: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(exe.close)
	return exe
}

func testExecutable(t *testing.T) (dir, path, sum string) {
	t.Helper()
	dir = t.TempDir()
	data, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "true")
	if err := os.WriteFile(path, data, 0o755); err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(data)
	return dir, path, hex.EncodeToString(h[:])
}

// The file on the overlay runs, hashes to the file's bytes, and cannot be
// written through its descriptor; a later change of the path is not seen.
func TestOverlayExecutable(t *testing.T) {
	_, path, sum := testExecutable(t)
	exe := overlayOrSkip(t, path, t.TempDir())
	if err := exec.Command(exe.path()).Run(); err != nil {
		t.Fatalf("running it: %v", err)
	}
	for _, flag := range []int{os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC} {
		if f, err := os.OpenFile(exe.path(), flag, 0); !errors.Is(err, unix.EROFS) {
			t.Errorf("open flags %#x: %v, want EROFS", flag, err)
			if f != nil {
				f.Close()
			}
		}
	}
	// The path now names another file: what runs does not change.
	if err := os.Rename(path, path+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("#!/bin/false\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command(exe.path()).Run(); err != nil {
		t.Errorf("running it after the path was replaced: %v", err)
	}
	if got := exe.sum(); got != sum {
		t.Errorf("sum %s, want %s", got, sum)
	}
}

// What the overlay refuses, the caller copies: a path with a comma (the
// legacy option parser splits there), a directory above the other layer
// (overlayfs refuses overlapping layers), a file that is not executable.
func TestOverlayExecutableRefusals(t *testing.T) {
	dir, path, _ := testExecutable(t)
	overlayOrSkip(t, path, t.TempDir())
	comma := filepath.Join(t.TempDir(), "a,b")
	os.Mkdir(comma, 0o700)
	if _, err := overlayExecutable("t", path, comma, 1<<30); err == nil || !strings.Contains(err.Error(), "comma") {
		t.Errorf("a comma: %v", err)
	}
	inside := filepath.Join(dir, "below")
	os.Mkdir(inside, 0o700)
	if _, err := overlayExecutable("t", path, inside, 1<<30); err == nil {
		t.Errorf("overlapping layers: no error")
	}
	os.Chmod(path, 0o644)
	if _, err := overlayExecutable("t", path, t.TempDir(), 1<<30); err == nil || !strings.Contains(err.Error(), "not executable") {
		t.Errorf("not executable: %v", err)
	}
	os.Chmod(path, 0o755)
	if _, err := overlayExecutable("t", path, t.TempDir(), 10); err == nil || !strings.Contains(err.Error(), "max_plugin_bytes") {
		t.Errorf("too large: %v", err)
	}
}

// Where no overlay can be made, the built-ins run from a sealed copy.
func TestOpenSelfFallsBackToACopy(t *testing.T) {
	_, path, sum := testExecutable(t)
	l := &loader{d: &Dispatcher{log: hclog.NewNullLogger(), runDir: &runDir{root: filepath.Join(t.TempDir(), "run,dir")}}, cfg: config.Default(), self: path}
	exe, err := l.openSelf()
	if err != nil {
		t.Fatal(err)
	}
	defer exe.close()
	if link, _ := os.Readlink(exe.path()); !strings.HasPrefix(link, "/memfd:nsplug-builtin") {
		t.Errorf("exe %s, want a memfd", link)
	}
	if exe.sum() != sum {
		t.Errorf("sum %s, want %s", exe.sum(), sum)
	}
}

// The handler binary next to the core's executable is used only when no
// one but root or the core's user could have put it there or replaced it.
func TestHandlerNextTo(t *testing.T) {
	exe := func(t *testing.T, dirMode os.FileMode) (dir, core string) {
		dir = filepath.Join(t.TempDir(), "bin")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, dirMode)
		core = filepath.Join(dir, "nsplug")
		if err := os.WriteFile(core, []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return dir, core
	}
	t.Run("none", func(t *testing.T) {
		_, core := exe(t, 0o755)
		if got, err := handlerNextTo(core); got != "" || err != nil {
			t.Errorf("no handler binary: %q, %v", got, err)
		}
	})
	t.Run("safe", func(t *testing.T) {
		for _, mode := range []os.FileMode{0o755, 0o777 | os.ModeSticky} { // a sticky directory: the file's owner decides
			dir, core := exe(t, mode)
			want := filepath.Join(dir, HandlerExecutable)
			if err := os.WriteFile(want, nil, 0o755); err != nil {
				t.Fatal(err)
			}
			if got, err := handlerNextTo(core); got != want || err != nil {
				t.Errorf("directory %v: %q, %v; want %q", mode, got, err, want)
			}
		}
	})
	refused := func(t *testing.T, core, why string) {
		t.Helper()
		got, err := handlerNextTo(core)
		if got != "" || err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("%q, %v; want an error saying %q", got, err, why)
		}
	}
	t.Run("writable by others", func(t *testing.T) {
		dir, core := exe(t, 0o755)
		path := filepath.Join(dir, HandlerExecutable)
		if err := os.WriteFile(path, nil, 0o755); err != nil {
			t.Fatal(err)
		}
		os.Chmod(path, 0o775)
		refused(t, core, "writable by group or others")
	})
	t.Run("directory writable by others", func(t *testing.T) {
		dir, core := exe(t, 0o777)
		if err := os.WriteFile(filepath.Join(dir, HandlerExecutable), nil, 0o755); err != nil {
			t.Fatal(err)
		}
		refused(t, core, "writable by group or others")
	})
	t.Run("owned by another user", func(t *testing.T) {
		dir, core := exe(t, 0o755)
		path := filepath.Join(dir, HandlerExecutable)
		if err := os.WriteFile(path, nil, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(path, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		refused(t, core, "owned by uid 65534")
	})
	t.Run("a symlink", func(t *testing.T) {
		dir, core := exe(t, 0o755)
		if err := os.Symlink(core, filepath.Join(dir, HandlerExecutable)); err != nil {
			t.Fatal(err)
		}
		refused(t, core, "not a regular file")
	})
}
