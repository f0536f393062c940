package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/nsexec"
	"github.com/nsplug/nsplug/sandbox"
)

// Tests of the fs plugin: extended attributes and chown in real targets,
// each answer checked from the host (through /proc/PID/root) and each
// errno against what the same system call returns when run directly in
// the target as its root.

// noUserNS is every namespace but "user": a request narrowed to these acts
// with the core's credentials in the target's mount namespace.
var noUserNS = nsexec.NamespaceNames(nsexec.AllNamespaces &^ unix.CLONE_NEWUSER)

// targetPython is the interpreter run inside container-like targets: they
// share the host's root file system (not /root, which a rootless target's
// root may not search, hence no pyenv shim).
const targetPython = "/usr/bin/python3"

// targetErrno runs one Python statement in all of the target's namespaces
// as its root (nsenter -a) and returns the errno it raised, 0 if none.
func targetErrno(t *testing.T, pid int, stmt string) syscall.Errno {
	t.Helper()
	if _, err := os.Stat(targetPython); err != nil {
		t.Fatalf("no %s on the host to compare with: %v", targetPython, err)
	}
	script := "import os\ntry:\n    " + stmt + "\n    print('errno=0')\nexcept OSError as e:\n    print('errno=%d' % e.errno)\n"
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-a", targetPython, "-c", script).CombinedOutput()
	var n int
	if _, scanErr := fmt.Sscanf(strings.TrimSpace(string(out)), "errno=%d", &n); scanErr != nil {
		t.Fatalf("python in the target: %v: %s", err, out)
	}
	return syscall.Errno(n)
}

// errnoOf is the errno of a core error, 0 for nil.
func errnoOf(t *testing.T, err error) syscall.Errno {
	t.Helper()
	if err == nil {
		return 0
	}
	var ce *core.Error
	if !errors.As(err, &ce) {
		t.Fatalf("want a *core.Error, got %T %v", err, err)
	}
	return ce.Errno
}

// dispatchIn dispatches with the namespaces narrowed to ns.
func dispatchIn(t *testing.T, d *core.Dispatcher, pid int, ns []string, typ, payload string, out any) error {
	t.Helper()
	resp, err := d.Dispatch(context.Background(), core.Request{PID: pid, Type: typ, Payload: json.RawMessage(payload), Namespaces: ns})
	if err == nil && out != nil {
		if err := json.Unmarshal(resp, out); err != nil {
			t.Fatalf("%s: response %s: %v", typ, resp, err)
		}
	}
	return err
}

func jsonBytes(b []byte) string {
	out, _ := json.Marshal(b)
	return string(out)
}

type xattrValue struct {
	Value []byte `json:"value"`
}

type xattrNames struct {
	Names []string `json:"names"`
}

// hostGetxattr reads an attribute of a file in the target from the host.
func hostGetxattr(t *testing.T, path, name string) ([]byte, error) {
	t.Helper()
	buf := make([]byte, 1<<16)
	n, err := unix.Lgetxattr(path, name, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// needUserXattrs skips a test on kernels whose tmpfs has no user.*
// attributes (before Linux 6.6): the targets' files live on tmpfs.
func needUserXattrs(t *testing.T, target *sandbox.Sandbox, path string) {
	t.Helper()
	err := unix.Lsetxattr(filepath.Join(target.Root(), path), "user.nsplug-probe", nil, 0)
	if errors.Is(err, unix.EOPNOTSUPP) {
		t.Skipf("tmpfs without user.* extended attributes (Linux < 6.6): %v", err)
	}
	if err == nil {
		err = unix.Lremovexattr(filepath.Join(target.Root(), path), "user.nsplug-probe")
	}
	if err != nil {
		t.Fatalf("probing user.* attributes on %s: %v", path, err)
	}
}

func TestFSXattrRoundTripAndErrnos(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true, Files: map[string]string{"/mnt/f": "data", "/mnt/dir/g": "g"}})
	needUserXattrs(t, target, "mnt/f")
	d, _ := newDispatcher(t, "")
	pid := target.PID()
	hostF := filepath.Join(target.Root(), "mnt/f")

	mustCall(t, d, pid, "fs.setxattr", `{"path":"/mnt/f","name":"user.greeting","value":`+jsonBytes([]byte("hello\x00world"))+`}`, nil)
	if v, err := hostGetxattr(t, hostF, "user.greeting"); err != nil || string(v) != "hello\x00world" {
		t.Errorf("host sees user.greeting = %q, %v", v, err)
	}
	var got xattrValue
	mustCall(t, d, pid, "fs.getxattr", `{"path":"/mnt/f","name":"user.greeting"}`, &got)
	if string(got.Value) != "hello\x00world" {
		t.Errorf("getxattr = %q", got.Value)
	}
	// Set on the host, read through the plugin; an empty value is a value.
	if err := unix.Lsetxattr(hostF, "user.fromhost", nil, 0); err != nil {
		t.Fatal(err)
	}
	raw, err := d.Dispatch(context.Background(), core.Request{PID: pid, Type: "fs.getxattr", Payload: json.RawMessage(`{"path":"/mnt/f","name":"user.fromhost"}`)})
	if err != nil || string(raw) != `{"value":""}` {
		t.Errorf("empty value: %s %v", raw, err)
	}
	var names xattrNames
	mustCall(t, d, pid, "fs.listxattr", `{"path":"/mnt/f"}`, &names)
	if !slices.Equal(names.Names, []string{"user.fromhost", "user.greeting"}) {
		t.Errorf("listxattr = %q", names.Names)
	}
	mustCall(t, d, pid, "fs.listxattr", `{"path":"/mnt/dir"}`, &names)
	if names.Names == nil || len(names.Names) != 0 {
		t.Errorf("listxattr of a bare directory = %#v, want []", names.Names)
	}
	// replace an existing attribute; the host sees the new value.
	mustCall(t, d, pid, "fs.setxattr", `{"path":"/mnt/f","name":"user.greeting","value":"Ynll","flags":["replace"]}`, nil)
	if v, _ := hostGetxattr(t, hostF, "user.greeting"); string(v) != "bye" {
		t.Errorf("after replace host sees %q", v)
	}
	mustCall(t, d, pid, "fs.removexattr", `{"path":"/mnt/f","name":"user.greeting"}`, nil)
	if _, err := hostGetxattr(t, hostF, "user.greeting"); !errors.Is(err, unix.ENODATA) {
		t.Errorf("after removexattr the host reads: %v", err)
	}

	// The largest value the kernel allows goes both ways intact.
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<12)
	mustCall(t, d, pid, "fs.setxattr", `{"path":"/mnt/f","name":"user.big","value":`+jsonBytes(big)+`}`, nil)
	mustCall(t, d, pid, "fs.getxattr", `{"path":"/mnt/f","name":"user.big"}`, &got)
	if !bytes.Equal(got.Value, big) {
		t.Errorf("64 KiB value came back as %d bytes", len(got.Value))
	}
	if v, _ := hostGetxattr(t, hostF, "user.big"); !bytes.Equal(v, big) {
		t.Errorf("host sees a %d-byte user.big", len(v))
	}

	// Every failure carries the errno the kernel gives root in the target
	// for the same call.
	name255 := "user." + strings.Repeat("n", 250)
	name256 := name255 + "n"
	mustCall(t, d, pid, "fs.setxattr", `{"path":"/mnt/f","name":"`+name255+`","value":"eA=="}`, nil)
	cases := []struct {
		name, typ, payload, python string
		errno                      syscall.Errno
		fragments                  []string
	}{
		{"missing attribute", "fs.getxattr", `{"path":"/mnt/f","name":"user.nope"}`,
			`os.getxattr("/mnt/f", "user.nope")`, syscall.ENODATA, []string{"/mnt/f", "user.nope"}},
		{"remove missing", "fs.removexattr", `{"path":"/mnt/f","name":"user.nope"}`,
			`os.removexattr("/mnt/f", "user.nope")`, syscall.ENODATA, []string{"user.nope"}},
		{"create existing", "fs.setxattr", `{"path":"/mnt/f","name":"user.big","value":"eA==","flags":["create"]}`,
			`os.setxattr("/mnt/f", "user.big", b"x", os.XATTR_CREATE)`, syscall.EEXIST, nil},
		{"replace missing", "fs.setxattr", `{"path":"/mnt/f","name":"user.nope","value":"eA==","flags":["replace"]}`,
			`os.setxattr("/mnt/f", "user.nope", b"x", os.XATTR_REPLACE)`, syscall.ENODATA, nil},
		{"value too large", "fs.setxattr", `{"path":"/mnt/f","name":"user.big","value":` + jsonBytes(append(big, 'x')) + `}`,
			`os.setxattr("/mnt/f", "user.big", b"x" * 65537)`, syscall.E2BIG, []string{"65537"}},
		{"name too long (set)", "fs.setxattr", `{"path":"/mnt/f","name":"` + name256 + `","value":"eA=="}`,
			`os.setxattr("/mnt/f", "` + name256 + `", b"x")`, syscall.ERANGE, []string{"256"}},
		{"name too long (get)", "fs.getxattr", `{"path":"/mnt/f","name":"` + name256 + `"}`,
			`os.getxattr("/mnt/f", "` + name256 + `")`, syscall.ERANGE, nil},
		{"empty name", "fs.getxattr", `{"path":"/mnt/f","name":""}`,
			`os.getxattr("/mnt/f", "")`, syscall.ERANGE, []string{"empty"}},
		{"no namespace prefix", "fs.setxattr", `{"path":"/mnt/f","name":"greeting","value":"eA=="}`,
			`os.setxattr("/mnt/f", "greeting", b"x")`, syscall.EOPNOTSUPP, nil},
		{"file system without xattrs", "fs.setxattr", `{"path":"/proc/version","name":"user.x","value":"eA=="}`,
			`os.setxattr("/proc/version", "user.x", b"x")`, syscall.EOPNOTSUPP, []string{"/proc/version"}},
		{"missing file", "fs.getxattr", `{"path":"/mnt/missing","name":"user.x"}`,
			`os.getxattr("/mnt/missing", "user.x")`, syscall.ENOENT, []string{"/mnt/missing"}},
		{"through a file", "fs.listxattr", `{"path":"/mnt/f/x"}`,
			`os.listxattr("/mnt/f/x")`, syscall.ENOTDIR, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := call(t, d, pid, c.typ, c.payload, nil)
			if want := targetErrno(t, pid, c.python); want != c.errno {
				t.Fatalf("the kernel in the target says %v for %s; the test expects %v", want, c.python, c.errno)
			}
			wantErrno(t, err, c.errno, c.fragments...)
		})
	}
	// Malformed requests, refused before any system call.
	wantErrno(t, call(t, d, pid, "fs.setxattr", `{"path":"/mnt/f","name":"user.x","flags":["append"]}`, nil), syscall.EINVAL, "append")
	wantErrno(t, call(t, d, pid, "fs.getxattr", `{"path":"mnt/f","name":"user.x"}`, nil), syscall.EINVAL, "not absolute")
	wantErrno(t, call(t, d, pid, "fs.getxattr", `{"path":"/mnt/f","name":"user.x","follow":true}`, nil), syscall.EINVAL, "follow")
	wantErrno(t, call(t, d, pid, "fs.getxattr", `{"path":"/mnt/f","name":"user.a\u0000b"}`, nil), syscall.EINVAL, "NUL")
	if _, err := hostGetxattr(t, hostF, "user.x"); !errors.Is(err, unix.ENODATA) {
		t.Errorf("a refused request set user.x: %v", err)
	}
}

// A name list longer than XATTR_LIST_MAX is E2BIG, as from listxattr(2).
func TestFSXattrListTooLarge(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Files: map[string]string{"/mnt/f": ""}})
	needUserXattrs(t, target, "mnt/f")
	d, _ := newDispatcher(t, "")
	hostF := filepath.Join(target.Root(), "mnt/f")
	// 300 names of 246 bytes (with their NULs): 73800 bytes > 65536.
	for i := range 300 {
		name := fmt.Sprintf("user.%0240d", i)
		if err := unix.Lsetxattr(hostF, name, []byte("v"), 0); err != nil {
			t.Fatalf("setting %d attributes on tmpfs from the host: %v", i, err)
		}
	}
	err := call(t, d, target.PID(), "fs.listxattr", `{"path":"/mnt/f"}`, nil)
	if want := targetErrno(t, target.PID(), `os.listxattr("/mnt/f")`); want != syscall.E2BIG {
		t.Fatalf("listxattr in the target: %v, want E2BIG", want)
	}
	wantErrno(t, err, syscall.E2BIG, "/mnt/f")
	// Below the limit, every name comes back.
	for i := 40; i < 300; i++ {
		unix.Lremovexattr(hostF, fmt.Sprintf("user.%0240d", i))
	}
	var names xattrNames
	mustCall(t, d, target.PID(), "fs.listxattr", `{"path":"/mnt/f"}`, &names)
	if len(names.Names) != 40 || names.Names[39] != fmt.Sprintf("user.%0240d", 39) {
		t.Errorf("listxattr returned %d names", len(names.Names))
	}
}

// Symbolic links: followed inside the target unless nofollow; loops are
// ELOOP; /proc magic links are never followed, even where the kernel would.
func TestFSXattrSymlinksAndMagicLinks(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true, Files: map[string]string{"/mnt/f": "data", "/mnt/sub/g": "g"}})
	needUserXattrs(t, target, "mnt/f")
	d, _ := newDispatcher(t, "")
	pid := target.PID()
	root := target.Root()
	for link, to := range map[string]string{
		"mnt/rel":     "f",
		"mnt/abs":     "/mnt/f",
		"mnt/chain":   "sub/../abs",
		"mnt/dirlnk":  "sub",
		"mnt/loop1":   "loop2",
		"mnt/loop2":   "loop1",
		"mnt/magic":   "/proc/self/root/mnt/f",
		"mnt/viadir":  "/proc/1/root/mnt",
		"mnt/tomagic": "/proc/1/root",
		"mnt/dangle":  "nowhere",
	} {
		if err := os.Symlink(to, filepath.Join(root, link)); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Lsetxattr(filepath.Join(root, "mnt/f"), "user.who", []byte("f"), 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(filepath.Join(root, "mnt/sub"), "user.who", []byte("sub"), 0); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{"/mnt/rel": "f", "/mnt/abs": "f", "/mnt/chain": "f", "/mnt/dirlnk": "sub"} {
		var v xattrValue
		mustCall(t, d, pid, "fs.getxattr", `{"path":"`+path+`","name":"user.who"}`, &v)
		if string(v.Value) != want {
			t.Errorf("getxattr through %s = %q, want %q", path, v.Value, want)
		}
	}
	// nofollow acts on the link itself: user.* attributes are not allowed
	// on symbolic links (EPERM to set, ENODATA to read), as in the kernel.
	err := call(t, d, pid, "fs.setxattr", `{"path":"/mnt/rel","name":"user.x","value":"eA==","nofollow":true}`, nil)
	if want := targetErrno(t, pid, `os.setxattr("/mnt/rel", "user.x", b"x", follow_symlinks=False)`); want != syscall.EPERM {
		t.Fatalf("lsetxattr on a link in the target: %v", want)
	}
	wantErrno(t, err, syscall.EPERM, "/mnt/rel")
	wantErrno(t, call(t, d, pid, "fs.getxattr", `{"path":"/mnt/rel","name":"user.who","nofollow":true}`, nil), syscall.ENODATA)
	if _, err := hostGetxattr(t, filepath.Join(root, "mnt/f"), "user.x"); !errors.Is(err, unix.ENODATA) {
		t.Errorf("nofollow set an attribute on the link's target: %v", err)
	}
	// A link to a missing file and a loop: as the kernel says.
	if want := targetErrno(t, pid, `os.getxattr("/mnt/dangle", "user.who")`); want != syscall.ENOENT {
		t.Fatalf("dangling link in the target: %v", want)
	}
	wantErrno(t, call(t, d, pid, "fs.getxattr", `{"path":"/mnt/dangle","name":"user.who"}`, nil), syscall.ENOENT)
	if want := targetErrno(t, pid, `os.getxattr("/mnt/loop1", "user.who")`); want != syscall.ELOOP {
		t.Fatalf("link loop in the target: %v", want)
	}
	wantErrno(t, call(t, d, pid, "fs.getxattr", `{"path":"/mnt/loop1","name":"user.who"}`, nil), syscall.ELOOP)

	// Magic links: the kernel would follow them (root in this rootful
	// target may), the plugin refuses, whether the link is named in the
	// request, planted as the last component or in the middle.
	if want := targetErrno(t, pid, `os.getxattr("/mnt/magic", "user.who")`); want != 0 {
		t.Fatalf("the kernel refused a magic link too (%v): the test proves nothing", want)
	}
	for _, p := range []string{"/proc/self/root/mnt/f", "/proc/1/root/mnt/f", "/mnt/magic", "/mnt/viadir/f", "/proc/1/root", "/mnt/tomagic"} {
		wantErrno(t, call(t, d, pid, "fs.getxattr", `{"path":"`+p+`","name":"user.who"}`, nil), syscall.ELOOP, "magic link")
		wantErrno(t, call(t, d, pid, "fs.setxattr", `{"path":"`+p+`","name":"user.evil","value":"eA=="}`, nil), syscall.ELOOP)
		wantErrno(t, call(t, d, pid, "fs.chown", `{"entries":[{"path":"`+p+`","uid":66,"gid":66}]}`, nil), syscall.ELOOP, "entry 0")
	}
	for _, p := range []string{"mnt/f", "."} {
		if _, err := hostGetxattr(t, filepath.Join(root, p), "user.evil"); !errors.Is(err, unix.ENODATA) {
			t.Errorf("a write through a magic link landed on /%s: %v", p, err)
		}
		if u, _ := hostOwner(t, filepath.Join(root, p)); u == 66 {
			t.Errorf("a chown through a magic link landed on /%s", p)
		}
	}
	// The link itself is fine to act on with nofollow.
	var names xattrNames
	mustCall(t, d, pid, "fs.listxattr", `{"path":"/mnt/magic","nofollow":true}`, &names)
}

// In a rootless target the handler is the target's root when it joins the
// user namespace: trusted.* needs CAP_SYS_ADMIN in the initial user
// namespace, so it fails there exactly as in the target; a request that
// leaves out "user" (or a plugin configured that way) acts with the core's
// credentials and can, as sysbox-fs does.
func TestFSXattrTrustedNeedsTheHostUserNamespace(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, MountProc: true, Files: map[string]string{"/mnt/f": "data"}})
	needUserXattrs(t, target, "mnt/f")
	d, _ := newDispatcher(t, "")
	pid := target.PID()
	hostF := filepath.Join(target.Root(), "mnt/f")

	// user.* works as the target's root.
	mustCall(t, d, pid, "fs.setxattr", `{"path":"/mnt/f","name":"user.u","value":"dQ=="}`, nil)
	if v, err := hostGetxattr(t, hostF, "user.u"); err != nil || string(v) != "u" {
		t.Errorf("host sees user.u = %q %v", v, err)
	}
	err := call(t, d, pid, "fs.setxattr", `{"path":"/mnt/f","name":"trusted.t","value":"dA=="}`, nil)
	if want := targetErrno(t, pid, `os.setxattr("/mnt/f", "trusted.t", b"t")`); want != syscall.EPERM {
		t.Fatalf("setting trusted.* as root in the rootless target: %v, want EPERM", want)
	}
	wantErrno(t, err, syscall.EPERM, "trusted.t")
	if _, err := hostGetxattr(t, hostF, "trusted.t"); !errors.Is(err, unix.ENODATA) {
		t.Fatalf("trusted.t exists after a refused set: %v", err)
	}
	assertNamespaces(t, servingPID(t, d, "fs"), pid, allNS)

	// Narrowed to leave the user namespace out: it works.
	if err := dispatchIn(t, d, pid, noUserNS, "fs.setxattr", `{"path":"/mnt/f","name":"trusted.t","value":"dA=="}`, nil); err != nil {
		t.Fatalf("trusted.* without the user namespace: %v", err)
	}
	if v, err := hostGetxattr(t, hostF, "trusted.t"); err != nil || string(v) != "t" {
		t.Errorf("host sees trusted.t = %q %v", v, err)
	}
	var v xattrValue
	if err := dispatchIn(t, d, pid, noUserNS, "fs.getxattr", `{"path":"/mnt/f","name":"trusted.t"}`, &v); err != nil || string(v.Value) != "t" {
		t.Errorf("narrowed getxattr trusted.t = %q %v", v.Value, err)
	}
	var names xattrNames
	if err := dispatchIn(t, d, pid, noUserNS, "fs.listxattr", `{"path":"/mnt/f"}`, &names); err != nil || !slices.Equal(names.Names, []string{"trusted.t", "user.u"}) {
		t.Errorf("narrowed listxattr = %q %v", names.Names, err)
	}
	for _, in := range d.Instances() {
		if slices.Contains(in.Plugins, "fs") && !slices.Contains(in.Joined, "user") {
			assertNamespaces(t, in.PID, pid, noUserNS)
		}
	}
	// As the target's root again: reading trusted.* is ENODATA and the
	// name is hidden from the list, as the kernel does for the target.
	if want := targetErrno(t, pid, `os.getxattr("/mnt/f", "trusted.t")`); want != syscall.ENODATA {
		t.Fatalf("reading trusted.* in the target: %v", want)
	}
	wantErrno(t, call(t, d, pid, "fs.getxattr", `{"path":"/mnt/f","name":"trusted.t"}`, nil), syscall.ENODATA)
	mustCall(t, d, pid, "fs.listxattr", `{"path":"/mnt/f"}`, &names)
	if !slices.Equal(names.Names, []string{"user.u"}) {
		t.Errorf("listxattr as the target's root = %q", names.Names)
	}
	wantErrno(t, call(t, d, pid, "fs.removexattr", `{"path":"/mnt/f","name":"trusted.t"}`, nil), syscall.EPERM)
	if err := dispatchIn(t, d, pid, noUserNS, "fs.removexattr", `{"path":"/mnt/f","name":"trusted.t"}`, nil); err != nil {
		t.Errorf("narrowed removexattr: %v", err)
	}
	if _, err := hostGetxattr(t, hostF, "trusted.t"); !errors.Is(err, unix.ENODATA) {
		t.Errorf("trusted.t still there: %v", err)
	}
}

// The same choice as configuration: the plugin's namespaces leave out
// "user", so every request may use trusted.*.
func TestFSXattrTrustedByConfiguration(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, Files: map[string]string{"/mnt/f": "data"}})
	d, _ := newDispatcher(t, "[[plugin]]\nname = \"fs\"\nnamespaces = [\"mnt\", \"pid\", \"net\", \"ipc\", \"uts\", \"cgroup\", \"time\"]\n")
	pid := target.PID()
	mustCall(t, d, pid, "fs.setxattr", `{"path":"/mnt/f","name":"trusted.cfg","value":"Yw=="}`, nil)
	if v, err := hostGetxattr(t, filepath.Join(target.Root(), "mnt/f"), "trusted.cfg"); err != nil || string(v) != "c" {
		t.Errorf("host sees trusted.cfg = %q %v", v, err)
	}
	assertNamespaces(t, servingPID(t, d, "fs"), pid, noUserNS)
	// A request cannot widen the set back to include "user".
	if err := dispatchIn(t, d, pid, allNS, "fs.setxattr", `{"path":"/mnt/f","name":"trusted.wide","value":"Yw=="}`, nil); err != nil {
		t.Errorf("request naming every namespace: %v", err)
	}
	if len(d.Instances()) != 1 {
		t.Errorf("naming more namespaces than configured started another instance: %v", d.Instances())
	}
}

// A FROM-scratch target: attributes on its tmpfs root, no /proc needed.
func TestFSXattrScratchTarget(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, Scratch: true, Files: map[string]string{"/etc/app.conf": "x=1\n"}})
	needUserXattrs(t, target, "etc/app.conf")
	d, _ := newDispatcher(t, "")
	pid := target.PID()
	mustCall(t, d, pid, "fs.setxattr", `{"path":"/etc/app.conf","name":"user.origin","value":"c2NyYXRjaA==","flags":["create"]}`, nil)
	if v, err := hostGetxattr(t, filepath.Join(target.Root(), "etc/app.conf"), "user.origin"); err != nil || string(v) != "scratch" {
		t.Errorf("host sees %q %v", v, err)
	}
	mustCall(t, d, pid, "fs.setxattr", `{"path":"/","name":"user.rootdir","value":"cg=="}`, nil)
	var names xattrNames
	mustCall(t, d, pid, "fs.listxattr", `{"path":"/"}`, &names)
	if !slices.Equal(names.Names, []string{"user.rootdir"}) {
		t.Errorf("listxattr / = %q", names.Names)
	}
	wantErrno(t, call(t, d, pid, "fs.setxattr", `{"path":"/etc/app.conf","name":"user.origin","value":"eA==","flags":["create"]}`, nil), syscall.EEXIST)
	wantErrno(t, call(t, d, pid, "fs.getxattr", `{"path":"/proc/version","name":"user.x"}`, nil), syscall.ENOENT, "/proc/version")
}

// Handlers run concurrently in one warm instance; each request sees its
// own attribute.
func TestFSXattrConcurrent(t *testing.T) {
	parallel(t)
	files := map[string]string{}
	for i := range 8 {
		files[fmt.Sprintf("/mnt/f%d", i)] = ""
	}
	target := newTarget(t, sandbox.Options{Rootless: true, Files: files})
	needUserXattrs(t, target, "mnt/f0")
	d, _ := newDispatcher(t, "")
	var wg sync.WaitGroup
	errs := make(chan error, 8*20)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				val := fmt.Appendf(nil, "g%d-i%d", g, i)
				p := fmt.Sprintf(`{"path":"/mnt/f%d","name":"user.v"`, g)
				if _, err := d.Dispatch(context.Background(), core.Request{PID: target.PID(), Type: "fs.setxattr", Payload: []byte(p + `,"value":` + jsonBytes(val) + `}`)}); err != nil {
					errs <- err
					continue
				}
				resp, err := d.Dispatch(context.Background(), core.Request{PID: target.PID(), Type: "fs.getxattr", Payload: []byte(p + `}`)})
				var v xattrValue
				if err == nil {
					err = json.Unmarshal(resp, &v)
				}
				if err != nil || !bytes.Equal(v.Value, val) {
					errs <- fmt.Errorf("file %d: read %q after writing %q (%v)", g, v.Value, val, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(d.Instances()); n != 1 {
		t.Errorf("%d instances served one target", n)
	}
}

// hostOwner is the owner of a path in the target as the host sees it.
func hostOwner(t *testing.T, path string) (uint32, uint32) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid, st.Gid
}

func TestFSChownRootful(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Files: map[string]string{"/mnt/a": "a", "/mnt/b": "b", "/mnt/c": "c"}})
	d, _ := newDispatcher(t, "")
	pid := target.PID()
	root := target.Root()
	if err := os.Symlink("a", filepath.Join(root, "mnt/l")); err != nil {
		t.Fatal(err)
	}

	mustCall(t, d, pid, "fs.chown", `{"entries":[{"path":"/mnt/a","uid":1000,"gid":1001},{"path":"/mnt/b","uid":-1,"gid":2000}]}`, nil)
	if u, g := hostOwner(t, filepath.Join(root, "mnt/a")); u != 1000 || g != 1001 {
		t.Errorf("/mnt/a is %d:%d, want 1000:1001", u, g)
	}
	if u, g := hostOwner(t, filepath.Join(root, "mnt/b")); u != 0 || g != 2000 {
		t.Errorf("/mnt/b is %d:%d, want 0:2000 (uid -1 leaves it)", u, g)
	}
	// nofollow changes the link, not its target; following changes the target.
	mustCall(t, d, pid, "fs.chown", `{"entries":[{"path":"/mnt/l","uid":7,"gid":8,"nofollow":true}]}`, nil)
	if u, g := hostOwner(t, filepath.Join(root, "mnt/l")); u != 7 || g != 8 {
		t.Errorf("link is %d:%d after nofollow chown", u, g)
	}
	if u, _ := hostOwner(t, filepath.Join(root, "mnt/a")); u != 1000 {
		t.Errorf("nofollow chown changed the link's target to uid %d", u)
	}
	mustCall(t, d, pid, "fs.chown", `{"entries":[{"path":"/mnt/l","uid":9,"gid":-1}]}`, nil)
	if u, g := hostOwner(t, filepath.Join(root, "mnt/a")); u != 9 || g != 1001 {
		t.Errorf("following chown: /mnt/a is %d:%d, want 9:1001", u, g)
	}
	mustCall(t, d, pid, "fs.chown", `{"entries":[]}`, nil)

	// A batch stops at the first failure, names its index, keeps the
	// errno; what came before stays applied, what comes after is not done.
	err := call(t, d, pid, "fs.chown", `{"entries":[{"path":"/mnt/b","uid":5,"gid":5},{"path":"/mnt/missing","uid":5,"gid":5},{"path":"/mnt/c","uid":5,"gid":5}]}`, nil)
	wantErrno(t, err, syscall.ENOENT, "entry 1", "/mnt/missing", "entries 0 to 0 were applied")
	if u, _ := hostOwner(t, filepath.Join(root, "mnt/b")); u != 5 {
		t.Errorf("entry 0 before the failure: uid %d", u)
	}
	if u, _ := hostOwner(t, filepath.Join(root, "mnt/c")); u != 0 {
		t.Errorf("entry 2 after the failure was applied: uid %d", u)
	}
	// Malformed entries are refused before anything changes.
	for _, c := range []struct{ payload, fragment string }{
		{`{"entries":[{"path":"/mnt/c","uid":6,"gid":6},{"path":"/mnt/b","gid":6}]}`, "entry 1: uid is required"},
		{`{"entries":[{"path":"/mnt/c","uid":6,"gid":6},{"path":"/mnt/b","uid":6,"gid":-2}]}`, "entry 1: gid -2 is out of range"},
		{`{"entries":[{"path":"/mnt/c","uid":6,"gid":6},{"path":"/mnt/b","uid":4294967295,"gid":6}]}`, "out of range"},
		{`{"entries":[{"path":"/mnt/c","uid":6,"gid":6},{"path":"/mnt/b","uid":6,"gid":6},{"path":"mnt/b","uid":6,"gid":6}]}`, "entry 2"},
	} {
		wantErrno(t, call(t, d, pid, "fs.chown", c.payload, nil), syscall.EINVAL, c.fragment)
	}
	if u, _ := hostOwner(t, filepath.Join(root, "mnt/c")); u != 0 {
		t.Errorf("a refused batch changed /mnt/c to uid %d", u)
	}
}

// In a rootless target ids are the target's: uid 1000 inside is 101000 on
// the host, an id the target has not mapped is EINVAL, and without the
// user namespace the ids are the host's.
func TestFSChownRootless(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, Files: map[string]string{"/mnt/a": "a", "/mnt/b": "b"}})
	d, _ := newDispatcher(t, "")
	pid := target.PID()
	root := target.Root()
	if u, g := hostOwner(t, filepath.Join(root, "mnt/a")); u != sandbox.DefaultHostID || g != sandbox.DefaultHostID {
		t.Fatalf("the target's files start as %d:%d on the host", u, g)
	}
	mustCall(t, d, pid, "fs.chown", `{"entries":[{"path":"/mnt/a","uid":1000,"gid":1000}]}`, nil)
	if u, g := hostOwner(t, filepath.Join(root, "mnt/a")); u != sandbox.DefaultHostID+1000 || g != sandbox.DefaultHostID+1000 {
		t.Errorf("/mnt/a is %d:%d on the host, want 101000:101000", u, g)
	}
	err := call(t, d, pid, "fs.chown", `{"entries":[{"path":"/mnt/b","uid":70000,"gid":-1}]}`, nil)
	if want := targetErrno(t, pid, `os.chown("/mnt/b", 70000, -1)`); want != syscall.EINVAL {
		t.Fatalf("chown to an unmapped uid in the target: %v", want)
	}
	wantErrno(t, err, syscall.EINVAL, "entry 0", "/mnt/b")
	if u, _ := hostOwner(t, filepath.Join(root, "mnt/b")); u != sandbox.DefaultHostID {
		t.Errorf("/mnt/b changed to %d", u)
	}
	// Without the user namespace the handler speaks host ids.
	if err := dispatchIn(t, d, pid, noUserNS, "fs.chown", `{"entries":[{"path":"/mnt/b","uid":100042,"gid":-1}]}`, nil); err != nil {
		t.Fatal(err)
	}
	if u, g := hostOwner(t, filepath.Join(root, "mnt/b")); u != 100042 || g != sandbox.DefaultHostID {
		t.Errorf("/mnt/b is %d:%d on the host, want 100042:100000", u, g)
	}
}

func TestFSChownScratchTarget(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, Scratch: true, Files: map[string]string{"/app/bin": "x", "/app/data": "y"}})
	d, _ := newDispatcher(t, "")
	mustCall(t, d, target.PID(), "fs.chown", `{"entries":[{"path":"/app","uid":10,"gid":20},{"path":"/app/data","uid":30,"gid":40}]}`, nil)
	for p, want := range map[string][2]uint32{"app": {10, 20}, "app/data": {30, 40}, "app/bin": {0, 0}} {
		if u, g := hostOwner(t, filepath.Join(target.Root(), p)); u != sandbox.DefaultHostID+want[0] || g != sandbox.DefaultHostID+want[1] {
			t.Errorf("/%s is %d:%d on the host, want %d:%d inside", p, u, g, want[0], want[1])
		}
	}
}
