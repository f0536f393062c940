package server

import (
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/api/fast"
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
		head, proto, err := readPreface(srv)
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
