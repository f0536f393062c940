package mount

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Flag is one mount or umount flag in a request: a name ("ro", "bind") or
// a number (a mask of MS_* or MNT_* bits), kept as given for messages.
type Flag struct {
	text string
	name string // "" for a number
	num  uint64
}

// UnmarshalJSON accepts a string or a non-negative integer.
func (f *Flag) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &f.name); err != nil {
			return err
		}
		f.text = f.name
		return nil
	}
	n, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("a flag is a name or a non-negative integer, not %s", b)
	}
	f.num, f.text = n, string(b)
	return nil
}

// MarshalJSON writes the flag as it was given.
func (f Flag) MarshalJSON() ([]byte, error) {
	if f.name != "" || f.text == "" {
		return json.Marshal(f.name)
	}
	return []byte(f.text), nil
}

func (f Flag) String() string { return f.text }

// mountFlags are the names mount.mount accepts, as mount(2) MS_* bits.
// The positive forms of per-mount flags (rw, suid, dev, exec, async,
// atime, diratime) set nothing: they only document intent, and conflict
// with their negation.
var mountFlags = map[string]uint64{
	"ro":          unix.MS_RDONLY,
	"rw":          0,
	"nosuid":      unix.MS_NOSUID,
	"suid":        0,
	"nodev":       unix.MS_NODEV,
	"dev":         0,
	"noexec":      unix.MS_NOEXEC,
	"exec":        0,
	"sync":        unix.MS_SYNCHRONOUS,
	"async":       0,
	"remount":     unix.MS_REMOUNT,
	"mand":        unix.MS_MANDLOCK,
	"dirsync":     unix.MS_DIRSYNC,
	"nosymfollow": unix.MS_NOSYMFOLLOW,
	"noatime":     unix.MS_NOATIME,
	"atime":       0,
	"nodiratime":  unix.MS_NODIRATIME,
	"diratime":    0,
	"relatime":    unix.MS_RELATIME,
	"strictatime": unix.MS_STRICTATIME,
	"lazytime":    unix.MS_LAZYTIME,
	"bind":        unix.MS_BIND,
	"rbind":       unix.MS_BIND | unix.MS_REC,
	"move":        unix.MS_MOVE,
	"rec":         unix.MS_REC,
	"silent":      unix.MS_SILENT,
	"private":     unix.MS_PRIVATE,
	"rprivate":    unix.MS_PRIVATE | unix.MS_REC,
	"slave":       unix.MS_SLAVE,
	"rslave":      unix.MS_SLAVE | unix.MS_REC,
	"shared":      unix.MS_SHARED,
	"rshared":     unix.MS_SHARED | unix.MS_REC,
	"unbindable":  unix.MS_UNBINDABLE,
	"runbindable": unix.MS_UNBINDABLE | unix.MS_REC,
}

// opposites may not both be given.
var opposites = [][2]string{
	{"ro", "rw"}, {"nosuid", "suid"}, {"nodev", "dev"}, {"noexec", "exec"},
	{"sync", "async"}, {"noatime", "atime"}, {"nodiratime", "diratime"},
}

// knownMountBits are the MS_* bits a numeric flag may use.
var knownMountBits = func() uint64 {
	var all uint64
	for _, b := range mountFlags {
		all |= b
	}
	return all
}()

const (
	propagationBits = unix.MS_SHARED | unix.MS_PRIVATE | unix.MS_SLAVE | unix.MS_UNBINDABLE
	atimeBits       = unix.MS_NOATIME | unix.MS_NODIRATIME | unix.MS_RELATIME | unix.MS_STRICTATIME
	// perMountBits are what a bind remount (or mount_setattr) changes.
	perMountBits = unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_NOSYMFOLLOW | atimeBits
)

// parseMountFlags turns request flags into MS_* bits.
func parseMountFlags(flags []Flag) (uint64, error) {
	var bits uint64
	seen := make(map[string]bool)
	for _, f := range flags {
		if f.name == "" && f.text != "" {
			if f.num&^knownMountBits != 0 {
				return 0, fmt.Errorf("flag %s has unknown bits %#x", f.text, f.num&^knownMountBits)
			}
			bits |= f.num
			continue
		}
		b, ok := mountFlags[f.name]
		if !ok {
			return 0, fmt.Errorf("unknown flag %q (known: %s)", f.name, strings.Join(sortedNames(mountFlags), ", "))
		}
		seen[f.name] = true
		bits |= b
	}
	for _, o := range opposites {
		if seen[o[0]] && seen[o[1]] {
			return 0, fmt.Errorf("flags %q and %q contradict each other", o[0], o[1])
		}
	}
	if bits&unix.MS_STRICTATIME != 0 && bits&(unix.MS_NOATIME|unix.MS_RELATIME) != 0 {
		return 0, fmt.Errorf("strictatime contradicts noatime and relatime")
	}
	return bits, nil
}

// umountFlags are the names mount.umount accepts, as umount2(2) bits.
var umountFlags = map[string]uint64{
	"force":    unix.MNT_FORCE,
	"detach":   unix.MNT_DETACH,
	"expire":   unix.MNT_EXPIRE,
	"nofollow": unix.UMOUNT_NOFOLLOW,
}

func parseUmountFlags(flags []Flag) (uint64, error) {
	const known = unix.MNT_FORCE | unix.MNT_DETACH | unix.MNT_EXPIRE | unix.UMOUNT_NOFOLLOW
	var bits uint64
	for _, f := range flags {
		if f.name == "" && f.text != "" {
			if f.num&^known != 0 {
				return 0, fmt.Errorf("flag %s has unknown bits %#x", f.text, f.num&^known)
			}
			bits |= f.num
			continue
		}
		b, ok := umountFlags[f.name]
		if !ok {
			return 0, fmt.Errorf("unknown flag %q (known: %s)", f.name, strings.Join(sortedNames(umountFlags), ", "))
		}
		bits |= b
	}
	return bits, nil
}

func sortedNames(m map[string]uint64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func flagList(flags []Flag) string {
	parts := make([]string, len(flags))
	for i, f := range flags {
		parts[i] = f.text
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// mountAttrs turns the per-mount MS_* bits of a bind remount into a
// mount_setattr(2) change that does what mount(2) does: the listed flags
// are set and the others cleared, except that the access-time flags stay as
// they are when none is given.
func mountAttrs(bits uint64) *unix.MountAttr {
	a := &unix.MountAttr{
		Attr_clr: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV |
			unix.MOUNT_ATTR_NOEXEC | unix.MOUNT_ATTR_NOSYMFOLLOW,
	}
	a.Attr_set = addAttrs(bits)
	if bits&atimeBits != 0 {
		a.Attr_clr |= unix.MOUNT_ATTR__ATIME | unix.MOUNT_ATTR_NODIRATIME
	}
	return a
}

// addAttrs maps MS_* bits to MOUNT_ATTR_* bits. Without noatime or
// strictatime the access-time mode is relatime, as for mount(2).
func addAttrs(bits uint64) uint64 {
	var set uint64
	for ms, attr := range map[uint64]uint64{
		unix.MS_RDONLY:      unix.MOUNT_ATTR_RDONLY,
		unix.MS_NOSUID:      unix.MOUNT_ATTR_NOSUID,
		unix.MS_NODEV:       unix.MOUNT_ATTR_NODEV,
		unix.MS_NOEXEC:      unix.MOUNT_ATTR_NOEXEC,
		unix.MS_NOSYMFOLLOW: unix.MOUNT_ATTR_NOSYMFOLLOW,
		unix.MS_NODIRATIME:  unix.MOUNT_ATTR_NODIRATIME,
	} {
		if bits&ms != 0 {
			set |= attr
		}
	}
	switch {
	case bits&unix.MS_NOATIME != 0:
		set |= unix.MOUNT_ATTR_NOATIME
	case bits&unix.MS_STRICTATIME != 0:
		set |= unix.MOUNT_ATTR_STRICTATIME
	}
	return set
}
