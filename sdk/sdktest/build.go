package sdktest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// Build compiles the main package in directory dir with `go build` and
// returns the path of the executable, in a temporary directory removed
// when the test ends. dir is relative to the test's working directory
// (the package's own directory: "." builds the package under test when it
// is the plugin's main package). The build runs in dir, so it uses the
// module that holds dir, its go.mod and go.sum, and the environment of
// the test (GOFLAGS, GOPROXY, GOFLAGS=-mod=...); cgo must be enabled,
// since the sdk links the nsexec preamble. The executable is named after
// dir's base name. A failed build fails the test with go's output.
func Build(t testing.TB, dir string) string {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatalf("sdktest.Build: %v", err)
	}
	out := filepath.Join(t.TempDir(), filepath.Base(abs))
	gotool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("sdktest.Build: the go command is not on PATH: %v", err)
	}
	cmd := exec.Command(gotool, "build", "-o", out, ".")
	cmd.Dir = abs
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("sdktest.Build: go build in %s: %v\n%s", abs, err, stderr.Bytes())
	}
	return out
}

func statIno(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Ino
	}
	return 0
}
