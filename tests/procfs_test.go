package tests

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sandbox"
)

// feedFIFO writes chunks into the FIFO at path once a reader has opened
// it (a non-blocking open for writing fails with ENXIO until then), with
// a pause between chunks, and closes it: the reader then sees EOF. The
// returned channel yields the writer's error.
func feedFIFO(path string, chunks ...string) <-chan error {
	done := make(chan error, 1)
	go func() {
		deadline := time.Now().Add(10 * time.Second)
		for {
			fd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
			if errors.Is(err, unix.ENXIO) && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			if err != nil {
				done <- err
				return
			}
			f := os.NewFile(uintptr(fd), path)
			for _, c := range chunks {
				if _, err := f.WriteString(c); err != nil {
					f.Close()
					done <- err
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			done <- f.Close()
			return
		}
	}()
	return done
}

// procfs.read of a FIFO reads it with read(2) at offset 0: what the writer
// sends, to EOF or to len. At another offset it is the kernel's ESPIPE.
func TestProcfsReadsAFIFO(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Files: map[string]string{"/mnt/.keep": ""}})
	pid := target.PID()
	fifo := filepath.Join(target.Root(), "/mnt/fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	d, _ := newDispatcher(t, "")
	var rd struct {
		Data []byte `json:"data"`
	}

	fed := feedFIFO(fifo, "hello ", "from ", "the host\n")
	mustCall(t, d, pid, "procfs.read", `{"path":"/mnt/fifo"}`, &rd)
	if string(rd.Data) != "hello from the host\n" {
		t.Errorf("whole FIFO: %q", rd.Data)
	}
	if err := <-fed; err != nil {
		t.Errorf("writer: %v", err)
	}

	fed = feedFIFO(fifo, "abcdef")
	mustCall(t, d, pid, "procfs.read", `{"path":"/mnt/fifo","len":4}`, &rd)
	if string(rd.Data) != "abcd" {
		t.Errorf("4 bytes of the FIFO: %q", rd.Data)
	}
	<-fed // the writer may see EPIPE: the reader left early

	fed = feedFIFO(fifo, "abcdef")
	err := call(t, d, pid, "procfs.read", `{"path":"/mnt/fifo","offset":2}`, nil)
	wantErrno(t, err, syscall.ESPIPE, "/mnt/fifo")
	<-fed
}

// procfs.read of a /proc/sys file reads what the target sees there, also
// when the target mounts over it after the handler has read it: a file
// bound on the sysctl, a file system on its directory or on /proc/sys
// itself, and the sysctl again once they are gone. The handler keeps a
// descriptor of /proc/sys for such reads (handler.Env.ReadProcSys); it
// must neither read past a mount nor keep what a mount replaced.
func TestProcfsReadFollowsMountsOverProcSys(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Hostname: "sysview", Files: map[string]string{"/mnt/planted": "planted\n"}})
	pid := target.PID()
	d, _ := newDispatcher(t, "")
	read := func(want, after string) {
		t.Helper()
		var rd struct {
			Data []byte `json:"data"`
		}
		mustCall(t, d, pid, "procfs.read", `{"path":"/proc/sys/kernel/hostname"}`, &rd)
		if string(rd.Data) != want {
			t.Errorf("after %s: read %q, want %q", after, rd.Data, want)
		}
	}
	in := func(script string) string {
		t.Helper()
		out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-a", "sh", "-c", script).CombinedOutput()
		if err != nil {
			t.Fatalf("in the target: %s: %v: %s", script, err, out)
		}
		return script
	}
	read("sysview\n", "the start")
	read("sysview\n", "a second read")
	read("planted\n", in("mount --bind /mnt/planted /proc/sys/kernel/hostname"))
	read("sysview\n", in("umount /proc/sys/kernel/hostname"))
	read("dir\n", in("mount -t tmpfs dir /proc/sys/kernel && echo dir > /proc/sys/kernel/hostname"))
	read("sysview\n", in("umount /proc/sys/kernel"))
	read("whole\n", in("mount -t tmpfs whole /proc/sys && mkdir /proc/sys/kernel && echo whole > /proc/sys/kernel/hostname"))
	read("sysview\n", in("umount /proc/sys"))
}
