package fdwait

import (
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func socketpair(t *testing.T) (a, b int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

// waiter is a Waiter (Readable or Writable) on a, one end of a new
// socketpair whose other end is b.
func waiter(t *testing.T, make func(int) (*Waiter, error)) (w *Waiter, a, b int) {
	t.Helper()
	a, b = socketpair(t)
	w, err := make(a)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w, a, b
}

// waitRead reads one message from fd through w, in the background.
func waitRead(w *Waiter, fd int) <-chan error {
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 64)
		var rerr error
		err := w.Wait(func() bool {
			_, rerr = unix.Read(fd, buf)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		done <- err
	}()
	return done
}

func TestReadableWakesForDataAndNotBefore(t *testing.T) {
	w, a, b := waiter(t, Readable)
	done := waitRead(w, a)
	// What a wrote being read by b makes a writable, not readable: the
	// wait goes on.
	if _, err := unix.Write(a, []byte("to b")); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Read(b, make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("the wait ended (%v) with nothing to read", err)
	case <-time.After(50 * time.Millisecond):
	}
	if _, err := unix.Write(b, []byte("to a")); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("reading what b sent: %v", err)
	}
}

func TestReadableWakesWhenThePeerCloses(t *testing.T) {
	w, a, b := waiter(t, Readable)
	done := waitRead(w, a)
	unix.Shutdown(b, unix.SHUT_RDWR)
	if err := ended(t, done, "the peer's hang-up"); err != nil {
		t.Fatalf("a read after the peer's end: %v, want end of file", err)
	}
}

// ended is the wait's result, once what (happened) ended it.
func ended(t *testing.T, done <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not end the wait", what)
		return nil
	}
}

func TestCloseEndsAWait(t *testing.T) {
	w, a, _ := waiter(t, Readable)
	done := waitRead(w, a)
	time.Sleep(10 * time.Millisecond)
	w.Close()
	if err := ended(t, done, "Close"); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("a wait on a closed Waiter returned %v, want os.ErrClosed", err)
	}
}

func TestWritableWakesWhenThePeerReads(t *testing.T) {
	w, a, b := waiter(t, Writable)
	msg := make([]byte, 4096)
	for { // fill a's send buffer
		if _, err := unix.Write(a, msg); err == unix.EAGAIN {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() {
		var werr error
		err := w.Wait(func() bool {
			_, werr = unix.Write(a, msg)
			return werr != unix.EAGAIN
		})
		if err == nil {
			err = werr
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("a write to a full socket ended (%v) before the peer read", err)
	case <-time.After(50 * time.Millisecond):
	}
	buf := make([]byte, 4096)
	for i := 0; i < 64; i++ {
		unix.Read(b, buf)
	}
	if err := ended(t, done, "the peer's reads"); err != nil {
		t.Fatal(err)
	}
}
