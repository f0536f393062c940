package core_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/nsplug/nsplug/internal/depcheck"
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

// The core and config link no go-plugin, gRPC or prometheus: describing a
// third-party plugin through go-plugin is core/goplugin's, imported for
// its effect by the binaries that load such plugins. The failure names
// the chain of imports that brings one in.
func TestCoreLinksNoGoPlugin(t *testing.T) {
	for _, pkg := range []string{"github.com/nsplug/nsplug/core", "github.com/nsplug/nsplug/config"} {
		imports := map[string][]string{}
		for _, line := range strings.Split(strings.TrimSpace(goList(t, "-deps", "-f", "{{.ImportPath}}{{range .Imports}} {{.}}{{end}}", pkg)), "\n") {
			f := strings.Fields(line)
			imports[f[0]] = f[1:]
		}
		if len(imports) < 10 || imports[pkg] == nil {
			t.Fatalf("go list -deps %s: implausible output", pkg)
		}
		// Breadth first from pkg, remembering how each package is reached.
		from := map[string]string{pkg: ""}
		queue := []string{pkg}
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			for _, dep := range imports[p] {
				if _, seen := from[dep]; seen {
					continue
				}
				from[dep] = p
				if depcheck.IsOneOf(dep, depcheck.Heavy) {
					chain := dep
					for q := p; q != ""; q = from[q] {
						chain = q + " -> " + chain
					}
					t.Errorf("%s links %s: %s", pkg, dep, chain)
					continue
				}
				queue = append(queue, dep)
			}
		}
	}
}

func goList(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("go", append([]string{"list"}, args...)...).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}
