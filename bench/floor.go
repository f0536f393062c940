package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sandbox"
)

// The floor of a process per target: the scale phase's round-robin and
// single-target reads, made from this process to a C process in each
// target instead of through nsplug. The C process joins the target's
// namespaces and root and answers each request on its socket by reading
// the same file; it has no runtime, no framing and no encoding, so what
// it pays for requests that alternate over targets is what the machine
// charges any design that keeps a process in each target (its caches,
// TLB and CPU wake-ups), which no change to nsplug can take away.

// floorSource is the C process. It joins the target's user namespace
// first (the others may be owned by it) and its pid namespace not at all
// (that would take a fork; the file read does not depend on it).
const floorSource = `#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(int argc, char **argv) {
	const char *ns[] = {"user", "cgroup", "ipc", "uts", "net", "mnt"};
	int fds[6], root;
	char p[128], buf[4096];
	for (int i = 0; i < 6; i++) {
		struct stat a, b;
		snprintf(p, sizeof p, "/proc/%s/ns/%s", argv[1], ns[i]);
		fds[i] = open(p, O_RDONLY | O_CLOEXEC);
		snprintf(p, sizeof p, "/proc/self/ns/%s", ns[i]);
		if (fds[i] >= 0 && stat(p, &a) == 0 && fstat(fds[i], &b) == 0 && a.st_ino == b.st_ino) {
			close(fds[i]); /* already in it: setns to one's own user namespace fails */
			fds[i] = -1;
		}
	}
	snprintf(p, sizeof p, "/proc/%s/root", argv[1]);
	if ((root = open(p, O_PATH | O_DIRECTORY | O_CLOEXEC)) < 0) return 2;
	for (int i = 0; i < 6; i++)
		if (fds[i] >= 0 && setns(fds[i], 0) != 0) return 3;
	if (fchdir(root) != 0 || chroot(".") != 0) return 4;
	for (;;) {
		if (read(3, buf, sizeof buf) <= 0) return 0;
		int fd = open(argv[2], O_RDONLY | O_CLOEXEC), n = fd < 0 ? -1 : (int)read(fd, buf, sizeof buf);
		if (fd >= 0) close(fd);
		if (n <= 0) { buf[0] = '!'; n = 1; }
		if (write(3, buf, n) != n) return 5;
	}
}
`

// floorProc is one C process and this end of its socket.
type floorProc struct {
	cmd *exec.Cmd
	fd  int
}

// floorPhase measures the floor over targets (the scale phase's last
// step) and fills v: scale_floor_p50_us (round-robin over all of them)
// and scale_floor_p50_single_us (against the first), interleaved in
// blocks of 100 as the scale phase is.
func floorPhase(e *Env, targets []*sandbox.Sandbox, samples int, v map[string]any) error {
	bin := filepath.Join(e.RunDir, "floor")
	src := bin + ".c"
	if err := os.WriteFile(src, []byte(floorSource), 0o644); err != nil {
		return err
	}
	if out, err := exec.Command("cc", "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		return fmt.Errorf("floor: building it with cc: %v: %s", err, out)
	}
	var procs []floorProc
	defer func() {
		for _, p := range procs {
			unix.Close(p.fd)
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	}()
	for _, t := range targets {
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		child := os.NewFile(uintptr(pair[1]), "floor")
		cmd := exec.Command(bin, strconv.Itoa(t.PID()), File)
		cmd.ExtraFiles = []*os.File{child}
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		err = cmd.Start()
		child.Close()
		if err != nil {
			unix.Close(pair[0])
			return err
		}
		procs = append(procs, floorProc{cmd: cmd, fd: pair[0]})
	}
	req, resp := []byte("read"), make([]byte, 4096)
	ask := func(p floorProc) (time.Duration, error) {
		start := time.Now()
		if _, err := unix.Write(p.fd, req); err != nil {
			return 0, fmt.Errorf("floor: %w", err)
		}
		n, err := unix.Read(p.fd, resp)
		if err != nil {
			return 0, fmt.Errorf("floor: %w", err)
		}
		if string(resp[:n]) != Hostname+"\n" {
			return 0, fmt.Errorf("floor: read %q, want %q (the C process failed to join its target?)", resp[:n], Hostname+"\n")
		}
		return time.Since(start), nil
	}
	// Warm: each process has answered before it is measured.
	for _, p := range procs {
		if _, err := ask(p); err != nil {
			return err
		}
	}
	var rr, one []time.Duration
	const block = 100
	for k := 0; len(rr) < samples; k++ {
		for i := 0; i < block; i++ {
			d, err := ask(procs[(k*block+i)%len(procs)])
			if err != nil {
				return err
			}
			rr = append(rr, d)
		}
		for i := 0; i < block; i++ {
			d, err := ask(procs[0])
			if err != nil {
				return err
			}
			one = append(one, d)
		}
	}
	v["scale_floor_p50_us"] = us(Summarize(rr).P50)
	v["scale_floor_p50_single_us"] = us(Summarize(one).P50)
	return nil
}
