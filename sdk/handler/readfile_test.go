package handler

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ReadFile reads regular files up to its bound and refuses the rest with
// one errno each, naming the path, without opening FIFOs or devices.
func TestEnvReadFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	small := write("small", "hello")
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("small", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	env := EnvFrom(WithEnv(context.Background(), &Env{}))

	if data, err := env.ReadFile(small, 5); err != nil || string(data) != "hello" {
		t.Errorf("ReadFile(small, 5) = %q, %v", data, err)
	}
	if data, err := env.ReadFile(filepath.Join(dir, "link"), 5); err != nil || string(data) != "hello" {
		t.Errorf("through a symbolic link: %q, %v", data, err)
	}
	// /proc files say they are empty: the bound is found by reading.
	if data, err := env.ReadFile("/proc/self/stat", 1<<20); err != nil || len(data) == 0 {
		t.Errorf("ReadFile(/proc/self/stat) = %q, %v", data, err)
	}
	start := time.Now()
	for _, c := range []struct {
		path  string
		max   int64
		errno syscall.Errno
		frags []string
	}{
		{small, 4, syscall.EFBIG, []string{small, "4-byte limit"}},
		{"/proc/self/stat", 8, syscall.EFBIG, []string{"/proc/self/stat", "8-byte limit"}},
		{dir, 5, syscall.EISDIR, []string{dir, "directory"}},
		{fifo, 5, syscall.EINVAL, []string{fifo, "a FIFO", "not a regular file"}},
		{"/dev/null", 5, syscall.EINVAL, []string{"/dev/null", "a character device"}},
		{filepath.Join(dir, "none"), 5, syscall.ENOENT, []string{"opening " + filepath.Join(dir, "none")}},
		{"/proc/self/root" + small, 5, syscall.ELOOP, []string{"magic link"}},
		{small, 0, syscall.EINVAL, []string{"limit 0"}},
		{"relative", 5, syscall.EINVAL, []string{"not absolute"}},
	} {
		_, err := env.ReadFile(c.path, c.max)
		var e *Error
		if !errors.As(err, &e) || e.Errno != c.errno {
			t.Errorf("ReadFile(%s, %d): %v, want %v", c.path, c.max, err, c.errno)
			continue
		}
		for _, f := range c.frags {
			if !strings.Contains(e.Message, f) {
				t.Errorf("ReadFile(%s, %d): %q does not say %q", c.path, c.max, e.Message, f)
			}
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the refusals took %v (a FIFO opened?)", d)
	}
	// Allowed roots apply as for Open.
	env.SetAllowedRoots([]string{filepath.Join(dir, "sub")})
	if _, err := env.ReadFile(small, 5); !errors.Is(err, syscall.EACCES) {
		t.Errorf("outside the allowed roots: %v, want EACCES", err)
	}
}
