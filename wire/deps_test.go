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
	out, err := exec.Command("go", "list", "-deps", "github.com/nsplug/nsplug/wire").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "github.com/nsplug/nsplug/") && dep != "github.com/nsplug/nsplug/wire" {
			t.Errorf("wire depends on %s", dep)
		}
	}
}
