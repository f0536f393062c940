package mount

import (
	"context"
	"encoding/json"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sdk/handler"
)

func TestFlagsByNameAndNumber(t *testing.T) {
	var e Entry
	if err := json.Unmarshal([]byte(`{"flags":["ro","nosuid",1024,"rbind"]}`), &e); err != nil {
		t.Fatal(err)
	}
	bits, err := parseMountFlags(e.Flags)
	if err != nil {
		t.Fatal(err)
	}
	want := uint64(unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NOATIME | unix.MS_BIND | unix.MS_REC)
	if bits != want {
		t.Errorf("bits %#x, want %#x", bits, want)
	}
	if got := flagList(e.Flags); got != "[ro nosuid 1024 rbind]" {
		t.Errorf("flagList = %s", got)
	}
	for _, bad := range []string{`["rox"]`, `[""]`, `["ro","rw"]`, `[1073741824]`, `["strictatime","noatime"]`} {
		var fl []Flag
		if err := json.Unmarshal([]byte(bad), &fl); err != nil {
			continue // rejected while decoding: fine too
		}
		if _, err := parseMountFlags(fl); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	for _, bad := range []string{`[-1]`, `[1.5]`, `[true]`} {
		var fl []Flag
		if err := json.Unmarshal([]byte(bad), &fl); err == nil {
			t.Errorf("%s decoded", bad)
		}
	}
	var u []Flag
	json.Unmarshal([]byte(`["detach","nofollow",4]`), &u)
	if b, err := parseUmountFlags(u); err != nil || b != unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW|unix.MNT_EXPIRE {
		t.Errorf("umount flags %#x %v", b, err)
	}
	json.Unmarshal([]byte(`["lazy"]`), &u)
	if _, err := parseUmountFlags(u); err == nil {
		t.Errorf("lazy accepted")
	}
}

func TestPlanDecidesTheOperation(t *testing.T) {
	env := handler.EnvFrom(context.Background())
	for _, c := range []struct {
		e    string
		kind kind
		why  string
	}{
		{`{"source":"tmpfs","target":"/mnt","fstype":"tmpfs","flags":["nosuid","nodev"],"data":"size=1m"}`, kindNew, ""},
		{`{"source":"/a","target":"/b","flags":["bind","ro"]}`, kindBind, ""},
		{`{"source":"/a","target":"/b","flags":["move"]}`, kindMove, ""},
		{`{"target":"/b","flags":["remount","ro"],"data":"size=2m"}`, kindRemount, ""},
		{`{"target":"/b","flags":["remount","bind","ro"]}`, kindRemountBind, ""},
		{`{"target":"/b","flags":["rshared"]}`, kindPropagation, ""},
		{`{"target":"/b","flags":["shared","private"]}`, 0, "one propagation type"},
		{`{"target":"/b","flags":["private","ro"]}`, 0, "no other flag"},
		{`{"target":"/b","flags":["remount","bind"],"data":"size=1m"}`, 0, "per-mount flags only"},
		{`{"target":"/b","flags":["remount","move"]}`, 0, "does not combine"},
		{`{"source":"tmpfs","target":"/b","flags":["rec"],"fstype":"tmpfs"}`, 0, "rec goes with"},
		{`{"source":"tmpfs","target":"/b"}`, 0, "fstype is required"},
		{`{"source":"x","target":"/b","fstype":"tmp fs"}`, 0, "fstype"},
		{`{"source":"/a","target":"/b","fstype":"tmpfs","flags":["bind"]}`, 0, "meaningless"},
		{`{"source":"a","target":"/b","flags":["bind"]}`, 0, "not absolute"},
		{`{"source":"tmpfs","target":"/b/../c","fstype":"tmpfs"}`, 0, "not clean"},
		{`{"source":"tmpfs","target":"/b","fstype":"tmpfs","flags":["bogus"]}`, 0, "unknown flag"},
		{`{"target":"/b","source":"/x","flags":["remount"]}`, 0, "meaningless"},
	} {
		var e Entry
		if err := json.Unmarshal([]byte(c.e), &e); err != nil {
			t.Fatal(err)
		}
		s, err := plan(env, 1, 2, e)
		if c.why != "" {
			if !strings.Contains(handler.AsError(err).Error(), c.why) || handler.AsError(err).Errno != syscall.EINVAL || !strings.Contains(err.Error(), "entry 1 of 2") {
				t.Errorf("%s: %v, want EINVAL about %q naming entry 1", c.e, err, c.why)
			}
			continue
		}
		if err != nil || s.kind != c.kind {
			t.Errorf("%s: %v %v, want %v", c.e, s, err, c.kind)
		}
	}
}

func TestParseMountinfo(t *testing.T) {
	text := "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue\n" +
		"40 36 0:45 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n"
	ms, err := parseMountinfo(text)
	if err != nil || len(ms) != 2 {
		t.Fatalf("%v %+v", err, ms)
	}
	m := ms[0]
	if m.ID != 36 || m.Parent != 35 || m.Major != 98 || m.Minor != 0 || m.Root != "/mnt1" || m.Mountpoint != "/mnt/with space" ||
		m.Options != "rw,noatime" || len(m.Optional) != 2 || m.FSType != "ext3" || m.Source != "/dev/root" || m.SuperOptions != "rw,errors=continue" {
		t.Errorf("%+v", m)
	}
	if sh, sl, ub := m.propagation(); !sh || !sl || ub {
		t.Errorf("propagation %v %v %v", sh, sl, ub)
	}
	if ms[1].perMountBits() != unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RELATIME || len(ms[1].Optional) != 0 || ms[1].Optional == nil {
		t.Errorf("%+v", ms[1])
	}
	if v, ok := m.superOption("errors"); !ok || v != "errors=continue" {
		t.Errorf("superOption = %q %v", v, ok)
	}
	if _, err := parseMountinfo("1 2 3\n"); err == nil {
		t.Errorf("short line accepted")
	}
}
