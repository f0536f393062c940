package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/wire"
)

// AuditLog is the audit_log file: one JSON line (AuditLine) per call that
// changes state and per denial, denials within a budget (WriteDenial).
//
// Each line is one write(2) on a file opened O_APPEND, so lines from
// concurrent calls never interleave; a write the file system cuts short
// is undone (the file is truncated back), so the file holds whole lines
// only. The file is created 0600; an existing one must be a regular file
// of the daemon's uid that neither group nor others may write, reached
// without a symbolic link.
//
// It fails closed: Ready refuses (EIO) while the file cannot be opened,
// while its file system is read-only or has no room for AuditReserve
// bytes more, and after a write failed: until there is room again when
// it failed for lack of room, until a line is written again otherwise. A file
// renamed or removed away (log rotation) is reopened at its path. The
// methods of a nil *AuditLog (no audit_log configured) do nothing.
type AuditLog struct {
	path string
	log  hclog.Logger

	mu     sync.Mutex
	f      *os.File // nil while it cannot be opened
	closed bool
	bad    error // why the last open or write failed; nil after a line is written
	// badSpace: bad is a lack of room, which Ready can see has ended.
	badSpace bool

	denials denialBudget
}

// AuditReserve is the room Ready makes sure of for the lines to come:
// several of the largest size (under 8 KiB), for calls in flight at once.
const AuditReserve = 64 << 10

// NewAuditLog opens the audit log at path (config.Server.AuditLog); for
// "" (no audit log) it returns nil. A log that cannot be opened is not an
// error here: it is logged, read-only calls are served, and calls that
// change state are refused (Ready) until it opens.
func NewAuditLog(path string, log hclog.Logger) *AuditLog {
	if path == "" {
		return nil
	}
	if log == nil {
		log = hclog.NewNullLogger()
	}
	a := &AuditLog{path: path, log: log}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.openLocked(); err != nil {
		a.log.Error("audit log unavailable: calls that change state are refused until it opens", "error", err)
	}
	return a
}

// Path is the file's path.
func (a *AuditLog) Path() string {
	if a == nil {
		return ""
	}
	return a.path
}

// openLocked (re)opens the file, closing any previous one.
func (a *AuditLog) openLocked() error {
	if a.f != nil {
		a.f.Close()
		a.f = nil
	}
	// O_NONBLOCK: a FIFO at the path fails at once instead of hanging
	// the daemon; fstat then refuses it.
	fd, err := unix.Open(a.path, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0o600)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			err = errors.New("it is a symbolic link")
		}
		a.bad = wire.Errorf(syscall.EIO, "audit log %s cannot be opened: %v", a.path, err)
		return a.bad
	}
	f := os.NewFile(uintptr(fd), a.path)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		a.bad = wire.Errorf(syscall.EIO, "audit log %s: fstat: %v", a.path, err)
		return a.bad
	}
	why := ""
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		why = "it is not a regular file"
	case int(st.Uid) != os.Geteuid():
		why = fmt.Sprintf("it is owned by uid %d, not the daemon's uid %d", st.Uid, os.Geteuid())
	case st.Mode&0o022 != 0:
		why = fmt.Sprintf("its mode %#o lets others write it (chmod go-w it)", st.Mode&0o777)
	}
	if why != "" {
		f.Close()
		a.bad = wire.Errorf(syscall.EIO, "audit log %s refused: %s", a.path, why)
		return a.bad
	}
	a.f, a.bad, a.badSpace = f, nil, false
	return nil
}

// currentLocked returns the open file, reopening it when it cannot be
// opened yet or was removed from its path.
func (a *AuditLog) currentLocked() (*os.File, error) {
	if a.closed {
		return nil, wire.Errorf(syscall.EIO, "audit log %s is closed", a.path)
	}
	if a.f != nil {
		var st unix.Stat_t
		if err := unix.Fstat(int(a.f.Fd()), &st); err == nil && st.Nlink > 0 {
			return a.f, nil
		}
	}
	if err := a.openLocked(); err != nil {
		return nil, err
	}
	return a.f, nil
}

// Ready reports whether a call that changes state may run: nil, or an EIO
// *wire.Error saying why its line could not be relied on. It reserves
// room for the coming lines (fallocate, FALLOC_FL_KEEP_SIZE, past the end
// of the file), so that a disk filling up while the call runs does not
// keep its line out; where the file system cannot reserve, it checks the
// free space instead.
func (a *AuditLog) Ready() error {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	f, err := a.currentLocked()
	if err != nil {
		return err
	}
	if a.bad != nil && !a.badSpace {
		return a.bad // only a line written tells it works again
	}
	fd := int(f.Fd())
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return wire.Errorf(syscall.EIO, "audit log %s: fstatfs: %v", a.path, err)
	}
	if fs.Flags&unix.ST_RDONLY != 0 {
		return wire.Errorf(syscall.EIO, "audit log %s is on a read-only file system", a.path)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return wire.Errorf(syscall.EIO, "audit log %s: fstat: %v", a.path, err)
	}
	switch err := unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, st.Size, AuditReserve); {
	case err == nil:
	case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS):
		free := fs.Bavail
		if os.Geteuid() == 0 {
			free = fs.Bfree // root may write the blocks reserved for it
		}
		if bytes := free * uint64(fs.Bsize); bytes < AuditReserve {
			return wire.Errorf(syscall.EIO, "audit log %s: its file system has %d bytes free, less than the %d kept for audit lines", a.path, bytes, AuditReserve)
		}
	default:
		return wire.Errorf(syscall.EIO, "audit log %s: no room for audit lines: reserving %d bytes: %v", a.path, AuditReserve, err)
	}
	a.bad, a.badSpace = nil, false // there is room again
	return nil
}

// Write appends r's line in one write(2). On failure the file is left
// with whole lines only, the log counts as bad until a line is written,
// and the error (EIO) says why.
func (a *AuditLog) Write(r *AuditRecord) error {
	if a == nil {
		return nil
	}
	line := r.Line()
	a.mu.Lock()
	defer a.mu.Unlock()
	f, err := a.currentLocked()
	if err != nil {
		return err
	}
	err = a.writeLocked(f, line)
	a.bad = err
	return err
}

// WriteDenial is Write for a denial, within its caller's budget and the
// budget of all (denials.go): perUser and total are the lines a minute,
// 0 for no bound. Root's denials are always written. A denial past the
// budget is counted for the next "denials_not_logged" line instead.
func (a *AuditLog) WriteDenial(r *AuditRecord, perUser, total int) error {
	if a == nil {
		return nil
	}
	if !r.Caller.Root() && !a.denials.take(r.Caller.UID, time.Now(), perUser, total, a.writeSummary) {
		return nil
	}
	return a.Write(r)
}

// writeSummary writes the line of the denials not logged, if any.
func (a *AuditLog) writeSummary() {
	line := a.denials.summary(time.Now())
	if line == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	f, err := a.currentLocked()
	if err == nil {
		err = a.writeLocked(f, line)
		a.bad = err
	}
	if err != nil {
		a.log.Error("audit: the line counting denials not logged was not written", "line", string(line), "error", err)
	}
}

// writeLocked writes line, or fails and sets badSpace to whether for lack
// of room.
func (a *AuditLog) writeLocked(f *os.File, line []byte) error {
	a.badSpace = false
	fd := int(f.Fd())
	n, err := unix.Write(fd, line)
	for errors.Is(err, unix.EINTR) && n <= 0 {
		n, err = unix.Write(fd, line)
	}
	if err == nil && n == len(line) {
		return nil
	}
	a.badSpace = n > 0 || errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
	if n <= 0 {
		return wire.Errorf(syscall.EIO, "writing audit log %s: %v", a.path, err)
	}
	// Cut short, the file system full at a page boundary: drop the
	// partial line, which would corrupt the next one.
	var st unix.Stat_t
	if ferr := unix.Fstat(fd, &st); ferr != nil || unix.Ftruncate(fd, st.Size-int64(n)) != nil {
		return wire.Errorf(syscall.EIO, "writing audit log %s: only %d of %d bytes written, and the partial line could not be removed", a.path, n, len(line))
	}
	return wire.Errorf(syscall.EIO, "writing audit log %s: only %d of %d bytes written (file system full?); the partial line was removed", a.path, n, len(line))
}

// Close closes the file, for good: calls still using the log are then
// refused or told they were not audited, so a reload that opens another
// closes this one after the calls using it have ended.
func (a *AuditLog) Close() error {
	if a == nil {
		return nil
	}
	a.writeSummary()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	if a.f == nil {
		return nil
	}
	err := a.f.Close()
	a.f = nil
	return err
}

// AuditRecord is what is known of one audited call.
type AuditRecord struct {
	Time   time.Time // when the call arrived
	Op     string    // "call", "channel" or "prepare"
	Caller Caller
	// PID and StartTime are the target as the caller named it; Target,
	// when set, is the process the core pinned.
	PID       int
	StartTime *uint64
	Target    *core.TargetInfo
	Type      string // for a prepare, the types joined by ","
	Payload   []byte
	Denied    bool  // by the Policy
	Err       error // nil when it succeeded
	Duration  time.Duration
}

// AuditLine is the JSON object of one audit log line.
type AuditLine struct {
	Time   string `json:"time"` // RFC 3339, UTC, nanoseconds
	Op     string `json:"op"`
	Result string `json:"result"` // "ok", "error" or "denied"
	Caller struct {
		UID uint32 `json:"uid"`
		GID uint32 `json:"gid"`
		PID int32  `json:"pid"`
	} `json:"caller"`
	Target struct {
		PID       int    `json:"pid"`
		StartTime uint64 `json:"start_time,omitempty"`
		// Pinned says the core pinned the process: Namespaces and
		// UserNSOwner are its; otherwise the call ended before, and
		// StartTime is the one the caller gave, if any.
		Pinned      bool              `json:"pinned"`
		Namespaces  map[string]uint64 `json:"namespaces,omitempty"`
		UserNSOwner *uint32           `json:"userns_owner,omitempty"`
	} `json:"target"`
	Type string `json:"type"`
	// Payload is the request's payload when its compact JSON is at most
	// MaxAuditPayload bytes; otherwise a JSON string of its first
	// MaxAuditPayload bytes (at a UTF-8 boundary) and PayloadTruncated.
	Payload          json.RawMessage `json:"payload"`
	PayloadBytes     int             `json:"payload_bytes"`
	PayloadTruncated bool            `json:"payload_truncated,omitempty"`
	Errno            int             `json:"errno"`
	ErrnoName        string          `json:"errno_name,omitempty"`
	Error            string          `json:"error,omitempty"` // at most MaxAuditPayload bytes
	DurationNS       int64           `json:"duration_ns"`
}

// MaxAuditPayload bounds the payload and the error message in a line; a
// type name is bounded to wire's limit on names.
const MaxAuditPayload = 512

// Line is r as one audit log line, ending in a newline.
func (r *AuditRecord) Line() []byte {
	var l AuditLine
	l.Time = r.Time.UTC().Format(time.RFC3339Nano)
	l.Op = r.Op
	l.Caller.UID, l.Caller.GID, l.Caller.PID = r.Caller.UID, r.Caller.GID, r.Caller.PID
	l.Target.PID = r.PID
	if r.StartTime != nil {
		l.Target.StartTime = *r.StartTime
	}
	if t := r.Target; t != nil {
		l.Target.PID, l.Target.StartTime, l.Target.Pinned = t.PID, t.StartTime, true
		l.Target.Namespaces = t.Namespaces
		owner := t.UserNSOwner
		l.Target.UserNSOwner = &owner
	}
	l.Type = truncUTF8(r.Type, wire.MaxTypeName)
	l.Payload, l.PayloadBytes, l.PayloadTruncated = summarize(r.Payload)
	switch {
	case r.Denied:
		l.Result = "denied"
	case r.Err != nil:
		l.Result = "error"
	default:
		l.Result = "ok"
	}
	if r.Err != nil {
		we := wire.AsError(r.Err)
		l.Errno = int(we.Errno)
		if we.Errno != 0 {
			l.ErrnoName = wire.ErrnoName(we.Errno)
		}
		l.Error = truncUTF8(we.Error(), MaxAuditPayload)
	}
	l.DurationNS = r.Duration.Nanoseconds()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&l); err != nil { // cannot happen: every field is plain data
		panic(err)
	}
	return b.Bytes()
}

// summarize bounds a payload for a line (see AuditLine.Payload).
func summarize(p []byte) (summary json.RawMessage, size int, truncated bool) {
	if len(p) == 0 {
		p = []byte("{}")
	}
	var c bytes.Buffer
	src := p
	if json.Compact(&c, p) == nil {
		if c.Len() <= MaxAuditPayload {
			return c.Bytes(), len(p), false
		}
		src = c.Bytes()
	}
	// Too long, or not JSON at all: quoted, as much as the bound allows.
	// (json.Marshal shows bytes that are not UTF-8 as U+FFFD.)
	head := truncUTF8(string(src), MaxAuditPayload)
	s, _ := json.Marshal(head)
	return s, len(p), len(head) < len(src)
}

// truncUTF8 is at most max bytes of s, cut before a rune that would
// cross the bound.
func truncUTF8(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}
