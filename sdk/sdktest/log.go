package sdktest

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// testWriter sends what is written to it to t.Log, line by line, until
// stop is called (a t.Log after the test has finished panics; plugin
// processes may still be talking when it does).
type testWriter struct {
	mu      sync.Mutex
	t       testing.TB
	stopped bool
	partial string
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return len(p), nil
	}
	text := w.partial + string(p)
	lines := strings.Split(text, "\n")
	w.partial = lines[len(lines)-1]
	for _, line := range lines[:len(lines)-1] {
		w.t.Log(line)
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.partial != "" && !w.stopped {
		w.t.Log(w.partial)
	}
	w.stopped = true
}

// LogEntry is one line of the core's log as a Harness recorded it.
type LogEntry struct {
	// Level is the line's level: "trace", "debug", "info", "warn" or
	// "error".
	Level string
	// Name is the name of the logger that wrote it. A plugin's lines,
	// relayed by the core from the plugin's stderr, carry the plugin's
	// configured name (the core's logger names them after the plugin).
	Name string
	// Message is the log message.
	Message string
	// Fields are the line's key/value pairs. Lines a handler logs
	// through sdk.Env.Log have "request_id", "target_pid" and "type";
	// relayed lines also have the plugin's own "@module" and a
	// "timestamp".
	Fields map[string]any
}

// String renders e as one line, for failure messages.
func (e LogEntry) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%s] %s: %s", e.Level, e.Name, e.Message)
	for _, k := range sortedKeys(e.Fields) {
		fmt.Fprintf(&b, " %s=%v", k, e.Fields[k])
	}
	return b.String()
}

// logSink records what reaches the harness's logger at its level.
type logSink struct {
	level   hclog.Level
	mu      sync.Mutex
	entries []LogEntry
}

func (s *logSink) Accept(name string, level hclog.Level, msg string, args ...any) {
	if level < s.level {
		return
	}
	e := LogEntry{Level: levelName(level), Name: name, Message: msg, Fields: make(map[string]any)}
	for i := 0; i+1 < len(args); i += 2 {
		e.Fields[fmt.Sprint(args[i])] = args[i+1]
	}
	s.mu.Lock()
	s.entries = append(s.entries, e)
	s.mu.Unlock()
}

func (s *logSink) snapshot() []LogEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]LogEntry(nil), s.entries...)
}

func levelName(l hclog.Level) string {
	switch l {
	case hclog.Trace:
		return "trace"
	case hclog.Debug:
		return "debug"
	case hclog.Info:
		return "info"
	case hclog.Warn:
		return "warn"
	case hclog.Error:
		return "error"
	}
	return l.String()
}
