package core_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/plugins/builtin"
	"github.com/nsplug/nsplug/sandbox"
)

// This test binary links no go-plugin adapter (nothing here imports
// core/goplugin): a plugin with a path fails to load, at its path key and
// naming what to import, and the built-ins serve.
func TestThirdPartyNeedsTheGoPluginAdapter(t *testing.T) {
	exe, err := os.Executable() // any executable: it is neither sealed nor started
	if err != nil {
		t.Fatal(err)
	}
	const want = `import _ "github.com/nsplug/nsplug/core/goplugin"`
	toml := func(extra string) []byte {
		return []byte(fmt.Sprintf("runtime_dir = %q\n%s\n[[plugin]]\nname = \"ext\"\npath = %q\ntypes = [\"ext.probe\"]\n", t.TempDir(), extra, exe))
	}

	cfg, err := config.Parse(toml("fail_on_plugin_error = true"), "lean.toml")
	if err != nil {
		t.Fatal(err)
	}
	_, err = core.New(cfg, core.Options{Builtins: builtin.All(), Logger: hclog.NewNullLogger()})
	if err == nil || !strings.Contains(err.Error(), "lean.toml:5") || !strings.Contains(err.Error(), "path") || !strings.Contains(err.Error(), want) {
		t.Fatalf("New with fail_on_plugin_error: %v; want the failure at lean.toml:5 (path), naming %s", err, want)
	}

	cfg, err = config.Parse(toml(""), "lean.toml")
	if err != nil {
		t.Fatal(err)
	}
	d, err := core.New(cfg, core.Options{Builtins: builtin.All(), Logger: hclog.NewNullLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, p := range d.Plugins() {
		switch {
		case p.Name == "ext" && (p.Status != core.PluginFailed || !strings.Contains(p.Error, want) || p.SHA256 != ""):
			t.Errorf("plugin ext: status %s, sha256 %q, error %q; want failed, unsealed, naming %s", p.Status, p.SHA256, p.Error, want)
		case p.Name != "ext" && p.Status != core.PluginOK:
			t.Errorf("built-in %s: %s: %s", p.Name, p.Status, p.Error)
		}
	}

	target, err := sandbox.Start(sandbox.Options{Hostname: "lean"})
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = d.Dispatch(ctx, core.Request{PID: target.PID(), Type: "ext.probe"})
	var ce *core.Error
	if !errors.As(err, &ce) || ce.Errno != syscall.ENOPKG || !strings.Contains(err.Error(), want) {
		t.Errorf("ext.probe: %v; want ENOPKG naming %s", err, want)
	}
	resp, err := d.Dispatch(ctx, core.Request{PID: target.PID(), Type: "procfs.read", Payload: json.RawMessage(`{"path":"/proc/sys/kernel/hostname"}`)})
	if err != nil || !strings.Contains(string(resp), "bGVhbg") { // "lean", base64
		t.Errorf("procfs.read: %s, %v; want the target's hostname", resp, err)
	}
}
