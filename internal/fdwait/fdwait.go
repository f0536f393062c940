// Package fdwait waits, through the Go runtime's poller, for a descriptor
// that the poller itself never watches.
//
// The runtime registers every descriptor it polls for reading and writing
// at once (EPOLLIN|EPOLLOUT, edge-triggered). On a unix socket that means
// a wake-up of the process's poller thread each time the peer reads what
// this end wrote: the socket became writable again. In a request and
// answer exchange that is one wasted thread wake-up per message, and on
// a virtual machine whose idle CPUs halt, each costs tens of
// microseconds. A Waiter puts the descriptor, for the one event wanted,
// in an epoll instance of its own, and lets the runtime's poller watch
// that instance instead: the kernel filters out the other events before
// they reach the poller.
package fdwait

import (
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// A Waiter waits for one descriptor to be readable (or writable).
type Waiter struct {
	ep     *os.File
	raw    syscall.RawConn
	closed atomic.Bool

	// One Wait at a time: its attempt, called through a function made
	// once, so that a Wait allocates nothing.
	mu    sync.Mutex
	try   func() bool
	tryFn func(uintptr) bool
}

// Readable waits for fd to be readable (EPOLLIN; a hang-up counts, so
// that a read then sees the end).
func Readable(fd int) (*Waiter, error) { return newWaiter(fd, unix.EPOLLIN|unix.EPOLLRDHUP) }

// HangUp waits for fd's peer to hang up (EPOLLRDHUP, and EPOLLHUP or
// EPOLLERR, which are always reported), not for data.
func HangUp(fd int) (*Waiter, error) { return newWaiter(fd, unix.EPOLLRDHUP) }

// Writable waits for fd to be writable (EPOLLOUT). A socket is writable
// nearly always, and its instance tells the runtime's poller again each
// time the peer reads: make one for a write that would block, and close it
// once that write is made, or it wakes the process once per message.
func Writable(fd int) (*Waiter, error) { return newWaiter(fd, unix.EPOLLOUT) }

func newWaiter(fd int, events uint32) (*Waiter, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	// Level-triggered: the instance stays readable while fd is ready, so
	// no readiness is lost between an attempt and the wait after it.
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(ep)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	if err := unix.SetNonblock(ep, true); err != nil { // so that the runtime's poller takes it
		unix.Close(ep)
		return nil, err
	}
	f := os.NewFile(uintptr(ep), "fdwait")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	w := &Waiter{ep: f, raw: raw}
	w.tryFn = func(uintptr) bool { return w.try() }
	return w, nil
}

// Wait calls try until it returns true, waiting for the event between
// calls; try makes its non-blocking system call and returns false when
// that would block (EAGAIN). It returns os.ErrClosed once the Waiter is
// closed. Waits on one Waiter take turns.
func (w *Waiter) Wait(try func() bool) error {
	w.mu.Lock()
	w.try = try
	err := w.raw.Read(w.tryFn)
	w.try = nil
	w.mu.Unlock()
	if err != nil && w.closed.Load() {
		return os.ErrClosed
	}
	return err
}

// Close releases the epoll instance and wakes a Wait in progress; the
// descriptor waited for is the caller's to close.
func (w *Waiter) Close() error {
	w.closed.Store(true)
	return w.ep.Close()
}
