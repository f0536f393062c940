package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/server"
)

// mountTmpfs mounts a tmpfs with options (size=...) and flags on a fresh
// directory, unmounted with the test.
func mountTmpfs(t *testing.T, flags uintptr, options string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", flags, options); err != nil {
		t.Fatalf("mount tmpfs %s on %s: %v", options, dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fillUp writes a file in dir until its file system is full.
func fillUp(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", dir, err)
			}
			break
		}
	}
	// The last, partial page too.
	for _, err := f.Write(chunk[:1]); err == nil; _, err = f.Write(chunk[:1]) {
	}
	return path
}

// auditLines reads the log back, each line decoded strictly.
func auditLines(t *testing.T, path string) []server.AuditLine {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []server.AuditLine
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if line[len(line)-1] != '\n' {
			t.Fatalf("%s ends in a partial line %q", path, line)
		}
		var l server.AuditLine
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		out = append(out, l)
	}
	return out
}

// auditSetup is a container with a user namespace of its own (made by
// root) whose net.core.somaxconn the tests change (sysctl.set declares it
// may change "net"), a core, and a gate that lets uid 5000 read sysctls
// of any target.
type auditSetup struct {
	target *sandbox.Sandbox
	d      *core.Dispatcher
	g      *server.Gate
	log    string
}

func newAuditSetup(t *testing.T, logPath string) *auditSetup {
	t.Helper()
	s := &auditSetup{target: newTarget(t, sandbox.Options{Rootless: true}), log: logPath}
	s.d, _ = newDispatcher(t, "")
	a := server.NewAuditLog(logPath, nil)
	t.Cleanup(func() { a.Close() })
	s.g = authzGate(s.d, a, config.AllowRule{UIDs: []uint32{5000}, Types: []string{"sysctl.get"}, Targets: config.TargetsAny})
	return s
}

var root = server.Caller{UID: 0, GID: 0, PID: int32(os.Getpid())}

// set is sysctl.set of net.core.somaxconn = value as root, through the gate.
func (s *auditSetup) set(value int) error {
	_, _, err := gateCall(s.g, s.d, root, s.setRequest(value))
	return err
}

func (s *auditSetup) setRequest(value int) core.Request {
	return core.Request{PID: s.target.PID(), Type: "sysctl.set", Payload: json.RawMessage(fmt.Sprintf(`{"name":"net.core.somaxconn","value":"%d"}`, value))}
}

// value is net.core.somaxconn of the target, read without the gate.
func (s *auditSetup) value(t *testing.T) int {
	n, err := strconv.Atoi(sysctlGet(t, s.d, s.target.PID(), "net.core.somaxconn"))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Every call that changes state and every denial is one line, read back
// field by field against what the host sees; a call that only reads is
// not logged.
func TestAuditLinesOfRealCalls(t *testing.T) {
	parallel(t)
	s := newAuditSetup(t, filepath.Join(t.TempDir(), "audit.log"))
	pid := s.target.PID()
	host := hostTarget(t)
	start := time.Now()
	if err := s.set(1001); err != nil {
		t.Fatal(err)
	}
	get := core.Request{PID: pid, Type: "sysctl.get", Payload: json.RawMessage(`{"name":"net.core.somaxconn"}`)}
	if _, _, err := gateCall(s.g, s.d, root, get); err != nil {
		t.Fatal(err)
	}
	bad := core.Request{PID: pid, Type: "sysctl.set", Payload: json.RawMessage(`{"name":"net.core.nope","value":"1"}`)}
	_, _, errSet := gateCall(s.g, s.d, root, bad)
	wantErrno(t, errSet, syscall.ENOENT)
	reader := server.Caller{UID: 5000, GID: 5000, PID: 1234}
	_, denied, errType := gateCall(s.g, s.d, reader, s.setRequest(7))
	wantErrno(t, errType, syscall.EACCES, "sysctl.set")
	if denied != server.DeniedType {
		t.Errorf("type denial reported as %q", denied)
	}
	get.PID = host
	_, denied, errHost := gateCall(s.g, s.d, reader, get)
	wantErrno(t, errHost, syscall.EACCES, "daemon's own user namespace")
	if denied != server.DeniedTarget {
		t.Errorf("target denial reported as %q", denied)
	}
	end := time.Now()

	lines := auditLines(t, s.log)
	if len(lines) != 4 {
		t.Fatalf("%d lines, want 4 (set, failed set, two denials): %+v", len(lines), lines)
	}
	for i, l := range lines {
		when, err := time.Parse(time.RFC3339Nano, l.Time)
		if err != nil || when.Before(start.Truncate(time.Microsecond)) || when.After(end) || !strings.HasSuffix(l.Time, "Z") {
			t.Errorf("line %d: time %q (%v) not between %v and %v in UTC", i, l.Time, err, start, end)
		}
		if l.Op != "call" || l.DurationNS <= 0 || l.DurationNS > end.Sub(start).Nanoseconds() {
			t.Errorf("line %d: op %q, duration %d", i, l.Op, l.DurationNS)
		}
	}
	checkPinned := func(i int, l server.AuditLine, pid int) {
		t.Helper()
		tg := l.Target
		if !tg.Pinned || tg.PID != pid || tg.StartTime != startTime(t, pid) || tg.UserNSOwner == nil || *tg.UserNSOwner != 0 {
			t.Errorf("line %d: target %+v, want pid %d started at %d, owner 0", i, tg, pid, startTime(t, pid))
		}
		for _, ns := range allNS {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d/ns/%s", pid, ns)); err == nil && tg.Namespaces[ns] != nsInode(t, pid, ns) {
				t.Errorf("line %d: %s namespace %d, /proc/%d shows %d", i, ns, tg.Namespaces[ns], pid, nsInode(t, pid, ns))
			}
		}
	}
	set := lines[0]
	checkPinned(0, set, pid)
	if set.Result != "ok" || set.Errno != 0 || set.ErrnoName != "" || set.Caller.UID != 0 || set.Caller.PID != int32(os.Getpid()) ||
		set.Type != "sysctl.set" || string(set.Payload) != `{"name":"net.core.somaxconn","value":"1001"}` || set.PayloadTruncated {
		t.Errorf("set line: %+v", set)
	}
	failed := lines[1]
	checkPinned(1, failed, pid)
	if failed.Result != "error" || failed.Errno != int(syscall.ENOENT) || failed.ErrnoName != "ENOENT" || failed.Error != errSet.Error() {
		t.Errorf("failed set line: %+v", failed)
	}
	byType := lines[2]
	if byType.Result != "denied" || byType.Errno != int(syscall.EACCES) || byType.ErrnoName != "EACCES" || byType.Error != errType.Error() ||
		byType.Caller.UID != 5000 || byType.Caller.GID != 5000 || byType.Caller.PID != 1234 || byType.Target.Pinned || byType.Target.PID != pid ||
		byType.Target.Namespaces != nil || string(byType.Payload) != `{"name":"net.core.somaxconn","value":"7"}` {
		t.Errorf("type denial line: %+v", byType)
	}
	byTarget := lines[3]
	checkPinned(3, byTarget, host)
	if byTarget.Result != "denied" || byTarget.Type != "sysctl.get" || byTarget.Error != errHost.Error() {
		t.Errorf("target denial line: %+v", byTarget)
	}
	fi, err := os.Stat(s.log)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("log file: %v, %v", fi.Mode(), err)
	}
}

// A full disk fails closed: a call that changes state is refused (EIO)
// before its handler runs, reads go on, denials are still denials, a line
// the disk cuts short is taken back, and once there is room again calls
// that change state are audited and served.
func TestAuditFailsClosedOnAFullDisk(t *testing.T) {
	parallel(t)
	dir := mountTmpfs(t, 0, "size=256k,mode=0700")
	s := newAuditSetup(t, filepath.Join(dir, "audit.log"))
	if err := s.set(1100); err != nil {
		t.Fatal(err)
	}
	filler := fillUp(t, dir)

	err := s.set(1200)
	wantErrno(t, err, syscall.EIO, "sysctl.set changes state and cannot be audited now, so it was not run", "no room for audit lines", "no space left")
	if v := s.value(t); v != 1100 {
		t.Errorf("refused set ran: value %d", v)
	}
	get := core.Request{PID: s.target.PID(), Type: "sysctl.get", Payload: json.RawMessage(`{"name":"net.core.somaxconn"}`)}
	if _, _, err := gateCall(s.g, s.d, server.Caller{UID: 5000, GID: 5000}, get); err != nil {
		t.Errorf("a read with the disk full: %v", err)
	}
	_, denied, err := gateCall(s.g, s.d, server.Caller{UID: 6000, GID: 6000}, get)
	wantErrno(t, err, syscall.EACCES, "uid 6000")
	if denied != server.DeniedType {
		t.Errorf("denial reported as %q", denied)
	}

	// Lines go on into the room reserved past the end of the file until
	// it is used up; the line cut short then is removed.
	a := s.g.Audit
	var werr error
	for i := 0; i < 1000 && werr == nil; i++ {
		werr = a.Write(&server.AuditRecord{Op: "call", Type: "fill.fill", Payload: []byte(`{"n":` + strconv.Itoa(i) + `,"pad":"` + strings.Repeat("p", 400) + `"}`)})
	}
	wantErrno(t, werr, syscall.EIO, s.log)
	lines := auditLines(t, s.log) // whole lines only
	// The set, its refusal and the denial, each written with the disk
	// full, into the room the set reserved.
	if len(lines) < 4 || lines[0].Type != "sysctl.set" || lines[1].Result != "error" || lines[1].Errno != int(syscall.EIO) ||
		lines[2].Result != "denied" || lines[2].Caller.UID != 6000 || lines[3].Type != "fill.fill" {
		t.Errorf("lines: %d, first %+v", len(lines), lines[:min(3, len(lines))])
	}
	if err := a.Ready(); err == nil {
		t.Fatal("Ready after a failed write with the disk full")
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := s.set(1300); err != nil {
		t.Fatalf("with room again: %v", err)
	}
	if v := s.value(t); v != 1300 {
		t.Errorf("value %d after the set", v)
	}
	lines = auditLines(t, s.log)
	if last := lines[len(lines)-1]; last.Result != "ok" || !strings.Contains(string(last.Payload), `"1300"`) {
		t.Errorf("last line %+v", last)
	}
}

// A log that fails after the change was made: the caller hears that the
// change was made but not audited (EIO), and calls that change state are
// refused from then on; denials stay denials.
func TestAuditChangeMadeButNotAudited(t *testing.T) {
	parallel(t)
	s := newAuditSetup(t, filepath.Join(t.TempDir(), "audit.log"))
	_, _, err := s.g.Call(root, s.setRequest(1400), func(r core.Request) (*core.Response, error) {
		resp, err := s.d.Call(context.Background(), r)
		// Meanwhile the log's path became a directory.
		if err := os.Remove(s.log); err != nil {
			t.Error(err)
		}
		if err := os.Mkdir(s.log, 0o700); err != nil {
			t.Error(err)
		}
		return resp, err
	})
	wantErrno(t, err, syscall.EIO, "sysctl.set ran and its change was made, but it could not be audited", s.log, "is a directory")
	if v := s.value(t); v != 1400 {
		t.Errorf("value %d, want the change made", v)
	}
	wantErrno(t, s.set(1500), syscall.EIO, "cannot be audited now", "is a directory")
	if v := s.value(t); v != 1400 {
		t.Errorf("refused set ran: %d", v)
	}
	_, denied, err := gateCall(s.g, s.d, server.Caller{UID: 6000, GID: 6000}, s.setRequest(1))
	wantErrno(t, err, syscall.EACCES)
	if denied != server.DeniedType {
		t.Errorf("denial reported as %q", denied)
	}
}

// A log on a read-only file system never opens: calls that change state
// are refused, naming why, and everything else is served or denied as
// usual.
func TestAuditUnwritableLog(t *testing.T) {
	parallel(t)
	dir := mountTmpfs(t, unix.MS_RDONLY, "size=64k")
	s := newAuditSetup(t, filepath.Join(dir, "audit.log"))
	before := s.value(t)
	wantErrno(t, s.set(before+1), syscall.EIO, "cannot be audited now", "cannot be opened", "read-only file system")
	if v := s.value(t); v != before {
		t.Errorf("refused set ran: %d", v)
	}
	get := core.Request{PID: s.target.PID(), Type: "sysctl.get", Payload: json.RawMessage(`{"name":"net.core.somaxconn"}`)}
	if _, _, err := gateCall(s.g, s.d, server.Caller{UID: 5000, GID: 5000}, get); err != nil {
		t.Errorf("read: %v", err)
	}
	_, denied, err := gateCall(s.g, s.d, server.Caller{UID: 6000, GID: 6000}, get)
	wantErrno(t, err, syscall.EACCES)
	if denied != server.DeniedType {
		t.Errorf("denial reported as %q", denied)
	}
}

// A user whom no rule names cannot fill the audit log with denials. Before
// the budget, one such user wrote 19 MB of denial lines a second through
// the fast path, and a full disk then refuses every call that changes
// state. Now their first denials get lines, the rest are counted in one
// "denials_not_logged" line (written at shutdown at the latest), and
// root's call that changes state is still served and audited.
func TestOneUsersDenialsCannotFloodTheAuditLog(t *testing.T) {
	parallel(t)
	logPath := filepath.Join(t.TempDir(), "audit.log")
	d := startDaemon(t, fmt.Sprintf("audit_log = %q\naudit_denials_per_minute_per_user = 20", logPath), "")
	target := newTarget(t, sandbox.Options{Rootless: true})
	read := &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(target.PID())}, Type: "procfs.read", Payload: []byte(`{"path":"/proc/uptime"}`)}
	raw := newRawFast(t, connectAs(t, nobody, d.socket))
	const calls = 500
	for i := range calls {
		if st := raw.call(t, read); codes.Code(st.Code) != codes.PermissionDenied {
			t.Fatalf("call %d of uid %d: %v, want the policy's denial", i, nobody.Uid, st)
		}
	}
	set := &apiv1.CallRequest{Target: read.Target, Type: "sysctl.set", Payload: []byte(`{"name":"net.core.somaxconn","value":"1234"}`)}
	if _, err := d.client(t).Call(context.Background(), set); err != nil {
		t.Fatalf("root's sysctl.set after the flood: %v", err)
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	if code := d.wait(t, time.Minute); code != 0 {
		t.Fatalf("daemon exited %d; its log:\n%s", code, d.log)
	}

	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	var denials, sets int
	var summary *server.DenialsSummary
	for _, line := range bytes.SplitAfter(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
		var l struct {
			Op     string `json:"op"`
			Result string `json:"result"`
			Type   string `json:"type"`
			Caller struct {
				UID uint32 `json:"uid"`
			} `json:"caller"`
		}
		if err := json.Unmarshal(line, &l); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		switch {
		case l.Op == "denials_not_logged":
			summary = &server.DenialsSummary{}
			json.Unmarshal(line, summary)
		case l.Result == "denied" && l.Caller.UID == nobody.Uid:
			denials++
		case l.Type == "sysctl.set" && l.Result == "ok" && l.Caller.UID == 0:
			sets++
		}
	}
	if denials != 20 || sets != 1 {
		t.Errorf("%d denial lines of uid %d (want 20, its budget) and %d of root's sysctl.set (want 1), in %d bytes", denials, nobody.Uid, sets, len(data))
	}
	want := []server.UIDCount{{UID: nobody.Uid, Count: calls - 20}}
	if summary == nil || summary.Count != calls-20 || summary.Callers != 1 || !slices.Equal(summary.ByUID, want) {
		t.Errorf("summary %+v, want %d denials not logged, all uid %d's", summary, calls-20, nobody.Uid)
	}
}
