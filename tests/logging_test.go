package tests

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// logLines returns the lines of logs logged at any of levels.
func logLines(logs *exLockedBuffer, levels ...string) []string {
	var out []string
	for _, l := range strings.Split(logs.String(), "\n") {
		for _, lv := range levels {
			if strings.Contains(l, "["+lv+"]") {
				out = append(out, l)
			}
		}
	}
	return out
}

// newLoggedDispatcher is newDispatcher with its log, at trace level, in a buffer.
func newLoggedDispatcher(t *testing.T, toml string) (*core.Dispatcher, *exLockedBuffer) {
	t.Helper()
	logs := &exLockedBuffer{}
	d, _ := newDispatcherWith(t, toml, core.Options{Logger: hclog.New(&hclog.LoggerOptions{Name: "nsplug", Level: hclog.Trace, Output: logs})})
	return d, logs
}

// A kill the core means (a cancelled or timed-out request's instance, a
// terminated background request's, an idle one, every one at Close) is
// a debug line at most; a plugin that crashes is still an error.
func TestDeliberateKillsAreNotErrors(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{})
	d, logs := newLoggedDispatcher(t, "[[plugin]]\nname = \"probe\"\nidle_timeout = \"200ms\"\nrequest_timeout = \"300ms\"\n")
	req := core.Request{PID: target.PID(), Type: "probe.hang"}
	for i := 0; i < 3; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		_, err := d.Dispatch(ctx, req)
		cancel()
		if err == nil {
			t.Fatal("a hung request returned")
		}
	}
	if _, err := d.Dispatch(context.Background(), req); err == nil { // request_timeout
		t.Fatal("a hung request returned")
	}
	p := d.Go(context.Background(), req)
	time.Sleep(100 * time.Millisecond)
	p.Terminate()
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, nil)
	waitGone(t, servingPID(t, d, "probe"), 5*time.Second) // idle_timeout
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, nil)
	d.Close() // kills the last one
	if bad := logLines(logs, "INFO", "WARN", "ERROR"); len(bad) != 0 {
		t.Errorf("deliberate kills logged above debug level:\n%s", strings.Join(bad, "\n"))
	}
	if n := len(logLines(logs, "DEBUG")); n == 0 {
		t.Error("no debug line at all: is the log captured?")
	}
}

func TestCrashedPluginIsAnError(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{})
	d, logs := newLoggedDispatcher(t, "")
	if err := call(t, d, target.PID(), "probe.crash", `{}`, nil); err == nil {
		t.Fatal("probe.crash returned")
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(logLines(logs, "ERROR")) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if errs := logLines(logs, "ERROR"); len(errs) != 1 || !strings.Contains(errs[0], "plugin process exited") || !strings.Contains(errs[0], "exit status 3") {
		t.Errorf("a crash logged as %q", errs)
	}
}

// An embedder (a daemon) sees each plugin that fails to load once, as a
// warning: the dispatcher serves the others as configured, so it is not
// an error line; Options.LoadFailureLevel moves it, for a caller that
// reports failures its own way.
func TestLoadFailureIsLoggedOnceAsAWarning(t *testing.T) {
	parallel(t)
	conf := "[[plugin]]\nname = \"gone\"\npath = \"/nonexistent/plugin\"\ntypes = [\"gone.read\"]\n"
	logs := &exLockedBuffer{}
	d, _ := newDispatcherWith(t, conf, core.Options{Logger: hclog.New(&hclog.LoggerOptions{Name: "nsplug", Level: hclog.Warn, Output: logs})})
	target := newTarget(t, sandbox.Options{})
	mustCall(t, d, target.PID(), "probe.whoami", `{}`, nil)
	if call(t, d, target.PID(), "gone.read", `{}`, nil) == nil {
		t.Error("gone.read was served")
	}
	warns := logLines(logs, "WARN")
	if len(warns) != 1 || !strings.Contains(warns[0], "plugin failed to load") || !strings.Contains(warns[0], "plugin=gone") || !strings.Contains(warns[0], "no such file") {
		t.Errorf("want one warning naming the failure, got:\n%s", logs.String())
	}
	if errs := logLines(logs, "ERROR"); len(errs) != 0 {
		t.Errorf("a load failure logged as an error:\n%s", strings.Join(errs, "\n"))
	}
	d.Close()

	quiet := &exLockedBuffer{}
	newDispatcherWith(t, conf, core.Options{LoadFailureLevel: hclog.Debug, Logger: hclog.New(&hclog.LoggerOptions{Name: "nsplug", Level: hclog.Info, Output: quiet})})
	if quiet.String() != "" {
		t.Errorf("LoadFailureLevel debug, logged at info:\n%s", quiet.String())
	}
}
