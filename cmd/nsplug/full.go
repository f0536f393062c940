package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// fullName is the full binary, looked for beside this one only (never on
// $PATH: what runs as root here must be what was installed with it).
const fullName = "nsplugd"

// execFull replaces this process with bin/nsplugd running args. It returns
// only when it cannot. The binary is opened and checked through the open
// file, then executed through that same file, so that it cannot be swapped
// between the check and the exec: a regular file, and it and its directory
// owned by root or by this binary's own owner and writable by no one else.
func execFull(args []string) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding %s: %v", fullName, err)
	}
	path := filepath.Join(filepath.Dir(self), fullName)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("this command needs %s beside %s (the full nsplug binary, built with it by make): %v", path, self, err)
	}
	defer unix.Close(fd)
	var st, selfSt, dirSt unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	if err := unix.Stat(self, &selfSt); err != nil {
		return fmt.Errorf("%s: %v", self, err)
	}
	if err := unix.Stat(filepath.Dir(path), &dirSt); err != nil {
		return fmt.Errorf("%s: %v", filepath.Dir(path), err)
	}
	for _, c := range []struct {
		name string
		st   *unix.Stat_t
	}{{path, &st}, {filepath.Dir(path), &dirSt}} {
		if c.st.Uid != 0 && c.st.Uid != selfSt.Uid {
			return fmt.Errorf("refusing to run %s: %s is owned by uid %d, neither root nor the owner of %s", path, c.name, c.st.Uid, self)
		}
		if c.st.Mode&0o022 != 0 && c.st.Mode&unix.S_ISVTX == 0 {
			return fmt.Errorf("refusing to run %s: %s is writable by group or others (mode %#o)", path, c.name, c.st.Mode&0o7777)
		}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("refusing to run %s: not a regular file", path)
	}
	// Executing /proc/self/fd/N runs the file opened above; it is
	// close-on-exec, so nsplugd does not inherit it.
	err = unix.Exec("/proc/self/fd/"+strconv.Itoa(fd), append([]string{fullName}, args...), os.Environ())
	return fmt.Errorf("executing %s: %v", path, err)
}
