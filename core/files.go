package core

import (
	"context"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sdk"
)

// fileInbox receives the file descriptors plugins hand back (gRPC cannot
// carry them). Each arrives in one SCM_RIGHTS message on a per-instance
// socketpair, tagged with its request id, before the response that
// announces them; the caller of that request takes them. Received fds are
// close-on-exec, so they never reach another plugin or target.
type fileInbox struct {
	conn *net.UnixConn
	mu   sync.Mutex
	mail map[string]*fileSlot
	dead bool
	done chan struct{}
}

type fileSlot struct {
	arrived chan struct{}
	files   []*os.File
}

// newFileInbox makes the socketpair: the plugin's end goes to the plugin
// (nsexec fd 6), the inbox keeps the other.
func newFileInbox() (inbox *fileInbox, pluginEnd *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	ours := os.NewFile(uintptr(fds[0]), "files")
	defer ours.Close() // FileConn dups it
	c, err := net.FileConn(ours)
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	inbox = &fileInbox{conn: c.(*net.UnixConn), mail: make(map[string]*fileSlot), done: make(chan struct{})}
	go inbox.run()
	return inbox, os.NewFile(uintptr(fds[1]), "plugin-files"), nil
}

func (b *fileInbox) slot(id string) *fileSlot {
	s := b.mail[id]
	if s == nil {
		s = &fileSlot{arrived: make(chan struct{})}
		b.mail[id] = s
	}
	return s
}

func (b *fileInbox) run() {
	defer close(b.done)
	buf := make([]byte, 128)
	oob := make([]byte, unix.CmsgSpace(sdk.MaxFiles*4))
	for {
		n, oobn, flags, _, err := b.conn.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 && oobn == 0 {
			break
		}
		var files []*os.File
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				fds, _ := unix.ParseUnixRights(&m)
				for _, fd := range fds {
					files = append(files, os.NewFile(uintptr(fd), "from-plugin"))
				}
			}
		}
		b.mu.Lock()
		s := b.slot(string(buf[:n]))
		if flags&unix.MSG_CTRUNC != 0 || s.files != nil {
			// Truncated or a second message for one request: refuse
			// them all rather than guess.
			closeFiles(files)
			files = []*os.File{}
		}
		select {
		case <-s.arrived:
			closeFiles(files)
		default:
			s.files = files
			close(s.arrived)
		}
		b.mu.Unlock()
	}
	b.mu.Lock()
	b.dead = true
	for id, s := range b.mail {
		closeFiles(s.files)
		delete(b.mail, id)
	}
	b.mu.Unlock()
}

// take waits for the n files of request id.
func (b *fileInbox) take(ctx context.Context, id string, n int) ([]*os.File, error) {
	b.mu.Lock()
	if b.dead {
		b.mu.Unlock()
		return nil, errorf(syscall.EIO, "the plugin's file channel is closed")
	}
	s := b.slot(id)
	b.mu.Unlock()
	select {
	case <-s.arrived:
	case <-b.done:
	case <-ctx.Done():
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mail[id] == s {
		delete(b.mail, id)
	}
	select {
	case <-s.arrived:
	default:
		return nil, errorf(syscall.EIO, "the files of request %s never arrived", id)
	}
	if len(s.files) != n {
		closeFiles(s.files)
		return nil, errorf(syscall.EIO, "request %s: the plugin announced %d files and sent %d", id, n, len(s.files))
	}
	return s.files, nil
}

// close stops the inbox and closes every file nobody took.
func (b *fileInbox) close() {
	b.conn.Close()
	<-b.done
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
