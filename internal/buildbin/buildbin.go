// Package buildbin builds nsplug's binaries for the tests and the bench,
// the way `make build` does (it runs that target, so that the flags live
// in one place, the Makefile): bin/nsplug, the front, and bin/nsplugd, the
// full binary it hands commands to, and bin/nsplug-handler, the built-ins
// alone, side by side in one directory.
package buildbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Build writes nsplug, nsplugd and nsplug-handler into dir. The working directory must lie
// in the nsplug module. Built without race detector or coverage, even when
// the caller runs under them (GOFLAGS is cleared).
func Build(dir string) error {
	gocmd, err := exec.LookPath("go")
	if err != nil {
		gocmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	mod, err := exec.Command(gocmd, "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("finding the nsplug module: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(mod)))
	cmd := exec.Command("make", "-s", "-C", root, "build", "BINDIR="+dir, "GO="+gocmd, "GOFLAGS=")
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("make build BINDIR=%s: %v\n%s", dir, err, out)
	}
	return nil
}
