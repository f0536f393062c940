//go:build !nopreamble

package main

import (
	// The preamble: a C constructor that joins the target's namespaces
	// before main, leaving root and cwd in the socket directory.
	"github.com/nsplug/nsplug/nsexec"
)

func enter() {}

// leave enters the target's root and the final cwd (the request
// credentials' cwd, or that root) once the socket is bound, and closes the
// status pipe: from now on failures reach the core through the protocol.
func leave() {
	if err := nsexec.EnterRoot(); err != nil {
		failf("%v", err)
	}
	nsexec.CloseStatus()
}
