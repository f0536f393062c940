package wire_test

import (
	"os/exec"
	"strings"
	"testing"
)

// wire links no preamble: a plugin written without the sdk (and without
// nsexec, tests/testdata/rawplugin -tags nopreamble) imports wire for the
// generated code and must not get nsexec's C constructor with it.
func TestWireLinksNoPreamble(t *testing.T) {
	deps := goListDeps(t, "github.com/nsplug/nsplug/wire")
	for _, dep := range deps {
		if strings.HasPrefix(dep, "github.com/nsplug/nsplug/") && dep != "github.com/nsplug/nsplug/wire" && dep != "github.com/nsplug/nsplug/wire/ns" {
			t.Errorf("wire depends on %s", dep)
		}
	}
}

// wire/ns is a leaf: nsexec and sandbox import it, and a target or
// preamble that linked gRPC and go-plugin would run their init (an epoll
// fd, goroutines) in every process.
func TestNamespaceListIsALeaf(t *testing.T) {
	for _, dep := range goListDeps(t, "github.com/nsplug/nsplug/wire/ns") {
		if strings.Contains(dep, ".") && dep != "github.com/nsplug/nsplug/wire/ns" && dep != "golang.org/x/sys/unix" {
			t.Errorf("wire/ns depends on %s", dep)
		}
	}
}

func goListDeps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	return strings.Fields(string(out))
}
