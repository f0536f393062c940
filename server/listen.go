package server

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/config"
)

// maxSocketPath is the longest path a unix socket address holds
// (sun_path, with its terminating NUL).
const maxSocketPath = len(unix.RawSockaddrUnix{}.Path) - 1

// Listen makes the API's socket as cfg's [server] table says: at socket,
// with socket_mode and socket_group; its directory is created (0711) if
// missing. When that directory is runtime_dir, it is made 0711: callers
// can reach the socket, while the core's entries there stay 0700 (see
// core's runDir) and the directory cannot be listed.
//
// A socket file left by a daemon that was killed (nobody accepts on it)
// is replaced. A socket another process serves is an error, as is a file
// that is not a socket, which is never removed. Two daemons starting at
// once are serialized by a lock on the directory.
//
// Closing the listener removes the socket.
func Listen(cfg *config.Config) (*net.UnixListener, error) {
	path, dir := cfg.Server.Socket, filepath.Dir(cfg.Server.Socket)
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("server.socket %q: %d bytes, longer than a unix socket path can be (%d)", path, len(path), maxSocketPath)
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o711); err != nil {
			return nil, fmt.Errorf("server.socket: %w", err)
		}
		if err := os.Chmod(dir, 0o711); err != nil {
			return nil, fmt.Errorf("server.socket: %w", err)
		}
	}
	if filepath.Clean(dir) == filepath.Clean(cfg.RuntimeDir) {
		if err := os.Chmod(dir, 0o711); err != nil {
			return nil, fmt.Errorf("server.socket: runtime_dir: %w", err)
		}
	}
	gid := -1
	if g := cfg.Server.SocketGroup; g != "" {
		var err error
		if gid, err = lookupGroup(g); err != nil {
			return nil, fmt.Errorf("server.socket_group: %w", err)
		}
	}
	lock, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("server.socket: %w", err)
	}
	defer lock.Close() // and with it the flock
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return nil, fmt.Errorf("server.socket: locking %s: %w", dir, err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("server.socket: %w", err)
	}
	// Until the chmod the socket has the umask's mode; connecting is not
	// calling (every call is authorized from its caller's credentials),
	// so that moment gives nobody anything.
	err = os.Chmod(path, os.FileMode(cfg.Server.SocketMode))
	if err == nil && gid >= 0 {
		err = os.Lchown(path, -1, gid)
	}
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("server.socket: %w", err)
	}
	return l, nil
}

// removeStale removes the socket at path if nobody accepts connections on
// it any more.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("server.socket: %w", err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("server.socket %s exists and is not a socket (%v); not touching it", path, fi.Mode().Type())
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("server.socket %s: another process is serving on it (another nsplug serve?)", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("server.socket %s: cannot tell whether a daemon serves on it: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("server.socket: removing the stale socket: %w", err)
	}
	return nil
}

// lookupGroup reads a group number, or looks a name up in /etc/group (not
// through NSS, which nsplug never uses).
func lookupGroup(name string) (int, error) {
	if n, err := strconv.ParseUint(name, 10, 31); err == nil {
		return int(n), nil
	}
	f, err := os.Open("/etc/group")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) >= 3 && fields[0] == name {
			n, err := strconv.ParseUint(fields[2], 10, 31)
			if err != nil {
				return 0, fmt.Errorf("/etc/group: group %q has gid %q", name, fields[2])
			}
			return int(n), nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("/etc/group: %w", err)
	}
	return 0, fmt.Errorf("no group %q in /etc/group", name)
}
