package core

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/config"
)

// New raises a soft fd limit below the hard one to the hard one. (The
// test lowers it by two only: other tests of the package may be running.)
func TestNewRaisesTheFileLimit(t *testing.T) {
	var lim unix.Rlimit
	if err := unix.Prlimit(0, unix.RLIMIT_NOFILE, nil, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Max < 64 {
		t.Fatalf("hard RLIMIT_NOFILE is %d", lim.Max)
	}
	lowered := unix.Rlimit{Cur: lim.Max - 2, Max: lim.Max}
	if err := unix.Prlimit(0, unix.RLIMIT_NOFILE, &lowered, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Prlimit(0, unix.RLIMIT_NOFILE, &lim, nil) })
	cfg := config.Default()
	cfg.RuntimeDir = t.TempDir()
	d, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	var now unix.Rlimit
	if err := unix.Prlimit(0, unix.RLIMIT_NOFILE, nil, &now); err != nil {
		t.Fatal(err)
	}
	if now.Cur != lim.Max || now.Max != lim.Max {
		t.Errorf("RLIMIT_NOFILE after New: soft %d, hard %d; want both %d", now.Cur, now.Max, lim.Max)
	}
}
