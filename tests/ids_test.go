package tests

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sandbox"
)

// Tests of the ids plugin: names and ids as the target's own /etc/passwd
// and /etc/group say, parsed by the plugin (never NSS).

const idsPasswd = `# users of the test target
root:x:0:0:root:/root:/bin/sh

daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
a line without any colon
short:x:5
baduid:x:abc:1::/:/bin/sh
neguid:x:-5:1::/:/bin/sh
minusone:x:4294967295:1::/:/bin/sh
+nisuser::::::
:x:7:7::/:/bin/sh
alice:x:1000:1000:Alice Liddell,,,:/home/alice:/bin/bash
alias:x:1000:1000::/home/alias:/bin/bash
bob:x:1001:100::/home/bob:/bin/zsh
alice:x:2000:2000:second alice:/:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin`

const idsGroup = `root:x:0:
wheel:x:10:alice,bob
users:x:100:alice, bob ,
bad:x:notanumber:
staff:x:50
# docker:x:998:
docker:x:999:
`

type idsUser struct {
	Name  string `json:"name"`
	ID    uint32 `json:"id"`
	GID   uint32 `json:"gid"`
	Gecos string `json:"gecos"`
	Home  string `json:"home"`
	Shell string `json:"shell"`
}

type idsGroupEntry struct {
	Name    string   `json:"name"`
	ID      uint32   `json:"id"`
	Members []string `json:"members"`
}

func TestIDsScratchTarget(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, Scratch: true,
		Files: map[string]string{"/etc/passwd": idsPasswd, "/etc/group": idsGroup}})
	d, _ := newDispatcher(t, "")
	pid := target.PID()

	users := []struct {
		query string
		want  idsUser
	}{
		{`{"name":"root"}`, idsUser{"root", 0, 0, "root", "/root", "/bin/sh"}},
		{`{"id":0}`, idsUser{"root", 0, 0, "root", "/root", "/bin/sh"}},
		{`{"name":"alice"}`, idsUser{"alice", 1000, 1000, "Alice Liddell,,,", "/home/alice", "/bin/bash"}},
		// The first line with an id wins, as with the "files" NSS source.
		{`{"id":1000}`, idsUser{"alice", 1000, 1000, "Alice Liddell,,,", "/home/alice", "/bin/bash"}},
		{`{"name":"alias"}`, idsUser{"alias", 1000, 1000, "", "/home/alias", "/bin/bash"}},
		{`{"id":1001}`, idsUser{"bob", 1001, 100, "", "/home/bob", "/bin/zsh"}},
		{`{"id":2000}`, idsUser{"alice", 2000, 2000, "second alice", "/", "/bin/false"}},
		// The last line has no newline.
		{`{"name":"nobody"}`, idsUser{"nobody", 65534, 65534, "nobody", "/nonexistent", "/usr/sbin/nologin"}},
	}
	for _, c := range users {
		var got idsUser
		mustCall(t, d, pid, "ids.user", c.query, &got)
		if got != c.want {
			t.Errorf("ids.user %s = %+v, want %+v", c.query, got, c.want)
		}
	}
	groups := []struct {
		query string
		want  idsGroupEntry
	}{
		{`{"name":"root"}`, idsGroupEntry{"root", 0, []string{}}},
		{`{"name":"wheel"}`, idsGroupEntry{"wheel", 10, []string{"alice", "bob"}}},
		{`{"id":100}`, idsGroupEntry{"users", 100, []string{"alice", "bob"}}},
		{`{"id":999}`, idsGroupEntry{"docker", 999, []string{}}},
	}
	for _, c := range groups {
		var got idsGroupEntry
		mustCall(t, d, pid, "ids.group", c.query, &got)
		if got.Name != c.want.Name || got.ID != c.want.ID || got.Members == nil || !slices.Equal(got.Members, c.want.Members) {
			t.Errorf("ids.group %s = %#v, want %#v", c.query, got, c.want)
		}
	}

	// Malformed, commented and NIS lines are skipped, not matched.
	missing := []struct{ typ, query, fragment string }{
		{"ids.user", `{"name":"mallory"}`, `no user with name "mallory" in /etc/passwd`},
		{"ids.user", `{"id":4242}`, `no user with id 4242 in /etc/passwd`},
		{"ids.user", `{"name":"short"}`, "/etc/passwd"},
		{"ids.user", `{"name":"baduid"}`, "/etc/passwd"},
		{"ids.user", `{"name":"neguid"}`, "/etc/passwd"},
		{"ids.user", `{"name":"minusone"}`, "/etc/passwd"},
		{"ids.user", `{"name":"+nisuser"}`, "/etc/passwd"},
		{"ids.user", `{"name":"a line without any colon"}`, "/etc/passwd"},
		{"ids.user", `{"name":"# users of the test target"}`, "/etc/passwd"},
		{"ids.user", `{"id":7}`, "/etc/passwd"},
		{"ids.group", `{"name":"staff"}`, `no group with name "staff" in /etc/group`},
		{"ids.group", `{"name":"bad"}`, "/etc/group"},
		{"ids.group", `{"id":998}`, `no group with id 998 in /etc/group`},
		{"ids.group", `{"name":"alice"}`, "/etc/group"},
	}
	for _, c := range missing {
		wantErrno(t, call(t, d, pid, c.typ, c.query, nil), syscall.ENOENT, c.fragment)
	}
	invalid := []struct{ typ, query, fragment string }{
		{"ids.user", `{}`, "name or its id"},
		{"ids.user", `{"name":"root","id":0}`, "not both"},
		{"ids.group", `{}`, "name or its id"},
		{"ids.group", `{"name":"root","id":0}`, "not both"},
		{"ids.user", `{"id":-1}`, "out of range"},
		{"ids.user", `{"id":4294967295}`, "out of range"},
		{"ids.user", `{"name":""}`, "not a valid name"},
		{"ids.user", `{"name":"root:x"}`, "not a valid name"},
		{"ids.group", `{"name":"a\nb"}`, "not a valid name"},
		{"ids.user", `{"uid":0}`, "uid"},
		{"ids.user", `{"id":"0"}`, "id"},
	}
	for _, c := range invalid {
		wantErrno(t, call(t, d, pid, c.typ, c.query, nil), syscall.EINVAL, c.fragment)
	}
}

// A FROM-scratch target without the files: ENOENT naming the file.
func TestIDsScratchTargetWithoutFiles(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Rootless: true, Scratch: true, Files: map[string]string{"/app": "x"}})
	d, _ := newDispatcher(t, "")
	wantErrno(t, call(t, d, target.PID(), "ids.user", `{"name":"root"}`, nil), syscall.ENOENT, "/etc/passwd")
	wantErrno(t, call(t, d, target.PID(), "ids.group", `{"id":0}`, nil), syscall.ENOENT, "/etc/group")
}

// A container-like target shares the host's root file system (the test
// target only mounts a tmpfs on /mnt): the plugin must agree with the
// host's /etc/passwd and /etc/group line by line.
func TestIDsRootfulTargetReadsItsRoot(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d, _ := newDispatcher(t, "")
	for _, db := range []struct{ file, typ string }{{"/etc/passwd", "ids.user"}, {"/etc/group", "ids.group"}} {
		f, err := os.Open(db.file)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		checked := 0
		s := bufio.NewScanner(f)
		for s.Scan() {
			fields := strings.Split(s.Text(), ":")
			if len(fields) < 3 || fields[0] == "" || seen[fields[0]] || strings.HasPrefix(fields[0], "#") {
				continue
			}
			seen[fields[0]] = true
			id, err := strconv.ParseUint(fields[2], 10, 32)
			if err != nil {
				continue
			}
			var got struct {
				Name string `json:"name"`
				ID   uint64 `json:"id"`
			}
			mustCall(t, d, target.PID(), db.typ, `{"name":"`+fields[0]+`"}`, &got)
			if got.ID != id || got.Name != fields[0] {
				t.Errorf("%s %s: got %+v, the host's %s says %d", db.typ, fields[0], got, db.file, id)
			}
			checked++
		}
		f.Close()
		if checked == 0 {
			t.Errorf("no entry of the host's %s was checked", db.file)
		}
	}
}

// What the plugin refuses to read, with the files moved to /mnt (the
// passwd_file and group_file options) in a target whose /mnt the host can
// rewrite between requests.
func TestIDsRefusesWhatIsNotAPlainFile(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true,
		Files: map[string]string{"/mnt/real/passwd": idsPasswd, "/mnt/group": idsGroup}})
	d, _ := newDispatcher(t, `
[[plugin]]
name = "ids"
[plugin.options]
passwd_file = "/mnt/passwd"
group_file = "/mnt/group"
`)
	pid := target.PID()
	hostPasswd := filepath.Join(target.Root(), "mnt/passwd")
	replace := func(make func() error) {
		t.Helper()
		if err := os.RemoveAll(hostPasswd); err != nil {
			t.Fatal(err)
		}
		if err := make(); err != nil {
			t.Fatal(err)
		}
	}
	var u idsUser
	var g idsGroupEntry
	mustCall(t, d, pid, "ids.group", `{"name":"wheel"}`, &g)
	if g.ID != 10 {
		t.Errorf("group_file option: wheel is %d", g.ID)
	}

	// Ordinary symbolic links inside the target are followed.
	replace(func() error { return os.Symlink("real/passwd", hostPasswd) })
	mustCall(t, d, pid, "ids.user", `{"name":"bob"}`, &u)
	if u.ID != 1001 {
		t.Errorf("through a symlink: bob is %d", u.ID)
	}
	// Magic links are not, although the target's root could: here
	// /proc/self/root is the target's own root.
	replace(func() error { return os.Symlink("/proc/self/root/mnt/real/passwd", hostPasswd) })
	if _, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-a", "cat", "/mnt/passwd").Output(); err != nil {
		t.Fatalf("the target's root cannot read through the magic link either (%v): the test proves nothing", err)
	}
	wantErrno(t, call(t, d, pid, "ids.user", `{"name":"bob"}`, nil), syscall.ELOOP, "/mnt/passwd", "magic link")

	// A FIFO is not opened (that would block until a writer came).
	replace(func() error { return unix.Mkfifo(hostPasswd, 0o644) })
	start := time.Now()
	wantErrno(t, call(t, d, pid, "ids.user", `{"name":"bob"}`, nil), syscall.EINVAL, "/mnt/passwd", "not a regular file")
	if time.Since(start) > 5*time.Second {
		t.Errorf("a FIFO took %v", time.Since(start))
	}
	replace(func() error { return os.Mkdir(hostPasswd, 0o755) })
	wantErrno(t, call(t, d, pid, "ids.user", `{"name":"bob"}`, nil), syscall.EISDIR, "/mnt/passwd")

	// Bounded sizes: a file over 4 MiB, a line over 1 MiB.
	huge := strings.Repeat("# padding padding padding padding padding padding padding\n", (4<<20)/58+1)
	replace(func() error { return os.WriteFile(hostPasswd, []byte(idsPasswd+"\n"+huge), 0o644) })
	wantErrno(t, call(t, d, pid, "ids.user", `{"name":"bob"}`, nil), syscall.EFBIG, "/mnt/passwd", "4194304")
	long := "x:x:1:1:" + strings.Repeat("g", 1<<20) + ":/:/bin/sh\n"
	replace(func() error { return os.WriteFile(hostPasswd, []byte(long+idsPasswd), 0o644) })
	wantErrno(t, call(t, d, pid, "ids.user", `{"name":"bob"}`, nil), syscall.EFBIG, "/mnt/passwd", "line 1")
	// A long line that fits is fine, and so is CRLF-free data after it.
	fits := "x:x:1:1:" + strings.Repeat("g", 1<<19) + ":/:/bin/sh\n"
	replace(func() error { return os.WriteFile(hostPasswd, []byte(fits+idsPasswd), 0o644) })
	mustCall(t, d, pid, "ids.user", `{"name":"bob"}`, &u)
	if u.ID != 1001 {
		t.Errorf("after a long line: bob is %d", u.ID)
	}
}

// os/user may resolve users through cgo and NSS: neither the plugin nor
// any nsplug package it depends on may import it. (go-plugin links it for
// its client side, which only the core runs, on the host.)
func TestIDsPluginDoesNotImportOSUser(t *testing.T) {
	parallel(t)
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}:{{range .Imports}} {{.}}{{end}}",
		"github.com/nsplug/nsplug/plugins/ids").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	ours := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, ":")
		if !strings.HasPrefix(pkg, "github.com/nsplug/nsplug/") {
			continue
		}
		ours++
		if slices.Contains(strings.Fields(imports), "os/user") {
			t.Errorf("%s imports os/user", pkg)
		}
	}
	if ours < 2 { // plugins/ids and the sdk at least
		t.Fatalf("go list found %d nsplug packages:\n%s", ours, out)
	}
}
