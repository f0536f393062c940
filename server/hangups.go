package server

import (
	"errors"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// hangups tells which fast-path clients hung up, so that their requests
// end: one epoll instance, where each connection is registered for
// EPOLLRDHUP alone (never for its data: a request costs it nothing), read
// by one goroutine that the runtime's poller wakes when the instance has
// events. Watching each call instead, with a goroutine or a timer, cost a
// warm call a fifth to a third of its time on a loaded 2-CPU machine
// (goroutine hand-offs; a timer wakes the poller's thread).
type hangups struct {
	mu     sync.Mutex
	ep     *os.File // the epoll instance, made at the first add
	err    error    // making it failed
	next   uint64
	conns  map[uint64]*fastConn
	hangUp func(*fastConn)
	done   chan struct{} // closed when run returns
}

// open makes the epoll instance (once: the daemon holds its fd from the
// start, not from its first fast-path client); hangUp is called (once per
// connection) when a client closes its end.
func (h *hangups) open(hangUp func(*fastConn)) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ep == nil && h.err == nil {
		h.err = h.start(hangUp)
	}
	return h.err
}

// add watches fc until remove.
func (h *hangups) add(fc *fastConn) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ep == nil {
		return errors.New("no epoll instance (hangups.open)")
	}
	h.next++
	key := h.next
	ev := unix.EpollEvent{Events: unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(key), Pad: int32(key >> 32)}
	if err := h.ctl(fc, unix.EPOLL_CTL_ADD, &ev); err != nil {
		return err
	}
	fc.watch = key
	h.conns[key] = fc
	return nil
}

// remove ends the watch of fc (before fc's connection is closed).
func (h *hangups) remove(fc *fastConn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if fc.watch == 0 {
		return
	}
	delete(h.conns, fc.watch)
	fc.watch = 0
	h.ctl(fc, unix.EPOLL_CTL_DEL, nil)
}

func (h *hangups) ctl(fc *fastConn, op int, ev *unix.EpollEvent) error {
	raw, err := fc.conn.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	if err := raw.Control(func(fd uintptr) { opErr = unix.EpollCtl(int(h.ep.Fd()), op, int(fd), ev) }); err != nil {
		return err
	}
	return opErr
}

func (h *hangups) start(hangUp func(*fastConn)) error {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil { // so that the runtime's poller watches it
		unix.Close(fd)
		return err
	}
	h.ep, h.conns, h.hangUp, h.done = os.NewFile(uintptr(fd), "hangups"), make(map[uint64]*fastConn), hangUp, make(chan struct{})
	raw, err := h.ep.SyscallConn()
	if err != nil {
		h.ep.Close()
		return err
	}
	go h.run(raw)
	return nil
}

// run reads the instance's events until close.
func (h *hangups) run(raw interface {
	Read(func(uintptr) bool) error
}) {
	defer close(h.done)
	events := make([]unix.EpollEvent, 64)
	raw.Read(func(fd uintptr) bool {
		for {
			n, err := unix.EpollWait(int(fd), events, 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n == 0 {
				return false // until the poller says there are events
			}
			for _, ev := range events[:n] {
				key := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
				h.mu.Lock()
				fc := h.conns[key]
				h.mu.Unlock()
				if fc != nil {
					h.hangUp(fc)
				}
			}
		}
	})
}

// close ends the watching; every connection was removed.
func (h *hangups) close() {
	h.mu.Lock()
	ep, done := h.ep, h.done
	h.mu.Unlock()
	if ep != nil {
		ep.Close()
		<-done
	}
}
