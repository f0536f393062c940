package sdktest

import (
	"context"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/nsplug/nsplug/sdk"
)

type pathReq struct {
	Path string `json:"path"`
}

type versionResp struct {
	Version string `json:"version"`
}

// A plugin that reads beneath Env.Proc and hands a file back.
func testPlugin() *sdk.Plugin {
	return &sdk.Plugin{Name: "t", Handlers: []sdk.Handler{
		sdk.Handle("t.version", "read version beneath Env.Proc", func(ctx context.Context, _ struct{}) (versionResp, error) {
			proc := sdk.EnvFrom(ctx).Proc
			if proc == nil {
				return versionResp{}, sdk.Errorf(syscall.ENOENT, "no fresh procfs")
			}
			f, err := os.Open("/proc/self/fd/" + strconv.Itoa(int(proc.Fd())) + "/version")
			if err != nil {
				return versionResp{}, err
			}
			defer f.Close()
			b, _ := io.ReadAll(f)
			return versionResp{Version: string(b)}, nil
		}),
		sdk.Handle("t.open", "hand a file back", func(ctx context.Context, r pathReq) (struct{}, error) {
			f, err := os.Open(r.Path)
			if err != nil {
				return struct{}{}, err
			}
			return struct{}{}, sdk.EnvFrom(ctx).ReturnFile(f)
		}),
	}}
}

func TestCallWithFreshMountsAndFiles(t *testing.T) {
	if _, err := Call[struct{}, versionResp](t, testPlugin(), "t.version", struct{}{}); err == nil {
		t.Errorf("without Env.Proc the handler found a procfs")
	}
	proc, err := os.Open("/proc")
	if err != nil {
		t.Fatal(err)
	}
	defer proc.Close()
	v, err := Call[struct{}, versionResp](t, testPlugin(), "t.version", struct{}{}, Env{Proc: proc})
	if err != nil || !strings.HasPrefix(v.Version, "Linux") {
		t.Errorf("version through Env.Proc: %q %v", v.Version, err)
	}
	_, files, err := CallFiles(t, testPlugin(), "t.open", `{"path":"/proc/version"}`)
	if err != nil || len(files) != 1 {
		t.Fatalf("CallFiles: %v, %d files", err, len(files))
	}
	b, _ := io.ReadAll(files[0])
	files[0].Close()
	if !strings.HasPrefix(string(b), "Linux") {
		t.Errorf("handed-back file reads %q", b)
	}
}

// Env.TargetNSPID and Env.Cgroup reach the handler in-process as set,
// TargetNSPID defaulting to the target pid (the test's own namespace).
func TestCallTargetNSPIDAndCgroup(t *testing.T) {
	p := &sdk.Plugin{Name: "t", Handlers: []sdk.Handler{
		sdk.Handle("t.env", "what the env says", func(ctx context.Context, _ struct{}) (map[string]any, error) {
			env := sdk.EnvFrom(ctx)
			return map[string]any{"pid": env.TargetPID, "nspid": env.TargetNSPID, "cgroup": env.Cgroup != nil}, nil
		}),
	}}
	got, err := Call[struct{}, map[string]any](t, p, "t.env", struct{}{})
	if err != nil || got["pid"] != float64(os.Getpid()) || got["nspid"] != float64(os.Getpid()) || got["cgroup"] != false {
		t.Errorf("defaults: %v %v", got, err)
	}
	cg, err := os.Open(t.TempDir()) // stands in for a cgroup directory
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	got, err = Call[struct{}, map[string]any](t, p, "t.env", struct{}{}, Env{TargetPID: 4242, TargetNSPID: 1, Cgroup: cg})
	if err != nil || got["pid"] != float64(4242) || got["nspid"] != float64(1) || got["cgroup"] != true {
		t.Errorf("set: %v %v", got, err)
	}
}
