package core

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// runDir is this core's directory under runtime_dir, where the socket
// directories of instances being started live. Nothing stays on disk
// while the core serves: an instance's socket and its directory are
// removed as soon as the core has connected (the connection lives on;
// see nsRunner.Dial), a oneshot process's directory as soon as the
// process holds it, and this directory whenever no start is in
// progress. So a core killed with SIGKILL leaves nothing behind, unless
// it died in the middle of a start: then its lock is free, and the next
// core removes what it left.
type runDir struct {
	root  string
	mu    sync.Mutex
	users int      // starts in progress
	path  string   // while users > 0
	lock  *os.File // flock held on path/lock while it exists
}

// newRunDir makes runtime_dir and removes what cores that died in the
// middle of a start left in it.
//
// runtime_dir is the core's own: made 0700, and an existing one must
// belong to the core's uid. Others may at most search it (0711), never
// list it, add or remove entries: that is what `nsplug serve` needs to
// offer its socket in it, and every entry the core makes there is 0700,
// so a directory others can search but not read gives them nothing but
// the socket whose name they know.
func newRunDir(root string) (*runDir, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, fmt.Errorf("runtime_dir: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		return nil, fmt.Errorf("runtime_dir: %w", err)
	}
	if int(st.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("runtime_dir %s belongs to uid %d, not to the core's uid %d", root, st.Uid, os.Geteuid())
	}
	if err := os.Chmod(root, 0o700|os.FileMode(st.Mode)&0o011); err != nil {
		return nil, fmt.Errorf("runtime_dir: %w", err)
	}
	stale, _ := filepath.Glob(filepath.Join(root, "core-*"))
	for _, dir := range stale {
		// No lock file yet: a core is creating it.
		lock, err := os.Open(filepath.Join(dir, "lock"))
		if err == nil {
			if unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
				os.RemoveAll(dir)
			}
			lock.Close()
		}
	}
	return &runDir{root: root}, nil
}

// enter returns the directory to start an instance in, creating it if no
// other start is in progress. Each enter is followed by a leave.
func (r *runDir) enter() (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.users == 0 {
		dir, err := os.MkdirTemp(r.root, "core-"+strconv.Itoa(os.Getpid())+"-")
		if err != nil {
			return "", fmt.Errorf("runtime_dir: %w", err)
		}
		lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR|os.O_EXCL, 0o600)
		if err == nil {
			err = unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		}
		if err != nil {
			if lock != nil {
				lock.Close()
			}
			os.RemoveAll(dir)
			return "", fmt.Errorf("runtime_dir lock: %w", err)
		}
		r.path, r.lock = dir, lock
	}
	r.users++
	return r.path, nil
}

// leave ends a start; the last one removes the directory.
func (r *runDir) leave() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.users--; r.users == 0 {
		os.RemoveAll(r.path)
		r.lock.Close()
		r.path, r.lock = "", nil
	}
}
