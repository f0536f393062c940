// Package sdktest tests nsplug plugins from their author's own go test.
//
// Two levels, used together:
//
//   - In-process: Call and CallJSON run one request through a plugin's
//     handlers in the test process, as the core would send it: the request
//     is encoded to JSON, decoded strictly into the handler's type, the
//     response comes back as JSON and errors keep their errno. Options,
//     allowed roots and the logger are set through Env. No root, no
//     namespaces, no child process: the handler sees the test process's
//     own view of the system. Fast; use it for most of a plugin's tests.
//
//   - Real: NewHarness runs the *built* plugin executable (see Build)
//     through the real core (core.New with the plugin named by path and
//     sha256, as in production) against a throwaway target process in
//     fresh namespaces (package sandbox). Its cleanup closes the core and
//     the target and fails the test if a plugin process or a socket file
//     is left behind. It needs root on Linux (CAP_SYS_ADMIN to make
//     namespaces; the core joins them); without root the test is skipped.
//
// A typical plugin module:
//
//	func TestGreetInProcess(t *testing.T) {
//		resp, err := sdktest.Call[GreetRequest, GreetResponse](t, Plugin(), "hello.greet",
//			GreetRequest{Name: "x"}, sdktest.Env{Options: map[string]any{"greeting": "hi"}})
//		...
//	}
//
//	func TestGreetInATarget(t *testing.T) {
//		h := sdktest.NewHarness(t, sdktest.Config{
//			PluginPath: sdktest.Build(t, "."),
//			Target:     sandbox.Options{Hostname: "web-1"},
//		})
//		var resp GreetResponse
//		err := h.Call("hello.greet", GreetRequest{Name: "x"}, &resp)
//		...
//	}
package sdktest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/internal/inproc"
	"github.com/nsplug/nsplug/sdk"
	"github.com/nsplug/nsplug/wire"
)

// Env is what an in-process call (Call, CallJSON) gives the handler: the
// parts of the configuration a plugin reads through sdk.Env, and the
// request's identity. The zero value is the core's default configuration:
// no options, every path allowed, a logger writing to the test's log.
type Env struct {
	// Options stand for the plugin's [plugin.options] table: any value
	// that encodes to a JSON object (a map, a struct, json.RawMessage).
	// The plugin's Configure hook checks them first (a bad option is the
	// call's EINVAL error, as it would make the core refuse to load the
	// plugin); handlers read the result with sdk.OptionsFrom. Nil: no
	// options.
	Options any
	// AllowedRoots restrict sdk.Env.CheckPath as allowed_roots does.
	// Nil allows every path; an empty, non-nil slice allows none.
	AllowedRoots []string
	// LogLevel is the configured log_level the plugin is told about
	// (default "trace", so that every line reaches the test's log).
	LogLevel string
	// Log receives what the handler logs through sdk.Env.Log. Default:
	// the test's log (t.Log), at LogLevel.
	Log hclog.Logger
	// RequestID is what sdk.Env.RequestID says. Default "sdktest-N".
	RequestID string
	// TargetPID is what sdk.Env.TargetPID says. Default: this process's
	// pid (in-process, the handler sees the test process's own
	// namespaces).
	TargetPID int
	// TargetNSPID is what sdk.Env.TargetNSPID says. Default: TargetPID
	// (in-process, the "target" shares the test's pid namespace).
	TargetNSPID int
	// Context is the request's context; cancel it or give it a deadline
	// to test how a handler stops. Default: context.Background().
	Context context.Context
	// Proc and Sys are what the handler sees as sdk.Env.Proc and Sys (in
	// a plugin, fresh procfs/sysfs mounts of the target's namespaces).
	// In-process, an open directory such as /proc of the test process
	// stands in. Default nil.
	Proc, Sys *os.File
	// Cgroup is what the handler sees as sdk.Env.Cgroup (in a plugin, a
	// fresh cgroup2 mount rooted at the target's cgroup namespace root);
	// an open cgroup directory stands in. Default nil.
	Cgroup *os.File
	// Joined are the namespaces the handler is told the core joined
	// (sdk.Env.Joined). Nil, the default, means unknown: in-process the
	// handler acts in the test process's own namespaces, and no type is
	// refused for the namespaces it changes (sdk.Env.RequireJoined). Set
	// it (e.g. []string{"net"}) to test that refusal: a type that changes
	// a namespace left out is then refused with EPERM, as in a core.
	Joined []string
	// AllowHostChanges stands for the allow_host_changes setting.
	AllowHostChanges []string
}

var requestSeq atomic.Uint64

// Call runs one request of message type typ through plugin p in the test
// process and returns the handler's response decoded into Resp.
//
// It goes the way of the wire: req is encoded to JSON, the plugin's
// server (the one sdk.Serve runs) looks the type up and decodes
// the payload strictly into the handler's request type, the response is
// JSON decoded strictly into Resp (an unknown field fails the test: Resp
// should be the handler's response type, or json.RawMessage or
// map[string]any). A handler error comes back as an *sdk.Error carrying
// its errno, as a caller of the core would get it; errors.Is(err,
// syscall.ENOENT) works on it. A panicking handler is an EIO error, an
// unserved type EOPNOTSUPP.
//
// env, at most one, sets the configuration and request details (see
// Env). Call must be called from the test's goroutine: problems of the
// test itself (a plugin the sdk refuses, an unencodable request) end the
// test with t.Fatal.
//
// In-process there are no fresh mounts unless Env.Proc/Sys stand in for
// them; files a handler hands back with sdk.Env.ReturnFile are closed
// (CallFiles returns them).
func Call[Req, Resp any](t testing.TB, p *sdk.Plugin, typ string, req Req, env ...Env) (Resp, error) {
	t.Helper()
	var resp Resp
	payload, err := json.Marshal(req)
	if err != nil {
		t.Fatalf("sdktest.Call %s: encoding the request: %v", typ, err)
	}
	out, err := CallJSON(t, p, typ, string(payload), env...)
	if err != nil {
		return resp, err
	}
	if err := sdk.DecodeStrict(out, &resp); err != nil {
		t.Fatalf("sdktest.Call %s: response %s does not decode into %T: %v", typ, out, resp, err)
	}
	return resp, nil
}

// CallJSON is Call with the payload given as JSON text and the response
// returned as it came: the way to test malformed payloads (strict
// decoding rejects unknown fields and anything but one JSON object with
// EINVAL) and the exact encoding of a response.
func CallJSON(t testing.TB, p *sdk.Plugin, typ string, payload string, env ...Env) (json.RawMessage, error) {
	t.Helper()
	out, files, err := CallFiles(t, p, typ, payload, env...)
	for _, f := range files {
		f.Close()
	}
	return out, err
}

// CallFiles is CallJSON that also returns the files the handler handed
// back (sdk.Env.ReturnFile), as a caller of the core gets them from
// Dispatcher.Call. The caller closes them.
func CallFiles(t testing.TB, p *sdk.Plugin, typ string, payload string, env ...Env) (json.RawMessage, []*os.File, error) {
	t.Helper()
	if len(env) > 1 {
		t.Fatalf("sdktest: at most one Env, got %d", len(env))
	}
	var e Env
	if len(env) == 1 {
		e = env[0]
	}
	config := &wire.PluginConfig{AllowedRoots: e.AllowedRoots, LogLevel: e.LogLevel, AllowHostChanges: e.AllowHostChanges}
	if config.LogLevel == "" {
		config.LogLevel = "trace"
	}
	if e.Options != nil {
		raw, err := json.Marshal(e.Options)
		if err != nil {
			t.Fatalf("sdktest: encoding Env.Options: %v", err)
		}
		config.Options = raw
	}
	log := e.Log
	if log == nil {
		log = TestLogger(t, p.Name, config.LogLevel)
	}
	server, err := inproc.New(p, config, log)
	if _, bad := wire.ParseOptionError(err); bad {
		return nil, nil, sdk.Errorf(syscall.EINVAL, "%v", err)
	}
	if err != nil {
		t.Fatalf("sdktest: %v", err)
	}
	server.SetFreshMounts(e.Proc, e.Sys)
	server.SetFreshCgroup(e.Cgroup)
	server.SetJoined(e.Joined)
	ctx := e.Context
	if ctx == nil {
		ctx = context.Background()
	}
	req := &wire.HandleRequest{Type: typ, Payload: []byte(payload), RequestId: e.RequestID, TargetPid: int32(e.TargetPID)}
	if req.RequestId == "" {
		req.RequestId = fmt.Sprintf("sdktest-%d", requestSeq.Add(1))
	}
	if req.TargetPid == 0 {
		req.TargetPid = int32(os.Getpid())
	}
	if req.TargetNsPid = int32(e.TargetNSPID); req.TargetNsPid == 0 {
		req.TargetNsPid = req.TargetPid
	}
	resp, files := server.HandleFiles(ctx, req)
	if e := resp.Error; e != nil {
		return nil, nil, &sdk.Error{Errno: syscall.Errno(e.Errno), Message: e.Message}
	}
	return json.RawMessage(resp.Payload), files, nil
}

// TestLogger returns an hclog logger named name that writes to t's log
// at level (an hclog level name; "" is info). Lines logged after the
// test has finished are dropped rather than making the test panic.
func TestLogger(t testing.TB, name, level string) hclog.Logger {
	lv := hclog.LevelFromString(level)
	if lv == hclog.NoLevel {
		lv = hclog.Info
	}
	w := &testWriter{t: t}
	t.Cleanup(w.stop)
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: lv, Output: w, DisableTime: true})
}
