// Package tests holds nsplug's integration tests: real targets in fresh
// namespaces (made by package sandbox), the real core, real plugin
// processes, and checks made from the host through /proc.
package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	_ "github.com/nsplug/nsplug/core/goplugin" // the tests load third-party plugins
	"github.com/nsplug/nsplug/internal/buildbin"
	"github.com/nsplug/nsplug/plugins/builtin"
	"github.com/nsplug/nsplug/sdk"
	"github.com/nsplug/nsplug/wire"
)

// nsplugBin is bin/nsplug built for the command-line tests, and
// handlerBin bin/nsplug-handler, next to it as make installs them: the
// command's built-ins run from handlerBin.
var nsplugBin, handlerBin string

func TestMain(m *testing.M) {
	// This test binary is also the plugin executable: the built-ins plus
	// the probe plugin (as a built-in, or as an external plugin when
	// started without NSPLUG_BUILTIN), and a stand-alone core.
	builtin.Serve(testPlugins()...)
	if os.Getenv(wire.EnvCookie) == wire.Cookie {
		sdk.Serve(probePlugin("extprobe"))
	}
	if os.Getenv(envTestCore) != "" {
		runTestCore()
		return
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "nsplug-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	nsplugBin = filepath.Join(dir, "nsplug") // and nsplugd and the handler binary beside it
	handlerBin = filepath.Join(dir, core.HandlerExecutable)
	if err := buildbin.Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "building nsplug:", err)
		return 1
	}
	// Make the binaries reachable by a rootless target's host uid.
	os.Chmod(dir, 0o755)
	before := resources{fds: countFDsOrZero(), goroutines: runtime.NumGoroutine()}
	code := m.Run()
	// Parallel tests check only what is their dispatchers' own; this
	// checks the rest for every test: no plugin child, fds and
	// goroutines back where they were.
	if leaks := before.leaksAtExit(); leaks != "" {
		fmt.Fprintln(os.Stderr, "FAIL: left after every test:", leaks)
		return 1
	}
	return code
}

// testPlugins are the plugins this test binary serves as built-ins.
func testPlugins() []*sdk.Plugin {
	return append(builtin.Plugins(), probePlugin("probe"), authorPlugin())
}

func testBuiltins() []core.Builtin { return builtin.Of(testPlugins()...) }

// envTestCore turns the test binary into a stand-alone core that serves one
// request in a target and then waits to be killed (for the parent-death
// test). Its value is the target pid; it prints the serving pid (0 when
// no instance is kept). envTestThen names a message type it then sends,
// to be killed in the middle of it; envTestTOML is added to its
// configuration.
const (
	envTestCore = "NSPLUG_TEST_CORE"
	envTestThen = "NSPLUG_TEST_THEN"
	envTestTOML = "NSPLUG_TEST_TOML"
)

func runTestCore() {
	pid, _ := strconv.Atoi(os.Getenv(envTestCore))
	cfg, err := config.Parse([]byte("runtime_dir = \""+os.Getenv("NSPLUG_TEST_RUNDIR")+"\"\n"+os.Getenv(envTestTOML)), "test")
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	d, err := core.New(cfg, core.Options{Builtins: testBuiltins()})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	if _, err := d.Dispatch(context.Background(), core.Request{PID: pid, Type: "probe.whoami"}); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	serving := 0
	if in := d.Instances(); len(in) > 0 {
		serving = in[0].PID
	}
	fmt.Println(serving)
	if typ := os.Getenv(envTestThen); typ != "" {
		d.Dispatch(context.Background(), core.Request{PID: pid, Type: typ})
	}
	// Wait to be killed.
	for {
		time.Sleep(time.Hour)
	}
}

// probe is a test plugin: it reports what its process sees, and misbehaves
// on request.
type whoami struct {
	PID      int    `json:"pid"`
	UID      int    `json:"uid"`
	GID      int    `json:"gid"`
	Hostname string `json:"hostname"`
	Cwd      string `json:"cwd"`
	Fresh    bool   `json:"fresh_proc"`
}

type errnoReq struct {
	Errno int `json:"errno"`
}

type empty struct{}

// probeOptions are the probe's [plugin.options].
type probeOptions struct {
	// StartDelayMS makes every start of the plugin (its describe
	// included) wait before serving, so that a test can look at the
	// process from the host meanwhile.
	StartDelayMS int `json:"start_delay_ms"`
}

type openReq struct {
	Paths []string `json:"paths"`
	Fail  bool     `json:"fail"`
}

func probePlugin(name string) *sdk.Plugin {
	return &sdk.Plugin{
		Name: name,
		Configure: sdk.TypedOptions(probeOptions{}, func(o *probeOptions) error {
			if o.StartDelayMS < 0 {
				return sdk.OptionErrorf("start_delay_ms", "must not be negative")
			}
			time.Sleep(time.Duration(o.StartDelayMS) * time.Millisecond)
			return nil
		}),
		Handlers: []sdk.Handler{
			sdk.Handle(name+".whoami", "report what the handler process sees", func(ctx context.Context, _ empty) (whoami, error) {
				host, _ := os.Hostname()
				cwd, _ := os.Getwd()
				return whoami{PID: os.Getpid(), UID: os.Getuid(), GID: os.Getgid(), Hostname: host, Cwd: cwd, Fresh: sdk.EnvFrom(ctx).Proc != nil}, nil
			}),
			sdk.Handle(name+".errno", "fail with the given errno", func(_ context.Context, r errnoReq) (empty, error) {
				return empty{}, sdk.Errorf(syscall.Errno(r.Errno), "asked to fail")
			}),
			sdk.Handle(name+".crash", "exit the plugin process", func(context.Context, empty) (empty, error) {
				os.Exit(3)
				return empty{}, nil
			}),
			sdk.Handle(name+".panic", "panic in the handler", func(context.Context, empty) (empty, error) {
				panic("probe panics")
			}),
			sdk.Handle(name+".hang", "never return, ignoring cancellation", func(context.Context, empty) (empty, error) {
				select {}
			}),
			sdk.Handle(name+".open", "open files and hand them back", func(ctx context.Context, r openReq) (empty, error) {
				for _, p := range r.Paths {
					f, err := os.Open(p)
					if err != nil {
						return empty{}, err
					}
					if err := sdk.EnvFrom(ctx).ReturnFile(f); err != nil {
						f.Close()
						return empty{}, err
					}
				}
				if r.Fail {
					return empty{}, sdk.Errorf(syscall.EIO, "failing after opening")
				}
				return empty{}, nil
			}),
			sdk.Handle(name+".big", "answer with size bytes (as base64)", func(_ context.Context, r struct {
				Size int `json:"size"`
			}) (struct {
				Data []byte `json:"data"`
			}, error) {
				return struct {
					Data []byte `json:"data"`
				}{make([]byte, r.Size)}, nil
			}),
			sdk.Handle(name+".wait", "return when the request is cancelled", func(ctx context.Context, _ empty) (empty, error) {
				<-ctx.Done()
				return empty{}, ctx.Err()
			}),
		},
	}
}
