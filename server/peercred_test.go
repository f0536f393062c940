package server

import (
	"context"
	"net"
	"os"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// The Caller of a connection is what the kernel says its peer was when
// the connection was made: here a socket pair made by a thread that took
// uid 65534, gid 3000 and groups 1000, 2000.
func TestPeerCallerFromTheKernel(t *testing.T) {
	groups := []uint32{1000, 2000}
	fds := socketPairAs(t, setgroups(groups), setres(unix.SYS_SETRESGID, 3000), setres(unix.SYS_SETRESUID, 65534))
	defer unix.Close(fds[1])
	f := os.NewFile(uintptr(fds[0]), "peer")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	c, err := peerCaller(fc.(*net.UnixConn))
	if err != nil {
		t.Fatal(err)
	}
	if c.UID != 65534 || c.GID != 3000 || !slices.Equal(c.Groups, groups) || c.PID != int32(os.Getpid()) {
		t.Errorf("caller %+v", c)
	}
	if c.Root() || !c.InGroup(2000) || !c.InGroup(3000) || c.InGroup(0) {
		t.Errorf("caller %+v: Root or InGroup wrong", c)
	}
}

// More groups than the first buffer holds: the kernel says how many.
func TestPeerGroupsGrow(t *testing.T) {
	want := make([]uint32, 100)
	for i := range want {
		want[i] = uint32(5000 + i)
	}
	fds := socketPairAs(t, setgroups(want))
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	got, err := peerGroups(fds[0])
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("groups %v %v", got, err)
	}
}

// setgroups is setgroups(2) for this thread alone (the libc call would
// set every thread's). The pointer is made in the call's own argument
// list, where the compiler keeps groups alive and in place: a uintptr kept
// any longer could outlive the slice or point where it has moved from.
func setgroups(groups []uint32) func() syscall.Errno {
	return func() syscall.Errno {
		_, _, errno := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(unsafe.Pointer(&groups[0])), 0)
		return errno
	}
}

// setres is setresuid(2) or setresgid(2) to id, for this thread alone.
func setres(trap uintptr, id uintptr) func() syscall.Errno {
	return func() syscall.Errno {
		_, _, errno := unix.RawSyscall(trap, id, id, id)
		return errno
	}
}

// socketPairAs makes a socket pair on a thread that first makes the given
// raw system calls (credentials are per thread to the kernel, so the rest
// of the test process keeps its own). The thread is locked and never
// unlocked: it ends with its goroutine.
func socketPairAs(t *testing.T, calls ...func() syscall.Errno) [2]int {
	t.Helper()
	type result struct {
		fds [2]int
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		for _, call := range calls {
			if errno := call(); errno != 0 {
				done <- result{err: errno}
				return
			}
		}
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		done <- result{fds, err}
	}()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.fds
}

// A call whose connection did not come through the daemon's credentials
// has no Caller, and is refused.
func TestCallWithoutCallerRefused(t *testing.T) {
	_, err := callerContext(context.Background())
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("no caller: %v", err)
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: callerInfo{caller: Caller{UID: 7}}})
	if ctx, err = callerContext(ctx); err != nil {
		t.Fatal(err)
	}
	if c, ok := CallerFrom(ctx); !ok || c.UID != 7 {
		t.Errorf("caller %+v %v", c, ok)
	}
}
