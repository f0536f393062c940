package server

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/api/fast"
	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/wire"
)

func unixPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]*net.UnixConn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "pair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
		t.Cleanup(func() { c.Close() })
	}
	return conns[0], conns[1]
}

// The first bytes sort a connection: the fast path's preface whole (and
// not a byte past it), an HTTP/2 preface from its first byte (the bytes
// read are read again by gRPC), anything else refused.
func TestReadPreface(t *testing.T) {
	for _, c := range []struct {
		name, proto string
		writes      []string
	}{
		{name: "fast", writes: []string{fast.Preface + "next"}, proto: "fast"},
		{name: "fast, byte by byte", writes: []string{"N", "SPLUG", "-FAST/1\n", "next"}, proto: "fast"},
		{name: "grpc", writes: []string{h2Preface}, proto: "grpc"},
		{name: "other", writes: []string{"GET / HTTP/1.1\r\n"}},
		{name: "fast, then not", writes: []string{"NSPLUG-SLOW/1\n"}},
	} {
		client, srv := unixPair(t)
		srv.SetDeadline(time.Now().Add(10 * time.Second))
		for _, w := range c.writes {
			client.Write([]byte(w))
		}
		head, proto, err := readPreface(srv, prefaceTimeout)
		if proto != c.proto || (c.proto == "") != (err != nil) {
			t.Errorf("%s: %q %q %v", c.name, proto, head, err)
			continue
		}
		switch proto {
		case "fast": // what follows the preface is still to be read
			rest := make([]byte, 4)
			if _, err := io.ReadFull(srv, rest); err != nil || string(rest) != "next" {
				t.Errorf("%s: after the preface: %q %v", c.name, rest, err)
			}
		case "grpc":
			sc := &sortedConn{UnixConn: srv, head: head}
			got := make([]byte, len(h2Preface))
			if _, err := io.ReadFull(sc, got); err != nil || string(got) != h2Preface {
				t.Errorf("%s: gRPC reads %q %v", c.name, got, err)
			}
		}
	}
}

// A non-root user holds at most MaxConnsPerUser connections at once: the
// ones past it are told EMFILE, naming the limit, and closed, and a closed
// connection frees its place. Root is not limited.
// muxAt is a mux on a socket that every uid may reach, whose served
// connections wait for hold, reporting their uid on served; dialAs makes
// n connections on a thread that is uid to the kernel.
func muxAt(t *testing.T) (m *mux, served chan uint32, hold chan struct{}, dialAs func(uid uintptr, n int) []*net.UnixConn) {
	t.Helper()
	dir, err := os.MkdirTemp("", "nsplug-mux-") // t.TempDir's parent is 0700: uid 4242 could not reach it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "api.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o777); err != nil {
		t.Fatal(err)
	}
	served = make(chan uint32, 4*MaxConnsPerUser)
	hold = make(chan struct{})
	m = newMux(l, hclog.NewNullLogger(), func(c *net.UnixConn, caller Caller) {
		served <- caller.UID
		<-hold
		c.Close()
	})
	t.Cleanup(func() { m.Close() })
	dialAs = func(uid uintptr, n int) []*net.UnixConn {
		got := make(chan []*net.UnixConn, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			var conns []*net.UnixConn
			if uid != 0 {
				if _, _, errno := unix.RawSyscall(unix.SYS_SETRESUID, uid, uid, uid); errno != 0 {
					t.Error(errno)
					got <- nil
					return
				}
			}
			for i := 0; i < n; i++ {
				c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
				if err != nil {
					t.Error(err)
					break
				}
				conns = append(conns, c)
			}
			got <- conns
		}()
		return <-got
	}
	return m, served, hold, dialAs
}

func TestConnectionsPerUserAreBounded(t *testing.T) {
	m, served, hold, dialAs := muxAt(t)
	call := func(c *net.UnixConn) error {
		_, _, err := fast.NewClient(c).Call(context.Background(), &apiv1.CallRequest{Type: "procfs.read"})
		return err
	}

	const extra = 3
	conns := dialAs(4242, MaxConnsPerUser+extra)
	if len(conns) != MaxConnsPerUser+extra {
		t.Fatalf("dialled %d", len(conns))
	}
	errs := make(chan error, len(conns))
	for _, c := range conns {
		go func() { errs <- call(c) }()
	}
	for i := 0; i < extra; i++ {
		select {
		case err := <-errs:
			if e := wire.AsError(err); e == nil || e.Errno != syscall.EMFILE || !strings.Contains(e.Message, "uid 4242") || !strings.Contains(e.Message, strconv.Itoa(MaxConnsPerUser)) {
				t.Errorf("a connection past the limit: %v, want EMFILE naming uid 4242 and the limit", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the connections past the limit were not refused")
		}
	}
	for i := 0; i < MaxConnsPerUser; i++ {
		select {
		case <-served:
		case <-time.After(20 * time.Second):
			t.Fatalf("only %d of the first %d connections were served", i, MaxConnsPerUser)
		}
	}
	// Root is not counted: as many more again get through.
	root := dialAs(0, MaxConnsPerUser+extra)
	for _, c := range root {
		go call(c)
	}
	for i := range root {
		select {
		case uid := <-served:
			if uid != 0 {
				t.Errorf("served uid %d", uid)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("only %d of root's %d connections were served", i, len(root))
		}
	}
	// Closing the user's connections frees their places.
	for _, c := range conns {
		c.Close()
	}
	close(hold)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		m.mu.Lock()
		n := m.perUID[4242]
		m.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("uid 4242 still counted for %d connections after closing them all", n)
		}
	}
	again := dialAs(4242, 1)
	go call(again[0])
	select {
	case <-served:
	case <-time.After(20 * time.Second):
		t.Fatal("a new connection was not served after the others closed")
	}
	again[0].Close()
	for _, c := range root {
		c.Close()
	}
}

// Closing the mux (as Shutdown's GracefulStop does) is no failure: both
// gRPC servers' Accept return net.ErrClosed and no failure is recorded; a
// failing accept(2) is one, which both return.
func TestMuxCloseIsNoFailure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	m := newMux(l, hclog.NewNullLogger(), func(c *net.UnixConn, _ Caller) { c.Close() })
	errs := make(chan error, 2)
	go func() { _, err := m.Accept(); errs <- err }()
	go func() { _, err := m.users().Accept(); errs <- err }()
	m.Close()
	for range 2 {
		if err := <-errs; !errors.Is(err, net.ErrClosed) {
			t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
		}
	}
	if err := m.failure(); err != nil {
		t.Errorf("failure after Close: %v, want none", err)
	}
}

// Connections are counted before they send a byte. A uid's connections
// past MaxConnsPerUser and MaxRefusalsPerUser are closed at once, unread
// (before, each was held for prefaceTimeout, and one uid connecting over
// and over held all of the daemon's fds); and past the bound of all
// users' connections, another uid's are closed at once too, while root's
// are served.
func TestUnreadConnectionsAreBounded(t *testing.T) {
	m, served, hold, dialAs := muxAt(t)
	defer close(hold)
	m.mu.Lock()
	m.maxUser = MaxConnsPerUser + MaxRefusalsPerUser + 4
	m.mu.Unlock()

	const past = 20
	conns := dialAs(4242, MaxConnsPerUser+MaxRefusalsPerUser+past)
	closedAtOnce := func(conns []*net.UnixConn) int {
		n := 0
		for _, c := range conns {
			c.SetReadDeadline(time.Now().Add(prefaceTimeout / 3))
			if _, err := c.Read(make([]byte, 1)); err == io.EOF {
				n++
			}
		}
		return n
	}
	if n := closedAtOnce(conns[MaxConnsPerUser+MaxRefusalsPerUser:]); n != past {
		t.Errorf("%d of uid 4242's %d connections past %d were closed at once, want all", n, past, MaxConnsPerUser+MaxRefusalsPerUser)
	}
	m.mu.Lock()
	held, refusing, all := m.perUID[4242], m.refused[4242], m.userConns
	m.mu.Unlock()
	if held != MaxConnsPerUser || refusing != MaxRefusalsPerUser || all != MaxConnsPerUser+MaxRefusalsPerUser {
		t.Errorf("counted %d connections of uid 4242 and %d being refused, %d of all users; want %d, %d and their sum", held, refusing, all, MaxConnsPerUser, MaxRefusalsPerUser)
	}

	// Another uid: 4 more fit in the bound of all users.
	other := dialAs(4243, 10)
	if n := closedAtOnce(other[4:]); n != 6 {
		t.Errorf("%d of uid 4243's 6 connections past the bound of all users were closed at once, want 6", n)
	}
	for _, c := range dialAs(0, 5) {
		go fast.NewClient(c).Call(context.Background(), &apiv1.CallRequest{Type: "procfs.read"})
	}
	for i := 0; i < 5; i++ {
		select {
		case uid := <-served:
			if uid != 0 {
				t.Errorf("served uid %d, which sent nothing", uid)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("only %d of root's 5 connections were served past the bound of users'", i)
		}
	}
	for _, c := range append(conns, other...) {
		c.Close()
	}
}
