package handlers_test

import (
	"os/exec"
	"strings"
	"testing"
)

// What serves the built-ins in every target links none of the core's
// heavy dependencies: their package init (protobuf descriptors of gRPC's
// services, prometheus's procfs, gob's type registry, html/template) would
// run, and their memory be held, in every handler process.
func TestHandlerSideIsLean(t *testing.T) {
	heavy := []string{ // packages; a prefix when it ends in "/"
		"google.golang.org/grpc",
		"github.com/hashicorp/go-plugin",
		"github.com/prometheus/",
		"net/rpc",
		"encoding/gob",
		"html/template",
		"github.com/nsplug/nsplug/core",
		"github.com/nsplug/nsplug/wire/control",
		"github.com/nsplug/nsplug/sdk", // the package: sdk/handler is its lean part
	}
	for _, pkg := range []string{
		"github.com/nsplug/nsplug/wire",
		"github.com/nsplug/nsplug/sdk/handler",
		"github.com/nsplug/nsplug/plugins/builtin/handlers",
		"github.com/nsplug/nsplug/cmd/nsplug-handler",
	} {
		deps := goListDeps(t, pkg)
		if len(deps) < 10 {
			t.Fatalf("go list -deps %s: implausible output %q", pkg, deps)
		}
		for _, dep := range deps {
			for _, h := range heavy {
				if dep == h || strings.HasSuffix(h, "/") && strings.HasPrefix(dep, h) {
					t.Errorf("%s links %s", pkg, dep)
				}
			}
		}
	}
}

func goListDeps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}
