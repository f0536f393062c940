//go:build nopreamble

package main

import "syscall"

// Without the preamble nothing joins the target's namespaces: the
// process runs on the host. The core's fds are still there: 3 the
// target's pidfd, 4 the socket directory, 5 the status pipe.

func enter() {
	if err := syscall.Fchdir(4); err != nil {
		failf("fchdir(socket directory): %v", err)
	}
}

func leave() {
	if err := syscall.Chdir("/"); err != nil {
		failf("chdir: %v", err)
	}
	for fd := 3; fd <= 5; fd++ {
		syscall.Close(fd)
	}
}
