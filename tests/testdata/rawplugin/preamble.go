//go:build !nopreamble

package main

import (
	"os"

	// The preamble: a C constructor that joins the target's namespaces
	// before main, leaving the cwd in the socket directory.
	"github.com/nsplug/nsplug/nsexec"
)

func enter() {}

// leave moves to the final cwd (the request credentials' cwd, or the
// target's root) once the socket is bound, and closes the status pipe:
// from now on failures reach the core through the protocol.
func leave() {
	if err := os.Chdir(nsexec.Self().Cwd); err != nil {
		failf("chdir: %v", err)
	}
	nsexec.CloseStatus()
}
