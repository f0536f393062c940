//go:build !cgo

package nsexec

import (
	"fmt"
	"os"
)

// Built without cgo there is no constructor: nothing ran before the Go
// runtime, so a process started with a bootstrap is still in the core's
// namespaces, with the core's root and credentials. It must not serve:
// it says why (on the status pipe, where the core reads a failed start,
// and on stderr) and exits before any plugin code runs.
func init() {
	if os.Getenv(EnvName) == "" {
		return
	}
	msg := "nsplug: this executable was built without cgo, so without the nsexec preamble that joins a target's namespaces; it cannot serve plugins (the built-ins start from nsplug-handler, which has it)"
	if f := os.NewFile(StatusFD, "nsexec-status"); f != nil {
		f.WriteString(msg + "\n")
	}
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(1)
}

// EnterRoot does nothing: without the constructor there is no bootstrap.
func EnterRoot() error { return nil }
