package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// Files opened inside the target come back as real descriptors in the
// caller's process, close-on-exec, and nothing leaks when requests fail.
func TestFilesHandedBackToTheCaller(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, Scratch: true,
		Files: map[string]string{"/a.txt": "alpha", "/b.txt": "bravo"}})
	d, _ := newDispatcher(t, "")
	pid := target.PID()

	resp, err := d.Call(context.Background(), core.Request{PID: pid, Type: "probe.open", Payload: json.RawMessage(`{"paths":["/a.txt","/b.txt"]}`)})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Files) != 2 {
		t.Fatalf("got %d files", len(resp.Files))
	}
	for i, want := range []string{"alpha", "bravo"} {
		f := resp.Files[i]
		flags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("file %d: fd flags %#x (%v), want close-on-exec", i, flags, err)
		}
		data, _ := io.ReadAll(f)
		if string(data) != want {
			t.Errorf("file %d reads %q", i, data)
		}
		// It is the target's file: same inode as seen through /proc/PID/root.
		var a, b unix.Stat_t
		unix.Fstat(int(f.Fd()), &a)
		unix.Stat(fmt.Sprintf("%s/%s.txt", target.Root(), strings.ToLower(want[:1])), &b)
		if a.Ino != b.Ino || a.Dev != b.Dev {
			t.Errorf("file %d is not the target's %s", i, want)
		}
		f.Close()
	}
	// What would leak is an fd of the test process on one of the target's
	// files: counted by inode, since other tests open and close fds in
	// this process meanwhile.
	targetFiles := []string{target.Root() + "/a.txt", target.Root() + "/b.txt"}
	if n := fdsOnFiles(t, targetFiles...); n != 0 {
		t.Errorf("%d fds on the target's files after closing them", n)
	}

	// A handler that fails after opening hands nothing back; a failing
	// open keeps its errno; too many files are refused.
	_, err = d.Call(context.Background(), core.Request{PID: pid, Type: "probe.open", Payload: json.RawMessage(`{"paths":["/a.txt"],"fail":true}`)})
	wantErrno(t, err, syscall.EIO, "failing after opening")
	_, err = d.Call(context.Background(), core.Request{PID: pid, Type: "probe.open", Payload: json.RawMessage(`{"paths":["/missing"]}`)})
	wantErrno(t, err, syscall.ENOENT, "/missing")
	many := make([]string, 17)
	for i := range many {
		many[i] = "/a.txt"
	}
	payload, _ := json.Marshal(map[string]any{"paths": many})
	_, err = d.Call(context.Background(), core.Request{PID: pid, Type: "probe.open", Payload: payload})
	wantErrno(t, err, syscall.EMFILE, "at most 16")
	// Dispatch closes what it does not return.
	if _, err := d.Dispatch(context.Background(), core.Request{PID: pid, Type: "probe.open", Payload: json.RawMessage(`{"paths":["/a.txt"]}`)}); err != nil {
		t.Fatal(err)
	}
	if n := fdsOnFiles(t, targetFiles...); n != 0 {
		t.Errorf("%d fds on the target's files left open by failed requests or Dispatch", n)
	}
	// The handler keeps none of them either (it closes its copies right
	// after sending, so give it a moment).
	h := servingPID(t, d, "probe")
	deadline := time.Now().Add(2 * time.Second)
	for {
		var held []string
		fds, _ := listFDs(h)
		for _, l := range fds {
			if strings.HasSuffix(l, ".txt") {
				held = append(held, l)
			}
		}
		if len(held) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("handler still holds %v", held)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fdsOnFiles counts the test process's fds open on any of the files at
// paths (by device and inode).
func fdsOnFiles(t *testing.T, paths ...string) int {
	t.Helper()
	var want []unix.Stat_t
	for _, p := range paths {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		want = append(want, st)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Fstat(fd, &st) != nil {
			continue // closed meanwhile
		}
		for _, w := range want {
			if st.Dev == w.Dev && st.Ino == w.Ino {
				n++
			}
		}
	}
	return n
}
