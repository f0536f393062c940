package safefile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Needs root for the file owned by another user (and /tmp, the tests'
// temporary directory, is root's and sticky).
func TestCheck(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a file owned by another user is made with chown")
	}
	dir := func(t *testing.T, mode os.FileMode) string {
		d := filepath.Join(t.TempDir(), "d")
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		os.Chmod(d, mode)
		return d
	}
	file := func(t *testing.T, d string, mode os.FileMode) string {
		p := filepath.Join(d, "f")
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	ok := func(t *testing.T, path string, follow bool) {
		t.Helper()
		if err := Check(path, follow); err != nil {
			t.Errorf("Check(%s, %v): %v", path, follow, err)
		}
	}
	refused := func(t *testing.T, path string, follow bool, why string) {
		t.Helper()
		if err := Check(path, follow); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("Check(%s, %v): %v, want an error saying %q", path, follow, err, why)
		}
	}
	t.Run("safe", func(t *testing.T) {
		ok(t, file(t, dir(t, 0o755), 0o644), false)
		ok(t, file(t, dir(t, 0o777|os.ModeSticky), 0o755), false) // the file's owner decides
	})
	t.Run("file writable by group", func(t *testing.T) {
		refused(t, file(t, dir(t, 0o755), 0o664), false, "writable by group or others (mode -rw-rw-r--)")
	})
	t.Run("directory writable by others", func(t *testing.T) {
		d := dir(t, 0o777)
		refused(t, file(t, d, 0o644), false, d+" is writable by group or others")
	})
	t.Run("a directory above writable", func(t *testing.T) {
		up := dir(t, 0o775)
		inner := filepath.Join(up, "inner")
		if err := os.Mkdir(inner, 0o755); err != nil {
			t.Fatal(err)
		}
		refused(t, file(t, inner, 0o644), false, up+" is writable by group or others")
	})
	t.Run("owned by another user", func(t *testing.T) {
		p := file(t, dir(t, 0o755), 0o644)
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		refused(t, p, false, "owned by uid 65534")
	})
	t.Run("not a regular file", func(t *testing.T) {
		refused(t, dir(t, 0o755), false, "not a regular file (a directory)")
	})
	t.Run("symbolic links", func(t *testing.T) {
		target := file(t, dir(t, 0o755), 0o644)
		link := filepath.Join(dir(t, 0o755), "link")
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		refused(t, link, false, "not a regular file (a symbolic link)")
		ok(t, link, true)
		unsafe := file(t, dir(t, 0o777), 0o644)
		toUnsafe := filepath.Join(dir(t, 0o755), "link")
		if err := os.Symlink(unsafe, toUnsafe); err != nil {
			t.Fatal(err)
		}
		refused(t, toUnsafe, true, "writable by group or others")
		inUnsafe := filepath.Join(dir(t, 0o777), "link")
		if err := os.Symlink(target, inUnsafe); err != nil {
			t.Fatal(err)
		}
		refused(t, inUnsafe, true, "writable by group or others") // the link can be replaced
	})
	t.Run("missing", func(t *testing.T) {
		if err := Check(filepath.Join(t.TempDir(), "none"), true); !os.IsNotExist(err) {
			t.Errorf("missing file: %v, want ErrNotExist", err)
		}
	})
}
