package handler

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/nsplug/nsplug/wire"
)

type echoReq struct {
	Text string `json:"text"`
}
type echoResp struct {
	Text string `json:"text"`
	Path string `json:"path,omitempty"`
}

func echo(ctx context.Context, r echoReq) (echoResp, error) {
	if r.Text == "missing" {
		_, err := os.Open("/nonexistent/nsplug")
		return echoResp{}, err
	}
	return echoResp{Text: r.Text}, nil
}

func TestTypedHandlerDecodesStrictly(t *testing.T) {
	h := Handle("echo.say", "echo", echo)
	for _, c := range []struct {
		payload string
		want    string
		errno   syscall.Errno
	}{
		{`{"text":"hi"}`, `{"text":"hi"}`, 0},
		{``, `{"text":""}`, 0},
		{`{"text":"hi","x":1}`, "", syscall.EINVAL},
		{`{"text":1}`, "", syscall.EINVAL},
		{`[1]`, "", syscall.EINVAL},
		{`{"text":"a"} {}`, "", syscall.EINVAL},
		{`{"text":"missing"}`, "", syscall.ENOENT},
	} {
		out, err := h.Handle(context.Background(), []byte(c.payload))
		if c.errno != 0 {
			var e *Error
			if !errors.As(err, &e) || e.Errno != c.errno {
				t.Errorf("%s: err %v, want errno %v", c.payload, err, c.errno)
			}
			continue
		}
		if err != nil || string(out) != c.want {
			t.Errorf("%s: %s %v, want %s", c.payload, out, err, c.want)
		}
	}
	if d := h.WithVersion(3).Describe(); d.Name != "echo.say" || d.Version != 3 || d.Description != "echo" {
		t.Errorf("describe: %+v", d)
	}
}

func TestErrorsKeepTheirErrno(t *testing.T) {
	e := Errorf(syscall.EACCES, "no %s", "way")
	if !errors.Is(e, syscall.EACCES) || e.Error() != "no way (EACCES)" {
		t.Errorf("%v", e)
	}
	wrapped := fmt.Errorf("ctx: %w", &os.PathError{Op: "open", Path: "/x", Err: syscall.ENOENT})
	if got := AsError(wrapped); got.Errno != syscall.ENOENT || !strings.Contains(got.Message, "/x") {
		t.Errorf("AsError: %+v", got)
	}
	if got := AsError(errors.New("plain")); got.Errno != 0 || got.Error() != "plain" {
		t.Errorf("AsError plain: %+v", got)
	}
	if ErrnoName(syscall.Errno(4000)) != "errno 4000" {
		t.Errorf("unnamed errno: %s", ErrnoName(4000))
	}
}

func TestCheckPath(t *testing.T) {
	env := EnvFrom(context.Background())
	env.SetAllowedRoots([]string{"/proc", "/sys/fs"})
	for p, want := range map[string]syscall.Errno{
		"/proc":                         0,
		"/proc/self/stat":               0,
		"/sys/fs/cgroup":                0,
		"/sys/kernel":                   syscall.EACCES,
		"/procfoo":                      syscall.EACCES,
		"proc":                          syscall.EINVAL,
		"/proc/../etc":                  syscall.EINVAL,
		"/proc/":                        syscall.EINVAL,
		"":                              syscall.EINVAL,
		"/proc/a\x00b":                  syscall.EINVAL,
		"/" + strings.Repeat("a", 5000): syscall.ENAMETOOLONG,
	} {
		_, err := env.CheckPath(p)
		var got syscall.Errno
		if e := AsError(err); e != nil {
			got = e.Errno
		}
		if got != want {
			t.Errorf("CheckPath(%.20q) = %v, want %v", p, err, want)
		}
	}
	env.SetAllowedRoots([]string{})
	if _, err := env.CheckPath("/proc"); err == nil {
		t.Errorf("an empty allowed_roots allowed a path")
	}
	env.SetAllowedRoots(nil)
	if _, err := env.CheckPath("/etc/passwd"); err != nil {
		t.Errorf("nil allowed_roots: %v", err)
	}
}

func TestServerRejectsBadPlugins(t *testing.T) {
	for _, p := range []*Plugin{
		{Handlers: []Handler{Handle("a.b", "", echo)}},
		{Name: "x", Handlers: []Handler{Handle("A.b", "", echo)}},
		{Name: "x", Handlers: []Handler{Handle("ab", "", echo)}},
		{Name: "x", Handlers: []Handler{Handle("a..b", "", echo)}},
		{Name: "x", Handlers: []Handler{Handle("a.b", "", echo), Handle("a.b", "", echo)}},
		{Name: "x", FreshMounts: []string{"dev"}},
		{Name: "x", Handlers: []Handler{Handle("a.b", "", echo).Changes("mount")}},
		{Name: "x", Handlers: []Handler{Handle("a.b", "", echo).Changes("mnt", "mnt")}},
		{Name: "x", Handlers: []Handler{Handle("a.b", "", echo).MayChange("netns")}},
		{Name: "x", Handlers: []Handler{Handle("a.b", "", echo).Changes("mnt").MayChange("mnt")}},
	} {
		if _, err := newServer(p, nil, nil); err == nil {
			t.Errorf("NewServer accepted %+v", p)
		}
	}
}

func TestServerHandle(t *testing.T) {
	s, err := newServer(&Plugin{Name: "echo", Handlers: []Handler{
		Handle("echo.say", "", echo),
		Handle("echo.panic", "", func(context.Context, echoReq) (echoResp, error) { panic("boom") }),
	}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, _ := s.HandleFiles(context.Background(), &wire.HandleRequest{Type: "echo.say", Payload: []byte(`{"text":"x"}`)})
	if resp.Error != nil || string(resp.Payload) != `{"text":"x"}` {
		t.Errorf("say: %v", resp)
	}
	resp, _ = s.HandleFiles(context.Background(), &wire.HandleRequest{Type: "echo.nope"})
	if resp.Error == nil || syscall.Errno(resp.Error.Errno) != syscall.EOPNOTSUPP {
		t.Errorf("unknown type: %v", resp)
	}
	resp, _ = s.HandleFiles(context.Background(), &wire.HandleRequest{Type: "echo.panic"})
	if resp.Error == nil || syscall.Errno(resp.Error.Errno) != syscall.EIO || !strings.Contains(resp.Error.Message, "boom") {
		t.Errorf("panic: %v", resp)
	}
	d, _ := s.Describe(context.Background(), nil)
	if len(d.Types) != 2 || d.Types[0].Name != "echo.panic" {
		t.Errorf("describe: %v", d)
	}
}

// A type that declares it changes a namespace is refused, before its
// handler runs, where the handler shares that namespace with the core; the
// same rule is Env.RequireJoined for handlers to call.
func TestServerRefusesHostChanges(t *testing.T) {
	ran := 0
	changer := func(ctx context.Context, r echoReq) (echoResp, error) {
		ran++
		if r.Text != "" {
			if err := EnvFrom(ctx).RequireJoined(r.Text); err != nil {
				return echoResp{}, err
			}
		}
		return echoResp{Text: "changed"}, nil
	}
	p := &Plugin{Name: "ch", Handlers: []Handler{
		Handle("ch.mount", "", changer).Changes("mnt"),
		Handle("ch.dyn", "", changer).MayChange("net", "uts"),
		Handle("ch.read", "", echo),
	}}
	call := func(config *wire.PluginConfig, joined []string, typ, payload string) *wire.HandleResponse {
		s, err := newServer(p, config, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.SetJoined(joined)
		resp, _ := s.HandleFiles(context.Background(), &wire.HandleRequest{Type: typ, Payload: []byte(payload)})
		return resp
	}
	refused := func(resp *wire.HandleResponse, ns string) {
		t.Helper()
		if resp.Error == nil || syscall.Errno(resp.Error.Errno) != syscall.EPERM {
			t.Fatalf("not refused: %v", resp)
		}
		for _, f := range []string{"host's " + ns + " namespace", "shares with the core", `allow_host_changes = ["` + ns + `"]`} {
			if !strings.Contains(resp.Error.Message, f) {
				t.Errorf("message %q lacks %q", resp.Error.Message, f)
			}
		}
	}
	ok := func(resp *wire.HandleResponse) {
		t.Helper()
		if resp.Error != nil {
			t.Errorf("refused: %v", resp.Error)
		}
	}

	resp := call(nil, []string{"net", "uts"}, "ch.mount", `{}`)
	refused(resp, "mnt")
	if !strings.HasPrefix(resp.Error.Message, "ch.mount ") || ran != 0 {
		t.Errorf("message %q, handler ran %d times", resp.Error.Message, ran)
	}
	refused(call(nil, []string{}, "ch.mount", `{}`), "mnt") // nothing joined
	ok(call(nil, []string{"mnt"}, "ch.mount", `{}`))
	ok(call(&wire.PluginConfig{AllowHostChanges: []string{"mnt"}}, []string{"net"}, "ch.mount", `{}`))
	ok(call(nil, nil, "ch.mount", `{}`)) // outside a core: unknown, not refused
	ok(call(nil, []string{}, "ch.read", `{}`))

	// Dynamic: the handler asks for the namespace a request changes.
	refused(call(nil, []string{"uts"}, "ch.dyn", `{"text":"net"}`), "net")
	ok(call(nil, []string{"uts"}, "ch.dyn", `{"text":"uts"}`))
	ok(call(&wire.PluginConfig{AllowHostChanges: []string{"net"}}, []string{"uts"}, "ch.dyn", `{"text":"net"}`))
	if resp := call(nil, []string{}, "ch.dyn", `{"text":"nett"}`); resp.Error == nil || syscall.Errno(resp.Error.Errno) != syscall.EINVAL {
		t.Errorf("unknown namespace: %v", resp)
	}

	s, _ := newServer(p, nil, nil)
	d, _ := s.Describe(context.Background(), nil)
	for _, ty := range d.Types {
		want := map[string]string{"ch.mount": "[mnt] []", "ch.dyn": "[] [net uts]", "ch.read": "[] []"}[ty.Name]
		if got := fmt.Sprint(ty.Changes, " ", ty.MayChange); got != want {
			t.Errorf("describe %s: changes, may_change = %s, want %s", ty.Name, got, want)
		}
	}
}
