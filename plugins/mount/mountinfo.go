package mount

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sdk/handler"
)

// MountInfo is one line of /proc/PID/mountinfo (see proc_pid_mountinfo(5)).
// Root, Mountpoint, FSType, Source and SuperOptions are bytes (handler.Name):
// the kernel shows names as they are, octal-escaping only space, tab,
// newline and backslash, which are unescaped here.
type MountInfo struct {
	ID           int          `json:"id"`
	Parent       int          `json:"parent"`
	Major        uint32       `json:"major"`
	Minor        uint32       `json:"minor"`
	Root         handler.Name `json:"root"`
	Mountpoint   handler.Name `json:"mountpoint"`
	Options      string       `json:"options"`  // per-mount: "rw,nosuid,relatime"
	Optional     []string     `json:"optional"` // "shared:1", "master:2", "unbindable", ...
	FSType       handler.Name `json:"fstype"`
	Source       handler.Name `json:"source"`
	SuperOptions handler.Name `json:"super_options"` // per-superblock
}

// maxMountinfo bounds the mount table read (some 40,000 mounts).
const maxMountinfo = 8 << 20

// readMountinfo reads the mount table of the handler's mount namespace
// from the fresh procfs: the handler's own mountinfo, which lists its
// namespace's mounts relative to its root, the target's root.
func readMountinfo(proc *os.File) (string, []MountInfo, error) {
	fd, err := unix.Openat2(int(proc.Fd()), "self/mountinfo", &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if err != nil {
		return "", nil, fmt.Errorf("opening mountinfo: %w", err)
	}
	f := os.NewFile(uintptr(fd), "mountinfo")
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxMountinfo+1))
	if err != nil {
		return "", nil, fmt.Errorf("reading mountinfo: %w", err)
	}
	if len(b) > maxMountinfo {
		return "", nil, fmt.Errorf("mountinfo is larger than %d bytes", maxMountinfo)
	}
	mounts, err := parseMountinfo(string(b))
	return string(b), mounts, err
}

func parseMountinfo(text string) ([]MountInfo, error) {
	out := []MountInfo{}
	for i, line := range strings.Split(text, "\n") {
		if line == "" {
			continue
		}
		m, err := parseMountinfoLine(line)
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %v: %q", i+1, err, line)
		}
		out = append(out, m)
	}
	return out, nil
}

func parseMountinfoLine(line string) (MountInfo, error) {
	var m MountInfo
	f := strings.Split(line, " ")
	sep := -1
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			sep = i
			break
		}
	}
	if len(f) < 10 || sep < 0 || len(f) < sep+4 {
		return m, fmt.Errorf("too few fields")
	}
	var err error
	if m.ID, err = strconv.Atoi(f[0]); err != nil {
		return m, fmt.Errorf("mount id: %v", err)
	}
	if m.Parent, err = strconv.Atoi(f[1]); err != nil {
		return m, fmt.Errorf("parent id: %v", err)
	}
	maj, min, ok := strings.Cut(f[2], ":")
	if !ok {
		return m, fmt.Errorf("bad major:minor %q", f[2])
	}
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if err1 != nil || err2 != nil {
		return m, fmt.Errorf("bad major:minor %q", f[2])
	}
	m.Major, m.Minor = uint32(ma), uint32(mi)
	m.Root, m.Mountpoint, m.Options = unescape(f[3]), unescape(f[4]), f[5]
	m.Optional = append([]string{}, f[6:sep]...)
	m.FSType, m.Source = unescape(f[sep+1]), unescape(f[sep+2])
	m.SuperOptions = handler.Name(strings.Join(f[sep+3:], " "))
	return m, nil
}

// unescape undoes the kernel's octal escapes (\040 for a space, \011,
// \012, \134) in a mountinfo field.
func unescape(s string) handler.Name {
	if !strings.Contains(s, `\`) {
		return handler.Name(s)
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && isOctal(s[i+1]) && isOctal(s[i+2]) && isOctal(s[i+3]) {
			n, _ := strconv.ParseUint(s[i+1:i+4], 8, 8)
			b.WriteByte(byte(n))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return handler.Name(b.String())
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

func findMount(mounts []MountInfo, id int) *MountInfo {
	for i := range mounts {
		if mounts[i].ID == id {
			return &mounts[i]
		}
	}
	return nil
}

// propagation is a mount's propagation type as mount(2) would set it.
func (m *MountInfo) propagation() (shared, slave, unbindable bool) {
	for _, o := range m.Optional {
		switch {
		case strings.HasPrefix(o, "shared:"):
			shared = true
		case strings.HasPrefix(o, "master:"):
			slave = true
		case o == "unbindable":
			unbindable = true
		}
	}
	return
}

// perMountBits are the MS_* bits of the mount's per-mount options.
func (m *MountInfo) perMountBits() uint64 {
	var bits uint64
	atime := false
	for _, o := range strings.Split(m.Options, ",") {
		switch o {
		case "ro":
			bits |= unix.MS_RDONLY
		case "nosuid":
			bits |= unix.MS_NOSUID
		case "nodev":
			bits |= unix.MS_NODEV
		case "noexec":
			bits |= unix.MS_NOEXEC
		case "nosymfollow":
			bits |= unix.MS_NOSYMFOLLOW
		case "noatime":
			bits, atime = bits|unix.MS_NOATIME, true
		case "relatime":
			bits, atime = bits|unix.MS_RELATIME, true
		case "nodiratime":
			bits |= unix.MS_NODIRATIME
		}
	}
	if !atime {
		bits |= unix.MS_STRICTATIME // neither shown: strict atime
	}
	return bits
}

// superReadOnly reports whether the superblock is read-only.
func (m *MountInfo) superReadOnly() bool {
	return m.SuperOptions == "ro" || strings.HasPrefix(string(m.SuperOptions), "ro,")
}

// superOption finds key in the super options: "size=1024k" for "size",
// "noswap" for "noswap".
func (m *MountInfo) superOption(key string) (string, bool) {
	for _, o := range strings.Split(string(m.SuperOptions), ",") {
		if o == key || strings.HasPrefix(o, key+"=") {
			return o, true
		}
	}
	return "", false
}
