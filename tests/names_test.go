package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/plugins/ids"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/sdk"
)

// Names are bytes: files whose names are not UTF-8 (0xff; ED A0 80, the
// UTF-8-style encoding of the lone surrogate U+D800) or hold a newline are
// created in the target from the host, then listed, stat'ed, read, linked
// to, given xattrs, chowned, opened, mounted on and looked up through every
// built-in, and each answer is checked from the host.

var (
	nameFF        = "a\xffb"
	nameSurrogate = "s\xed\xa0\x80"
	nameNewline   = "n\nl"
	oddNames      = []string{nameFF, nameSurrogate, nameNewline}
)

// payload encodes a request the way a caller must: names as sdk.Name.
func payload(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

type pathReq struct {
	Path sdk.Name `json:"path"`
}

type namedEntry struct {
	Name  sdk.Name `json:"name"`
	Type  string   `json:"type"`
	Inode uint64   `json:"inode"`
}

// oddTarget is a container-like target with the odd names in /mnt/names:
// a file of each (holding its own name), a symbolic link "l\xff" to the
// first, and a directory "d\xff\n" to mount on.
func oddTarget(t *testing.T, opts sandbox.Options) (*sandbox.Sandbox, string) {
	t.Helper()
	opts.Files = map[string]string{"/mnt/names/.keep": ""}
	target := newTarget(t, opts)
	dir := filepath.Join(target.Root(), "/mnt/names")
	for _, n := range oddNames {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(nameFF, filepath.Join(dir, "l\xff")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "d\xff\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return target, dir
}

func TestNamesThatAreNotUTF8Procfs(t *testing.T) {
	parallel(t)
	target, dir := oddTarget(t, sandbox.Options{})
	pid := target.PID()
	d, _ := newDispatcher(t, "")

	// readdir gives the bytes back, in the documented encoding.
	raw, err := d.Dispatch(context.Background(), core.Request{PID: pid, Type: "procfs.readdir", Payload: json.RawMessage(`{"path":"/mnt/names"}`)})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`{"base64":"Yf9i"}`, `{"base64":"c+2ggA=="}`, `"n\nl"`} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("readdir response lacks %s: %s", want, raw)
		}
	}
	var dirResp struct {
		Entries []namedEntry `json:"entries"`
	}
	if err := json.Unmarshal(raw, &dirResp); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range dirResp.Entries {
		names = append(names, string(e.Name))
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, string(e.Name)), &st); err != nil || st.Ino != e.Inode {
			t.Errorf("entry %q: inode %d, host says %d (%v)", e.Name, e.Inode, st.Ino, err)
		}
	}
	want := append([]string{".keep", "d\xff\n", "l\xff"}, oddNames...)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("readdir: %q, want %q", names, want)
	}

	// Every listed name can be addressed again.
	for _, n := range oddNames {
		p := sdk.Name("/mnt/names/" + n)
		var st struct {
			Path  sdk.Name `json:"path"`
			Type  string   `json:"type"`
			Inode uint64   `json:"inode"`
		}
		mustCall(t, d, pid, "procfs.stat", payload(t, pathReq{p}), &st)
		var hst unix.Stat_t
		unix.Lstat(filepath.Join(dir, n), &hst)
		if st.Path != p || st.Type != "file" || st.Inode != hst.Ino {
			t.Errorf("stat %q: %+v, host inode %d", p, st, hst.Ino)
		}
		var rd struct {
			Data []byte `json:"data"`
		}
		mustCall(t, d, pid, "procfs.read", payload(t, pathReq{p}), &rd)
		if string(rd.Data) != n {
			t.Errorf("read %q: %q", p, rd.Data)
		}
		var wr struct {
			Written int `json:"written"`
		}
		mustCall(t, d, pid, "procfs.write", payload(t, struct {
			Path sdk.Name `json:"path"`
			Data []byte   `json:"data"`
		}{p, []byte("W")}), &wr)
		if got, _ := os.ReadFile(filepath.Join(dir, n)); wr.Written != 1 || string(got) != "W"+n[1:] {
			t.Errorf("write %q: %d, the host reads %q", p, wr.Written, got)
		}
	}
	var link struct {
		Target sdk.Name `json:"target"`
	}
	mustCall(t, d, pid, "procfs.readlink", payload(t, pathReq{"/mnt/names/l\xff"}), &link)
	if link.Target != sdk.Name(nameFF) {
		t.Errorf("readlink: %q", link.Target)
	}

	// A name's error message keeps it, escaped (protobuf strings are UTF-8).
	err = call(t, d, pid, "procfs.read", payload(t, pathReq{"/mnt/names/no\xffne"}), nil)
	wantErrno(t, err, syscall.ENOENT, `/mnt/names/no\xffne`)

	// A plain string must be Unicode text: never silently "repaired".
	for _, c := range []struct{ payload, fragment string }{
		{"{\"path\":\"/mnt/names/a\xffb\"}", `field "path": invalid UTF-8`},
		{"{\"path\":\"/mnt/names/s\xed\xa0\x80\"}", `field "path": invalid UTF-8`},
		{`{"path":"/mnt/names/a\udcffb"}`, `field "path": lone surrogate escape \udcff`},
		{`{"path":"/mnt/names/s\ud800"}`, `field "path": lone surrogate escape \ud800`},
		{`{"path":{"base64":"L21udA==","x":1}}`, `field "path": a name object must be {"base64": "..."}`},
		{`{"path":{"base64":"L21udAA="}}`, `field "path": a name cannot contain a NUL byte`},
		{`{"path":"/mnt","PATH":"/etc"}`, `unknown field "PATH" (field names are case-sensitive`},
		{`{"path":"/etc/passwd","path":"/mnt/names/.keep"}`, `duplicate field "path"`},
	} {
		err := call(t, d, pid, "procfs.read", c.payload, nil)
		wantErrno(t, err, syscall.EINVAL, c.fragment)
	}
}

func TestNamesThatAreNotUTF8FS(t *testing.T) {
	parallel(t)
	target, dir := oddTarget(t, sandbox.Options{})
	pid := target.PID()
	needUserXattrs(t, target, "/mnt/names")
	d, _ := newDispatcher(t, "")

	for _, n := range oddNames {
		p := sdk.Name("/mnt/names/" + n)
		attr := sdk.Name("user." + n)
		mustCall(t, d, pid, "fs.setxattr", payload(t, struct {
			Path  sdk.Name `json:"path"`
			Name  sdk.Name `json:"name"`
			Value []byte   `json:"value"`
		}{p, attr, []byte(n)}), nil)
		if v, err := hostGetxattr(t, filepath.Join(dir, n), string(attr)); err != nil || string(v) != n {
			t.Errorf("xattr %q of %q from the host: %q %v", attr, p, v, err)
		}
		var list struct {
			Names []sdk.Name `json:"names"`
		}
		mustCall(t, d, pid, "fs.listxattr", payload(t, pathReq{p}), &list)
		if !slices.Equal(list.Names, []sdk.Name{attr}) {
			t.Errorf("listxattr %q: %q", p, list.Names)
		}
		type attrReq struct {
			Path sdk.Name `json:"path"`
			Name sdk.Name `json:"name"`
		}
		var got xattrValue
		mustCall(t, d, pid, "fs.getxattr", payload(t, attrReq{p, attr}), &got)
		if string(got.Value) != n {
			t.Errorf("getxattr %q: %q", attr, got.Value)
		}
		mustCall(t, d, pid, "fs.removexattr", payload(t, attrReq{p, attr}), nil)
		if _, err := hostGetxattr(t, filepath.Join(dir, n), string(attr)); err != unix.ENODATA {
			t.Errorf("after removexattr %q: %v", attr, err)
		}

		uid := int64(1000 + len(n))
		mustCall(t, d, pid, "fs.chown", payload(t, map[string]any{"entries": []any{
			map[string]any{"path": p, "uid": uid, "gid": uid}}}), nil)
		if u, g := hostOwner(t, filepath.Join(dir, n)); int64(u) != uid || int64(g) != uid {
			t.Errorf("chown %q: the host sees %d:%d, want %d", p, u, g, uid)
		}

		resp, err := d.Call(context.Background(), core.Request{PID: pid, Type: "fs.open", Payload: json.RawMessage(payload(t, pathReq{p}))})
		if err != nil {
			t.Fatalf("fs.open %q: %v", p, err)
		}
		if len(resp.Files) != 1 {
			t.Fatalf("fs.open %q: %d files", p, len(resp.Files))
		}
		data := make([]byte, 64)
		k, _ := resp.Files[0].Read(data)
		resp.Files[0].Close()
		if string(data[:k]) != n {
			t.Errorf("fs.open %q read %q", p, data[:k])
		}
	}
}

func TestNamesThatAreNotUTF8Mount(t *testing.T) {
	parallel(t)
	target, _ := oddTarget(t, sandbox.Options{})
	pid := target.PID()
	d, _ := newDispatcher(t, "")
	mp := sdk.Name("/mnt/names/d\xff\n")
	src := sdk.Name("src\xfe")

	var mr struct {
		Mounts []struct {
			Target  sdk.Name `json:"target"`
			MountID int      `json:"mount_id"`
		} `json:"mounts"`
	}
	mustCall(t, d, pid, "mount.mount", payload(t, map[string]any{"mounts": []any{
		map[string]any{"source": src, "target": mp, "fstype": "tmpfs", "data": sdk.Name("size=1m")}}}), &mr)
	if len(mr.Mounts) != 1 || mr.Mounts[0].Target != mp {
		t.Fatalf("mount.mount: %+v", mr)
	}
	// The host sees the mount, with the kernel's escapes (\012 for the newline).
	top := mntTop(mntTarget(t, pid), "/mnt/names/d\xff\\012")
	if top == nil || top.source != "src\xfe" || top.id != mr.Mounts[0].MountID {
		t.Errorf("the host's view of the mount: %+v", top)
	}

	var info struct {
		Mounts []struct {
			ID         int      `json:"id"`
			Mountpoint sdk.Name `json:"mountpoint"`
			Source     sdk.Name `json:"source"`
		} `json:"mounts"`
		Raw sdk.Name `json:"raw"`
	}
	mustCall(t, d, pid, "mount.info", `{"raw":true}`, &info)
	found := false
	for _, m := range info.Mounts {
		if m.ID == mr.Mounts[0].MountID {
			found = m.Mountpoint == mp && m.Source == src
		}
	}
	if !found || !strings.Contains(string(info.Raw), "/mnt/names/d\xff\\012") {
		t.Errorf("mount.info: %+v", info.Mounts)
	}

	var ino struct {
		Inodes []struct {
			Path      sdk.Name `json:"path"`
			MountID   int      `json:"mount_id"`
			MountRoot bool     `json:"mount_root"`
		} `json:"inodes"`
	}
	mustCall(t, d, pid, "mount.inode", payload(t, map[string]any{"paths": []sdk.Name{mp}}), &ino)
	if len(ino.Inodes) != 1 || ino.Inodes[0].Path != mp || ino.Inodes[0].MountID != mr.Mounts[0].MountID || !ino.Inodes[0].MountRoot {
		t.Errorf("mount.inode: %+v", ino)
	}

	var um struct {
		Unmounted []sdk.Name `json:"unmounted"`
	}
	mustCall(t, d, pid, "mount.umount", payload(t, map[string]any{"unmounts": []any{map[string]any{"target": mp}}}), &um)
	if !slices.Equal(um.Unmounted, []sdk.Name{mp}) || mntTop(mntTarget(t, pid), "/mnt/names/d\xff\\012") != nil {
		t.Errorf("mount.umount: %q", um.Unmounted)
	}
}

func TestNamesThatAreNotUTF8IDs(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Files: map[string]string{"/mnt/passwd": "", "/mnt/group": ""}})
	pid := target.PID()
	root := target.Root()
	if err := os.WriteFile(root+"/mnt/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nj\xf6rg:x:1000:1000:J\xf6rg S\xed\xa0\x80:/home/j\xf6rg:/bin/\xff\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(root+"/mnt/group", []byte("gr\xffp:x:1000:j\xf6rg,root\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"ids\"\n[plugin.options]\npasswd_file = \"/mnt/passwd\"\ngroup_file = \"/mnt/group\"\n")

	want := ids.User{Name: "j\xf6rg", ID: 1000, GID: 1000, Gecos: "J\xf6rg S\xed\xa0\x80", Home: "/home/j\xf6rg", Shell: "/bin/\xff"}
	for _, q := range []string{`{"id":1000}`, payload(t, map[string]sdk.Name{"name": "j\xf6rg"})} {
		var got ids.User
		mustCall(t, d, pid, "ids.user", q, &got)
		if got != want {
			t.Errorf("ids.user %s: %+v, want %+v", q, got, want)
		}
	}
	var g ids.Group
	mustCall(t, d, pid, "ids.group", payload(t, map[string]sdk.Name{"name": "gr\xffp"}), &g)
	if g.Name != "gr\xffp" || !slices.Equal(g.Members, []sdk.Name{"j\xf6rg", "root"}) {
		t.Errorf("ids.group: %+v", g)
	}
}

// The CLI prints a response's bytes as the plugin sent them: the base64
// form stays, and so do key order and large numbers.
func TestCLIKeepsTheNameEncoding(t *testing.T) {
	parallel(t)
	target, _ := oddTarget(t, sandbox.Options{})
	cfg := cliConfig(t, "")
	out, stderr, code := runCLI(t, "call", "--config", cfg, "--pid", fmt.Sprint(target.PID()), "procfs.readlink", `{"path":{"base64":"`+
		"L21udC9uYW1lcy9s/w=="+`"}}`)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if out != "{\n  \"target\": {\n    \"base64\": \"Yf9i\"\n  }\n}\n" {
		t.Errorf("output %q", out)
	}
	out, stderr, code = runCLI(t, "call", "--config", cfg, "--pid", fmt.Sprint(target.PID()), "procfs.stat", `{"path":"/mnt/names/n\nl"}`)
	if code != 0 || !strings.HasPrefix(out, "{\n  \"path\": \"/mnt/names/n\\nl\",\n  \"type\": \"file\"") {
		t.Errorf("exit %d: %q %s", code, out, stderr)
	}
}
