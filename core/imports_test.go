package core_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The core knows the contract (wire) and not the sdk: a plugin author's
// package never reaches the host side, and the host side reaches the
// plugins only through wire's terms (core.Builtin). Checked on what the
// core links, directly or not, as `go list -deps` reports it.
func TestCoreImportsNoSDK(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "github.com/nsplug/nsplug/core").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 || !contains(deps, "github.com/nsplug/nsplug/wire") {
		t.Fatalf("go list -deps core: implausible output %q", out)
	}
	for _, dep := range deps {
		if dep == "github.com/nsplug/nsplug/sdk" || strings.HasPrefix(dep, "github.com/nsplug/nsplug/sdk/") ||
			strings.HasPrefix(dep, "github.com/nsplug/nsplug/plugins/") || dep == "github.com/nsplug/nsplug/internal/inproc" {
			t.Errorf("core depends on %s", dep)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
