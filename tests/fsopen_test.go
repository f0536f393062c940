package tests

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

func TestFSOpenHandsBackDescriptors(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, MountProc: true, Files: map[string]string{"/mnt/hello": "hello"}})
	pid := target.PID()
	inTarget(t, pid, "ln -s /mnt/hello /mnt/abs && ln -s /proc/self/root/mnt/hello /mnt/magic")
	d, _ := newDispatcher(t, "")
	open := func(payload string) (*core.Response, error) {
		return d.Call(context.Background(), core.Request{PID: pid, Type: "fs.open", Payload: json.RawMessage(payload)})
	}

	resp, err := open(`{"path":"/mnt/hello","flags":["rdonly"],"resolve":["in_root"]}`)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Files) != 1 {
		t.Fatalf("%d files", len(resp.Files))
	}
	data, _ := io.ReadAll(resp.Files[0])
	resp.Files[0].Close()
	var out struct{ Flags int }
	json.Unmarshal(resp.Payload, &out)
	if string(data) != "hello" || out.Flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		t.Errorf("read %q, flags %#x", data, out.Flags)
	}

	// Resolve flags behave as openat2's: an absolute symlink stays in the
	// root with in_root, escapes beneath (EXDEV); magic links are refused.
	for _, c := range []struct {
		payload string
		errno   syscall.Errno
	}{
		{`{"path":"/mnt/abs","resolve":["in_root"]}`, 0},
		{`{"path":"/mnt/abs","resolve":["beneath"]}`, syscall.EXDEV},
		{`{"path":"/mnt/abs","resolve":["no_symlinks"]}`, syscall.ELOOP},
		{`{"path":"/mnt/magic","resolve":["no_magiclinks"]}`, syscall.ELOOP},
		{`{"path":"/mnt/abs","flags":["nofollow"]}`, syscall.ELOOP},
		{`{"path":"/mnt/missing"}`, syscall.ENOENT},
		{`{"path":"/mnt/hello","flags":["fly"]}`, syscall.EINVAL},
		{`{"path":"/mnt/hello","resolve":["everywhere"]}`, syscall.EINVAL},
	} {
		resp, err := open(c.payload)
		if c.errno == 0 {
			if err != nil || len(resp.Files) != 1 {
				t.Errorf("%s: %v", c.payload, err)
			} else {
				resp.Files[0].Close()
			}
			continue
		}
		wantErrno(t, err, c.errno)
	}

	// Created files belong to the caller, as the target sees it.
	resp, err = open(`{"path":"/mnt/new","flags":["wronly","creat","excl"],"mode":384}`)
	if err != nil {
		t.Fatal(err)
	}
	resp.Files[0].WriteString("written through the descriptor")
	resp.Files[0].Close()
	st, err := os.Stat(target.Root() + "/mnt/new")
	if err != nil || st.Mode().Perm() != 0o600 || st.Sys().(*syscall.Stat_t).Uid != 100000 {
		t.Errorf("created file: %v %v", st, err)
	}
	b, _ := os.ReadFile(target.Root() + "/mnt/new")
	if string(b) != "written through the descriptor" {
		t.Errorf("content %q", b)
	}
}

func TestCLIShowsFilesHandedBack(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Files: map[string]string{"/mnt/hello": "hello there"}})
	stdout, stderr, code := runCLI(t, "call", "--config", cliConfig(t, ""), "--pid", strconv.Itoa(target.PID()),
		"fs.open", `{"path":"/mnt/hello"}`)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var out struct {
		Response struct{ Flags int }
		Files    []struct {
			FD      int    `json:"fd"`
			Flags   string `json:"flags"`
			Cloexec bool   `json:"cloexec"`
			First   string `json:"first_bytes"`
		}
	}
	if err := json.Unmarshal([]byte(stdout), &out); err != nil || len(out.Files) != 1 {
		t.Fatalf("%v: %s", err, stdout)
	}
	f := out.Files[0]
	if !f.Cloexec || f.First != "hello there" || !strings.Contains(f.Flags, "O_RDONLY") {
		t.Errorf("file shown as %+v", f)
	}
}
