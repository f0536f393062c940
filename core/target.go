package core

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/nsexec/boot"
)

// nsID identifies one namespace: the device and inode of /proc/PID/ns/<kind>.
type nsID struct{ dev, ino uint64 }

// nsSet holds the identity of every namespace kind, in boot.Namespaces order.
type nsSet [8]nsID

func readNSSet(pid string) (nsSet, error) {
	var set nsSet
	for i, ns := range boot.Namespaces {
		var st unix.Stat_t
		if err := unix.Stat("/proc/"+pid+"/ns/"+ns.Name, &st); err != nil {
			if errors.Is(err, unix.ENOENT) && ns.Name == "time" {
				continue // kernel without time namespaces
			}
			return set, err
		}
		set[i] = nsID{st.Dev, st.Ino}
	}
	return set, nil
}

// userIndex is the place of "user" in boot.Namespaces, and in an nsSet.
var userIndex = slices.IndexFunc(boot.Namespaces, func(ns boot.Namespace) bool { return ns.Name == "user" })

// readUserNSOwner returns the uid that created pid's user namespace
// (NS_GET_OWNER_UID, as this process's user namespace sees it), asking the
// namespace /proc/PID/ns/user opens, which must be want: read by pinTarget
// with the rest, before the pidfd confirms that /proc/PID was the pinned
// process, it is then that process's.
func readUserNSOwner(pid int, want nsID) (uint32, error) {
	fd, err := unix.Open("/proc/"+strconv.Itoa(pid)+"/ns/user", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	if (nsID{st.Dev, st.Ino}) != want {
		return 0, errorf(syscall.EAGAIN, "target pid %d changed its user namespace while being pinned", pid)
	}
	return unix.IoctlGetUint32(fd, unix.NS_GET_OWNER_UID)
}

// TargetInfo is what an authorization hook (Request.Authorize,
// Target.Authorize) learns of the process a request is pinned to: the
// process actually pinned, whatever its PID named when the caller looked.
// A hook must not keep or modify Namespaces.
type TargetInfo struct {
	PID       int
	StartTime uint64 // of the pinned process (see StartTime)
	// Namespaces are the inodes of the target's namespaces by name
	// ("user", "mnt", ...), as stat(2) of /proc/PID/ns/NAME shows them; a
	// kind the kernel lacks is absent.
	Namespaces map[string]uint64
	// UserNSOwner is the uid that created the target's user namespace
	// (NS_GET_OWNER_UID) in the core's user namespace: 0 for the initial
	// one, the user's own uid for a rootless container.
	UserNSOwner uint32
	// HostUserNS reports that the target is in the core's own user
	// namespace (a host process, or a container without one of its own):
	// a handler serving it keeps the core's privilege.
	HostUserNS bool
}

// info describes t for an authorization hook; self are the core's own
// namespaces.
func (t *target) info(self *nsSet) TargetInfo {
	ti := TargetInfo{PID: t.pid, StartTime: t.startTime, Namespaces: make(map[string]uint64, len(t.ns)),
		UserNSOwner: t.userOwner, HostUserNS: t.ns[userIndex] == self[userIndex]}
	for i, ns := range boot.Namespaces {
		if t.ns[i] != (nsID{}) {
			ti.Namespaces[ns.Name] = t.ns[i].ino
		}
	}
	return ti
}

// target is a pinned target process: its pidfd tells a recycled PID from
// the process it was opened for, and its namespaces were read while it
// was alive.
type target struct {
	pid       int
	pidfd     *os.File
	startTime uint64 // of the process the pidfd pins (see StartTime)
	nsPID     int    // its pid in its own pid namespace (NSpid), 0 if unknown
	ns        nsSet
	userOwner uint32 // the uid owning its user namespace (ns[userIndex])
	readAt    time.Time
	refs      atomic.Int32 // the cache's reference and each request's
	keys      sync.Map     // instance keys computed for it (see instanceKey)
}

// pinTarget opens a pidfd for pid and reads its namespaces. A dead or
// missing PID is an ESRCH error.
func pinTarget(pid int) (*target, error) {
	if pid <= 0 {
		return nil, errorf(syscall.EINVAL, "invalid target pid %d", pid)
	}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, errorf(syscall.ESRCH, "target pid %d does not exist", pid)
		}
		return nil, errorf(errnoOf(err), "pinning target pid %d: %v", pid, err)
	}
	t := &target{pid: pid, pidfd: os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(pid)), readAt: time.Now()}
	t.refs.Store(1)
	t.startTime, err = readStartTime(pid)
	if err == nil {
		t.ns, err = readNSSet(strconv.Itoa(pid))
	}
	if err == nil {
		t.userOwner, err = readUserNSOwner(pid, t.ns[userIndex])
	}
	if err == nil {
		t.nsPID, err = readNSPID(pid)
	}
	// Only now is it known that /proc/PID above was this process: had it
	// died and its PID been reused meanwhile, the pidfd would say so.
	if alive := t.alive(); !alive || err != nil {
		t.close()
		if !alive {
			return nil, errorf(syscall.ESRCH, "target pid %d exited", pid)
		}
		if errors.Is(err, unix.ENOENT) { // a zombie: dead, its namespaces gone
			return nil, errorf(syscall.ESRCH, "target pid %d has exited (a zombie not yet reaped)", pid)
		}
		return nil, errorf(errnoOf(err), "reading namespaces of target pid %d: %v", pid, err)
	}
	return t, nil
}

// StartTime is when process pid started: field 22 of /proc/PID/stat,
// in clock ticks after boot, as this process's /proc shows it. A pid and
// its start time name one process for good: a pid the kernel reuses
// belongs to a process that started later. Request.StartTime takes it
// (`nsplug id` prints PID:STARTTIME). A missing pid is an ESRCH error.
func StartTime(pid int) (uint64, error) {
	if pid <= 0 {
		return 0, errorf(syscall.EINVAL, "invalid target pid %d", pid)
	}
	st, err := readStartTime(pid)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
			return 0, errorf(syscall.ESRCH, "target pid %d does not exist", pid)
		}
		return 0, errorf(errnoOf(err), "target pid %d: %v", pid, err)
	}
	return st, nil
}

func readStartTime(pid int) (uint64, error) {
	path := "/proc/" + strconv.Itoa(pid) + "/stat"
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	st, err := parseStartTime(data)
	if err != nil {
		return 0, fmt.Errorf("%s: %v", path, err)
	}
	return st, nil
}

// readNSPID is pid's number in its own pid namespace: the last field of
// the NSpid line of /proc/PID/status, which lists the process's pid in
// every pid namespace from that of our /proc down to its own. A handler
// that joined the target's pid namespace knows the target by it
// (sdk.Env.TargetNSPID).
func readNSPID(pid int) (int, error) {
	path := "/proc/" + strconv.Itoa(pid) + "/status"
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			n, err := strconv.Atoi(f[len(f)-1])
			if err != nil || n <= 0 {
				return 0, fmt.Errorf("%s: bad NSpid line %q", path, line)
			}
			return n, nil
		}
	}
	return 0, nil // a kernel before 4.1: unknown
}

// parseStartTime reads field 22 of a /proc/PID/stat line. Field 2, the
// command name in parentheses, is the process's to choose and may hold
// spaces and parentheses itself; no later field holds a ')', so the
// fields are counted from the last one.
func parseStartTime(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("no command name")
	}
	f := strings.Fields(string(stat[i+1:])) // f[0] is field 3, the state
	const field = 22
	if len(f) < field-2 {
		return 0, fmt.Errorf("%d fields after the command name, want at least %d", len(f), field-2)
	}
	st, err := strconv.ParseUint(f[field-3], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("start time: %v", err)
	}
	return st, nil
}

// checkStartTime refuses a request for the process of t.pid that started
// at want when the pinned process started at another time: the process
// the caller meant is gone and its pid belongs to another one now. The
// value compared was read while the pidfd pinned the process, so a warm
// request costs no /proc read.
func (t *target) checkStartTime(want *uint64) error {
	if want == nil || *want == t.startTime {
		return nil
	}
	return errorf(syscall.ESRCH, "target %d:%d is gone: pid %d now names a process started at %d", t.pid, *want, t.pid, t.startTime)
}

func (t *target) alive() bool {
	return unix.PidfdSendSignal(int(t.pidfd.Fd()), 0, nil, 0) == nil
}

// release drops a reference; the last one closes the pidfd.
func (t *target) release() {
	if t.refs.Add(-1) == 0 {
		t.pidfd.Close()
	}
}

// close is release for a target nobody else holds.
func (t *target) close() { t.release() }

// targetTTL is how long a target's namespaces, once read, are trusted
// while the process lives. Reading them costs eight stat calls on /proc,
// the most expensive part of a warm request; a process that changes its
// own namespaces (setns, unshare) is served in its previous ones for at
// most this long — namespaces it was in anyway.
const targetTTL = time.Second

// maxCachedTargets bounds the pidfds the cache holds.
const maxCachedTargets = 1024

// targetCache keeps pinned targets between requests.
type targetCache struct {
	mu    sync.Mutex
	byPID map[int]*target
}

// pin returns the pinned target for pid, from the cache when its pidfd
// still names a live process and its namespaces are fresh. The caller
// releases it.
func (c *targetCache) pin(pid int) (*target, error) {
	c.mu.Lock()
	t := c.byPID[pid]
	if t != nil {
		t.refs.Add(1)
	}
	c.mu.Unlock()
	if t != nil {
		if time.Since(t.readAt) < targetTTL && t.alive() {
			return t, nil
		}
		t.release()
	}
	t, err := pinTarget(pid)
	if err != nil {
		c.drop(pid, nil)
		return nil, err
	}
	t.refs.Add(1) // the cache's
	c.mu.Lock()
	if c.byPID == nil {
		c.byPID = make(map[int]*target)
	}
	if old := c.byPID[pid]; old != nil {
		old.release()
	} else if len(c.byPID) >= maxCachedTargets {
		for p, o := range c.byPID { // any will do: a random eviction
			delete(c.byPID, p)
			o.release()
			break
		}
	}
	c.byPID[pid] = t
	c.mu.Unlock()
	return t, nil
}

// drop forgets pid's entry (if it is t, or any when t is nil).
func (c *targetCache) drop(pid int, t *target) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.byPID[pid]; old != nil && (t == nil || old == t) {
		delete(c.byPID, pid)
		old.release()
	}
}

// close releases every cached target.
func (c *targetCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for pid, t := range c.byPID {
		delete(c.byPID, pid)
		t.release()
	}
}

// idMap is one line of a /proc/PID/{uid,gid}_map.
type idMap struct{ inside, outside, count uint32 }

func readIDMap(path string) ([]idMap, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var maps []idMap
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		var m [3]uint64
		for i := range f {
			if m[i], err = strconv.ParseUint(f[i], 10, 32); err != nil {
				return nil, fmt.Errorf("%s: %q: %v", path, line, err)
			}
		}
		maps = append(maps, idMap{uint32(m[0]), uint32(m[1]), uint32(m[2])})
	}
	return maps, nil
}

func toOutside(maps []idMap, id uint32) (uint32, bool) {
	for _, m := range maps {
		if id >= m.inside && id-m.inside < m.count {
			return m.outside + (id - m.inside), true
		}
	}
	return 0, false
}

func toInside(maps []idMap, id uint32) (uint32, bool) {
	for _, m := range maps {
		if id >= m.outside && id-m.outside < m.count {
			return m.inside + (id - m.outside), true
		}
	}
	return 0, false
}

// identity is who a plugin process is after joining a target's user
// namespace: inside (in the namespace) and outside (on the host).
type identity struct {
	uid, gid       uint32 // inside
	hostUID, hostG uint32 // outside
}

// userIdentity picks the credentials a plugin takes in the target's user
// namespace: root when the namespace maps root, otherwise the target
// process's own uid and gid (a namespace that maps no root still lets its
// own users act as themselves).
func (t *target) userIdentity(creds *Credentials) (identity, error) {
	pid := strconv.Itoa(t.pid)
	uids, err := readIDMap("/proc/" + pid + "/uid_map")
	if err != nil {
		return identity{}, err
	}
	gids, err := readIDMap("/proc/" + pid + "/gid_map")
	if err != nil {
		return identity{}, err
	}
	var id identity
	if creds != nil {
		hu, uok := toOutside(uids, creds.UID)
		hg, gok := toOutside(gids, creds.GID)
		if !uok || !gok {
			return identity{}, errorf(syscall.EINVAL, "credentials: uid %d / gid %d are not mapped in the user namespace of target pid %d", creds.UID, creds.GID, t.pid)
		}
		id = identity{uid: creds.UID, gid: creds.GID, hostUID: hu, hostG: hg}
	} else if hu, uok := toOutside(uids, 0); uok {
		hg, gok := toOutside(gids, 0)
		if !gok {
			return identity{}, errorf(syscall.EPERM, "target pid %d: its user namespace maps uid 0 but not gid 0", t.pid)
		}
		id = identity{uid: 0, gid: 0, hostUID: hu, hostG: hg}
	} else {
		hu, hg, err := statusIDs(pid)
		if err != nil {
			return identity{}, err
		}
		iu, uok := toInside(uids, hu)
		ig, gok := toInside(gids, hg)
		if !uok || !gok {
			return identity{}, errorf(syscall.EPERM, "target pid %d: its user namespace maps neither root nor its own uid %d/gid %d, so no one can act in it; leave \"user\" out of the namespaces to join (Request.Namespaces, nsplug call --ns) to act with the core's credentials", t.pid, hu, hg)
		}
		id = identity{uid: iu, gid: ig, hostUID: hu, hostG: hg}
	}
	if !t.alive() {
		return identity{}, errorf(syscall.ESRCH, "target pid %d exited", t.pid)
	}
	return id, nil
}

// statusIDs reads the effective uid and gid of a process as the host sees them.
func statusIDs(pid string) (uid, gid uint32, err error) {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	found := 0
	for s.Scan() {
		line := s.Text()
		for _, k := range []string{"Uid:", "Gid:"} {
			if rest, ok := strings.CutPrefix(line, k); ok {
				f := strings.Fields(rest)
				if len(f) < 2 {
					return 0, 0, fmt.Errorf("/proc/%s/status: bad %s line", pid, k)
				}
				v, err := strconv.ParseUint(f[1], 10, 32)
				if err != nil {
					return 0, 0, err
				}
				if k == "Uid:" {
					uid = uint32(v)
				} else {
					gid = uint32(v)
				}
				found++
			}
		}
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("/proc/%s/status: no Uid/Gid", pid)
	}
	return uid, gid, s.Err()
}
