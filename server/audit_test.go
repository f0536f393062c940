package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/wire"
)

// parseLine decodes one audit line strictly.
func parseLine(t *testing.T, line []byte) AuditLine {
	t.Helper()
	if !bytes.HasSuffix(line, []byte("\n")) || bytes.Count(line, []byte("\n")) != 1 || !utf8.Valid(line) {
		t.Fatalf("not one UTF-8 line: %q", line)
	}
	var l AuditLine
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&l); err != nil {
		t.Fatalf("line %q: %v", line, err)
	}
	return l
}

func TestAuditLineFields(t *testing.T) {
	st := uint64(123456)
	when := time.Date(2025, 3, 4, 5, 6, 7, 890123456, time.FixedZone("CET", 3600))
	r := AuditRecord{
		Time: when, Op: "call", Caller: Caller{UID: 4242, GID: 4243, Groups: []uint32{7}, PID: 999},
		PID: 77, StartTime: &st,
		Target: &core.TargetInfo{PID: 77, StartTime: st, Namespaces: map[string]uint64{"user": 4026531837, "net": 4026532000}, UserNSOwner: 4242},
		Type:   "sysctl.set", Payload: []byte("{\n  \"name\": \"net.ipv4.ip_forward\",\n  \"value\": \"1\"\n}"),
		Err: wire.Errorf(syscall.EACCES, "no <rule> & such"), Denied: true, Duration: 1500 * time.Microsecond,
	}
	l := parseLine(t, r.Line())
	got, err := time.Parse(time.RFC3339Nano, l.Time)
	if err != nil || !got.Equal(when) || !strings.HasSuffix(l.Time, "Z") || !strings.Contains(l.Time, ".890123456") {
		t.Errorf("time %q (%v), want %v in UTC with nanoseconds", l.Time, err, when)
	}
	if l.Op != "call" || l.Result != "denied" || l.Caller.UID != 4242 || l.Caller.GID != 4243 || l.Caller.PID != 999 {
		t.Errorf("op/result/caller: %+v", l)
	}
	if tg := l.Target; tg.PID != 77 || tg.StartTime != st || !tg.Pinned || tg.Namespaces["user"] != 4026531837 ||
		tg.Namespaces["net"] != 4026532000 || len(tg.Namespaces) != 2 || tg.UserNSOwner == nil || *tg.UserNSOwner != 4242 {
		t.Errorf("target: %+v", tg)
	}
	if l.Type != "sysctl.set" || string(l.Payload) != `{"name":"net.ipv4.ip_forward","value":"1"}` || l.PayloadTruncated || l.PayloadBytes != len(r.Payload) {
		t.Errorf("payload %s (%d bytes, truncated %v)", l.Payload, l.PayloadBytes, l.PayloadTruncated)
	}
	if l.Errno != int(syscall.EACCES) || l.ErrnoName != "EACCES" || l.Error != "no <rule> & such (EACCES)" || l.DurationNS != 1500000 {
		t.Errorf("errno %d %q, error %q, duration %d", l.Errno, l.ErrnoName, l.Error, l.DurationNS)
	}

	// A success has errno 0 and no name; a target never pinned has the
	// start time the caller gave and nothing else.
	r = AuditRecord{Time: when, Op: "prepare", PID: 5, StartTime: &st, Type: "a.b,c.d"}
	l = parseLine(t, r.Line())
	if l.Result != "ok" || l.Errno != 0 || l.ErrnoName != "" || l.Error != "" || l.Target.Pinned || l.Target.PID != 5 ||
		l.Target.StartTime != st || l.Target.Namespaces != nil || l.Target.UserNSOwner != nil || string(l.Payload) != "{}" {
		t.Errorf("success line: %+v", l)
	}
}

// A payload over the bound is a JSON string of its first bytes, cut at a
// rune, marked truncated; one that is not JSON is a string too; the error
// message is bounded and every line stays valid UTF-8.
func TestAuditLinePayloadBound(t *testing.T) {
	// "é" is two bytes: the 512-byte cut falls inside one.
	big := `{"value":"` + strings.Repeat("é", 600) + `"}`
	r := AuditRecord{Op: "call", Type: "fs.write", Payload: []byte(big), Err: wire.Errorf(syscall.EIO, "%s", strings.Repeat("ü", 400)+"\xff")}
	line := r.Line()
	l := parseLine(t, line)
	var head string
	if err := json.Unmarshal(l.Payload, &head); err != nil {
		t.Fatalf("truncated payload %s is not a JSON string: %v", l.Payload, err)
	}
	if !l.PayloadTruncated || l.PayloadBytes != len(big) || len(head) > MaxAuditPayload || len(head) < MaxAuditPayload-1 ||
		!strings.HasPrefix(big, head) || !utf8.ValidString(head) {
		t.Errorf("payload head of %d bytes (truncated %v, %d bytes): %q", len(head), l.PayloadTruncated, l.PayloadBytes, head)
	}
	if len(l.Error) > MaxAuditPayload || !utf8.ValidString(l.Error) || !strings.HasPrefix(l.Error, "üü") {
		t.Errorf("error of %d bytes: %q", len(l.Error), l.Error)
	}
	if len(line) > 4<<10 {
		t.Errorf("line of %d bytes", len(line))
	}

	r = AuditRecord{Op: "call", Type: "x.y", Payload: []byte("not json\n\xff")}
	l = parseLine(t, r.Line())
	var s string
	if json.Unmarshal(l.Payload, &s) != nil || s != "not json\n\ufffd" || l.PayloadTruncated {
		t.Errorf("non-JSON payload: %s", l.Payload)
	}
	// A type name from a client is bounded too.
	r = AuditRecord{Op: "call", Type: strings.Repeat("t", 10000)}
	if l = parseLine(t, r.Line()); len(l.Type) != wire.MaxTypeName {
		t.Errorf("type of %d bytes", len(l.Type))
	}
}

// Lines from concurrent writers are whole, one per record, in a file of
// mode 0600.
func TestAuditLogConcurrentLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	a := NewAuditLog(path, nil)
	defer a.Close()
	if err := a.Ready(); err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				r := AuditRecord{Op: "call", PID: w*1000 + i, Type: "t.t", Payload: []byte(`{"pad":"` + strings.Repeat("x", 400) + `"}`)}
				if err := a.Write(&r); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[int]bool)
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		seen[parseLine(t, line).Target.PID] = true
	}
	if len(seen) != writers*each {
		t.Errorf("%d distinct lines, want %d", len(seen), writers*each)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, %v", fi.Mode(), err)
	}
}

// The log refuses a file others could tamper with, and says so; calls
// that change state are then refused, and it opens once the file is fixed.
func TestAuditLogRefusesUnsafeFiles(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real.log")
	if err := os.WriteFile(real, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, want string
		make       func(path string) error
	}{
		{"symlink", "symbolic link", func(p string) error { return os.Symlink(real, p) }},
		{"group-writable", "lets others write it", func(p string) error {
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				return err
			}
			return os.Chmod(p, 0o620)
		}},
		{"foreign owner", "owned by uid 4242", func(p string) error {
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				return err
			}
			return os.Chown(p, 4242, 4242)
		}},
		{"directory", "is a directory", func(p string) error { return os.Mkdir(p, 0o700) }},
		{"fifo", "cannot be opened", func(p string) error { return unix.Mkfifo(p, 0o600) }},
		{"missing directory", "no such file or directory", func(string) error { return nil }},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".log")
		if tc.name == "missing directory" {
			path = filepath.Join(dir, "nodir", "audit.log")
		}
		if err := tc.make(path); err != nil {
			t.Fatal(err)
		}
		a := NewAuditLog(path, nil)
		for what, err := range map[string]error{"Ready": a.Ready(), "Write": a.Write(&AuditRecord{Op: "call"})} {
			var we *wire.Error
			if !errors.As(err, &we) || we.Errno != syscall.EIO || !strings.Contains(we.Message, tc.want) || !strings.Contains(we.Message, path) {
				t.Errorf("%s: %s = %v, want EIO naming %s and saying %q", tc.name, what, err, path, tc.want)
			}
		}
		a.Close()
	}
	// Fixed, the next call opens it.
	path := filepath.Join(dir, "group-writable.log")
	a := NewAuditLog(path, nil)
	defer a.Close()
	if a.Ready() == nil {
		t.Fatal("group-writable file accepted")
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Ready(); err != nil {
		t.Errorf("after chmod: %v", err)
	}
}

// A log renamed away (rotated) is reopened at its path: lines do not go
// on into the old file once it has been removed.
func TestAuditLogReopensRemovedFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	a := NewAuditLog(path, nil)
	defer a.Close()
	if err := a.Write(&AuditRecord{Op: "call", PID: 1}); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := a.Write(&AuditRecord{Op: "call", PID: 2}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if l := parseLine(t, data); l.Target.PID != 2 {
		t.Errorf("new file holds %q", data)
	}
}

// No path, no log: a nil *AuditLog, whose methods do nothing. A closed
// log stays closed: it does not reopen its path.
func TestAuditLogNilAndClosed(t *testing.T) {
	a := NewAuditLog("", nil)
	if a != nil || a.Ready() != nil || a.Write(&AuditRecord{}) != nil || a.Close() != nil || a.Path() != "" {
		t.Errorf("no audit log: %v", a)
	}
	path := filepath.Join(t.TempDir(), "audit.log")
	a = NewAuditLog(path, nil)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	for what, err := range map[string]error{"Ready": a.Ready(), "Write": a.Write(&AuditRecord{Op: "call"})} {
		var we *wire.Error
		if !errors.As(err, &we) || we.Errno != syscall.EIO || !strings.Contains(we.Message, "closed") {
			t.Errorf("%s after Close: %v", what, err)
		}
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("a closed log reopened its path: %v", err)
	}
}

// Denials are written within their caller's budget and the budget of all
// (they were not: one user with no rule wrote 19 MB of lines a second);
// the rest are counted in one "denials_not_logged" line, written when the
// log closes at the latest. Root's denials and other lines are not
// budgeted, and a budget refills with time.
func TestAuditDenialsWithinBudget(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	a := NewAuditLog(path, nil)
	deny := func(uid uint32) {
		r := AuditRecord{Op: "call", Caller: Caller{UID: uid, GID: uid}, Type: "t.t", Denied: true, Err: wire.Errorf(syscall.EACCES, "no")}
		if err := a.WriteDenial(&r, 5, 8); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 {
		deny(1000) // 5 lines, 95 counted
	}
	for range 10 {
		deny(1001) // 3 lines (8 in all), 7 counted
	}
	for range 3 {
		deny(0)
	}
	if err := a.Write(&AuditRecord{Op: "call", Caller: Caller{UID: 1000}, Type: "t.set"}); err != nil {
		t.Fatal(err)
	}
	// A minute's refill, as if it had passed: one more line for 1001.
	a.denials.mu.Lock()
	a.denials.users[1001].at = a.denials.users[1001].at.Add(-time.Minute)
	a.denials.all.at = a.denials.all.at.Add(-time.Minute)
	a.denials.mu.Unlock()
	deny(1001)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	byUID := map[uint32]int{}
	for _, line := range lines[:len(lines)-1] {
		l := parseLine(t, line)
		if l.Result == "denied" {
			byUID[l.Caller.UID]++
		}
	}
	if byUID[1000] != 5 || byUID[1001] != 4 || byUID[0] != 3 || len(lines) != 5+4+3+1+1 {
		t.Errorf("denial lines by uid %v in %d lines, want 1000: 5, 1001: 4 (3, then 1 after the refill), 0: 3, and 2 more", byUID, len(lines))
	}
	var s DenialsSummary
	dec := json.NewDecoder(bytes.NewReader(lines[len(lines)-1]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		t.Fatalf("last line %q: %v", lines[len(lines)-1], err)
	}
	want := []UIDCount{{UID: 1000, Count: 95}, {UID: 1001, Count: 7}}
	since, err1 := time.Parse(time.RFC3339Nano, s.Since)
	at, err2 := time.Parse(time.RFC3339Nano, s.Time)
	if s.Op != "denials_not_logged" || s.Count != 102 || s.Callers != 2 || !slices.Equal(s.ByUID, want) || err1 != nil || err2 != nil || since.After(at) {
		t.Errorf("summary %+v, want 102 denials of uids %v", s, want)
	}
}

// Denials from more uids than the budget tracks (a user's subordinate
// uids) keep its memory bounded, and are all counted.
func TestAuditDenialsOfManyUIDs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	a := NewAuditLog(path, nil)
	const uids = maxTrackedUsers + 1000
	for uid := uint32(100000); uid < 100000+uids; uid++ {
		for range 2 {
			r := AuditRecord{Op: "call", Caller: Caller{UID: uid, GID: uid}, Type: "t.t", Denied: true, Err: wire.Errorf(syscall.EACCES, "no")}
			if err := a.WriteDenial(&r, 1, 10); err != nil {
				t.Fatal(err)
			}
		}
	}
	a.denials.mu.Lock()
	tracked, skipped := len(a.denials.users), len(a.denials.skipped)
	a.denials.mu.Unlock()
	if tracked > maxTrackedUsers || skipped > maxTrackedUsers {
		t.Errorf("tracking %d uids' budgets and %d uids' skipped denials, want at most %d each", tracked, skipped, maxTrackedUsers)
	}
	a.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	var s DenialsSummary
	if err := json.Unmarshal(lines[len(lines)-1], &s); err != nil {
		t.Fatal(err)
	}
	if len(lines) != 11 || s.Count != 2*uids-10 || s.Callers != maxTrackedUsers || !s.OtherCallers || len(s.ByUID) != MaxSummaryUIDs {
		t.Errorf("%d lines, summary of %d denials from %d callers (others %v, %d listed); want 11 lines and %d denials", len(lines), s.Count, s.Callers, s.OtherCallers, len(s.ByUID), 2*uids-10)
	}
}
