package core_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/plugins/builtin"
	"github.com/nsplug/nsplug/sandbox"
)

func TestMain(m *testing.M) {
	// The core starts built-in plugins by re-executing its own binary,
	// here this test binary: serve them when started as one.
	builtin.Main()
	os.Exit(m.Run())
}

// A daemon embeds the core: it builds a Dispatcher once, dispatches
// requests into targets' namespaces, and closes it on the way out.
func Example() {
	// A throwaway target in fresh namespaces stands in for a container.
	target, err := sandbox.Start(sandbox.Options{Hostname: "example"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer target.Close()

	runDir, _ := os.MkdirTemp("", "nsplug-example-")
	defer os.RemoveAll(runDir)
	cfg, err := config.Parse([]byte(fmt.Sprintf("runtime_dir = %q\n", runDir)), "example.toml")
	if err != nil {
		fmt.Println(err)
		return
	}
	d, err := core.New(cfg, core.Options{Builtins: builtin.All()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer d.Close() // kills and reaps every plugin process

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := d.Dispatch(ctx, core.Request{
		PID:     target.PID(),
		Type:    "procfs.read",
		Payload: json.RawMessage(`{"path":"/proc/sys/kernel/hostname"}`),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	var out struct{ Data []byte }
	json.Unmarshal(resp, &out)
	fmt.Printf("the target's hostname: %s", out.Data)

	// Errors keep their errno, for a FUSE file system to return.
	_, err = d.Dispatch(ctx, core.Request{PID: target.PID(), Type: "procfs.read", Payload: json.RawMessage(`{"path":"/proc/nope"}`)})
	var ce *core.Error
	if errors.As(err, &ce) {
		fmt.Println("errno:", ce.Errno == syscall.ENOENT)
	}
	// Output:
	// the target's hostname: example
	// errno: true
}
