package core

import "golang.org/x/sys/unix"

// raiseFileLimit raises this process's soft RLIMIT_NOFILE to its hard
// limit, and returns both as they were. Every warm instance costs the
// core several fds (frame channel, go-plugin's socket and pipes), every
// pinned target one more: a node with hundreds of targets needs
// thousands, far above the 1024 a soft limit often is. The Go runtime
// raises the soft limit at start too (to one below the hard limit), but
// an embedder may have lowered it since; New makes sure.
//
// It is set with prlimit(2) directly, as an operator's prlimit would: the
// runtime then no longer gives child processes the soft limit the process
// started with, and they inherit the raised one (plugin processes raise
// theirs anyway).
func raiseFileLimit() (before unix.Rlimit, err error) {
	if err := unix.Prlimit(0, unix.RLIMIT_NOFILE, nil, &before); err != nil {
		return before, err
	}
	if before.Cur >= before.Max {
		return before, nil
	}
	raised := unix.Rlimit{Cur: before.Max, Max: before.Max}
	return before, unix.Prlimit(0, unix.RLIMIT_NOFILE, &raised, nil)
}
