// Package spawner runs process starts on one OS thread that never exits,
// for the core (plugin processes) and package sandbox (targets) alike.
//
// PR_SET_PDEATHSIG fires when the parent *thread* exits, not the process,
// and the Go runtime may retire threads (one whose goroutine exited while
// locked, say): a child forked from an arbitrary goroutine could be killed
// at random (golang/go#27505). Forking from one locked thread that lives as
// long as the process makes the parent-death signal mean what it says.
package spawner

import (
	"os/exec"
	"runtime"
	"sync"
)

var spawner = struct {
	once sync.Once
	reqs chan func()
}{reqs: make(chan func())}

// Do runs fn on the spawner thread and waits for it. fn must not call Do.
func Do(fn func()) {
	spawner.once.Do(func() {
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for f := range spawner.reqs {
				f()
			}
		}()
	})
	done := make(chan struct{})
	spawner.reqs <- func() { fn(); close(done) }
	<-done
}

// Start starts cmd from the spawner thread.
func Start(cmd *exec.Cmd) error {
	var err error
	Do(func() { err = cmd.Start() })
	return err
}
