package fs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sdk/handler"
)

// Unit tests of what the integration tests (tests/fs_test.go) cannot
// provoke in a real target: an attribute growing between the size query
// and the read, and kernels without getxattrat(2) and friends.

func TestReadSizedRetriesWhenTheValueGrows(t *testing.T) {
	value := []byte("abc")
	calls := 0
	got, err := readSized(XattrSizeMax, func(buf []byte) (int, error) {
		calls++
		if calls == 2 { // after the size query, before the read
			value = append(value, "defgh"...)
		}
		if len(buf) == 0 {
			return len(value), nil
		}
		if len(buf) < len(value) {
			return 0, unix.ERANGE
		}
		return copy(buf, value), nil
	})
	if err != nil || string(got) != "abcdefgh" || calls != 4 {
		t.Errorf("got %q, %v after %d calls; want abcdefgh after 4", got, err, calls)
	}
}

func TestReadSizedGivesUpWithE2BIG(t *testing.T) {
	// Always ERANGE: it keeps growing, then is too large for any buffer.
	calls := 0
	_, err := readSized(16, func(buf []byte) (int, error) {
		calls++
		if len(buf) == 0 {
			return 8, nil
		}
		return 0, unix.ERANGE
	})
	if !errors.Is(err, unix.E2BIG) || calls != 2*sizeRetries+1 {
		t.Errorf("err %v after %d calls", err, calls)
	}
	// A size beyond the limit is E2BIG at once.
	if _, err := readSized(16, func([]byte) (int, error) { return 17, nil }); !errors.Is(err, unix.E2BIG) {
		t.Errorf("size 17 with limit 16: %v", err)
	}
	// An empty value is one query, and not nil (JSON "", not null).
	got, err := readSized(16, func([]byte) (int, error) { return 0, nil })
	if err != nil || got == nil || len(got) != 0 {
		t.Errorf("empty value: %#v %v", got, err)
	}
}

// userXattrDir is a directory on a file system with user.* attributes.
func userXattrDir(t *testing.T) string {
	dir := t.TempDir()
	if err := unix.Setxattr(dir, "user.probe", []byte("x"), 0); err != nil {
		t.Skipf("%s has no user.* extended attributes: %v", dir, err)
	}
	return dir
}

// Both system call paths (getxattrat(2) and friends since Linux 6.13; the
// l*xattr fallback on a thread with a private cwd before) do the same.
func TestXattrHandlersWithAndWithoutXattrat(t *testing.T) {
	dir := userXattrDir(t)
	for _, at := range []bool{true, false} {
		name := map[bool]string{true: "xattrat", false: "fallback"}[at]
		t.Run(name, func(t *testing.T) {
			defer haveXattrat.Store(haveXattrat.Load())
			haveXattrat.Store(at)
			ctx := context.Background()
			f := filepath.Join(dir, name)
			if err := os.WriteFile(f, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(name, f+".link"); err != nil {
				t.Fatal(err)
			}
			cwd, _ := os.Getwd()
			if _, err := setxattr(ctx, SetxattrRequest{Path: handler.Name(f + ".link"), Name: "user.a", Value: []byte("1")}); err != nil {
				t.Fatal(err)
			}
			if _, err := setxattr(ctx, SetxattrRequest{Path: handler.Name(f), Name: "user.b", Value: bytes.Repeat([]byte("z"), 1000)}); err != nil {
				t.Fatal(err)
			}
			v, err := getxattr(ctx, GetxattrRequest{Path: handler.Name(f), Name: "user.a"})
			if err != nil || string(v.Value) != "1" {
				t.Errorf("getxattr: %q %v", v.Value, err)
			}
			l, err := listxattr(ctx, ListxattrRequest{Path: handler.Name(f + ".link")})
			if err != nil || !slices.Equal(l.Names, []handler.Name{"user.a", "user.b"}) {
				t.Errorf("listxattr: %q %v", l.Names, err)
			}
			if _, err := setxattr(ctx, SetxattrRequest{Path: handler.Name(f + ".link"), Name: "user.c", Nofollow: true}); !errors.Is(err, unix.EPERM) {
				t.Errorf("user.* on a link itself: %v, want EPERM", err)
			}
			if _, err := removexattr(ctx, RemovexattrRequest{Path: handler.Name(f), Name: "user.a"}); err != nil {
				t.Error(err)
			}
			if _, err := getxattr(ctx, GetxattrRequest{Path: handler.Name(f), Name: "user.a"}); !errors.Is(err, unix.ENODATA) {
				t.Errorf("after remove: %v", err)
			}
			if now, _ := os.Getwd(); now != cwd {
				t.Errorf("the process's cwd moved to %s", now)
			}
			if haveXattrat.Load() != at {
				t.Errorf("haveXattrat changed to %v", !at)
			}
		})
	}
}

func TestAllowedRootsApplyToEveryPath(t *testing.T) {
	env := &handler.Env{}
	ctx := handler.WithEnv(context.Background(), env)
	env.SetAllowedRoots([]string{"/nonexistent-root"})
	_, err := getxattr(ctx, GetxattrRequest{Path: "/etc/passwd", Name: "user.x"})
	if !errors.Is(err, unix.EACCES) {
		t.Errorf("getxattr outside the allowed roots: %v", err)
	}
	_, err = chown(ctx, ChownRequest{Entries: []ChownEntry{{Path: "/etc/passwd", UID: new(int64(-1)), GID: new(int64(-1))}}})
	if !errors.Is(err, unix.EACCES) {
		t.Errorf("chown outside the allowed roots: %v", err)
	}
}
