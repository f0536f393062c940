package server

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/api/fast"
	"github.com/nsplug/nsplug/wire"
)

// The daemon's socket carries two protocols, told apart by a connection's
// first bytes: gRPC (HTTP/2, whose client preface starts "PRI * HTTP/2.0")
// and the fast path (api/fast, which starts with fast.Preface). The mux
// reads them, then hands the connection to gRPC (which reads them again)
// or serves the fast path on it; anything else is closed. Either way the
// caller is the kernel's answer for the accepted connection (peerCaller),
// asked once, before a byte is read.

// h2Preface is the start of an HTTP/2 client's connection preface.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// prefaceTimeout bounds the wait for a new connection's first bytes: a
// client that connects and sends nothing is dropped then.
//
// A local client sends its preface as soon as it has connected (gRPC's
// and the fast path's alike).
const prefaceTimeout = 3 * time.Second

// MaxConnsPerUser bounds the connections one non-root uid holds open at
// once, over both protocols: each may hold requests of up to
// server.max_user_request_bytes being read, and a user allowed on the
// socket is not to exhaust the daemon's memory or fds by opening more. A
// connection past it is told so (the fast path gets an EMFILE status
// naming the limit; gRPC is closed before its handshake) and closed. Root
// is not limited.
const MaxConnsPerUser = 32

// Connections are counted the moment they are accepted, before their
// first bytes come: the wait for them (prefaceTimeout) is otherwise a way
// to hold the daemon's fds. Measured before: uid 65534, connecting over
// and over and sending nothing, held all 20,000 of the daemon's fds
// within 5 seconds, and root's `nsplug call --addr` failed with EAGAIN.
//
// Past MaxConnsPerUser, a uid's next MaxRefusalsPerUser connections wait
// at most refusalTimeout for their first bytes, so that a client is told
// why (EMFILE on the fast path); any more are closed at once, unread.
// And the connections of all uids but root together, a user's
// subordinate uids being uids of their own, are at most a quarter of the
// daemon's fd limit and MaxUserConns (userConnsLimit); past that, they
// are closed at once.
const MaxRefusalsPerUser = 8

const refusalTimeout = time.Second

// MaxStreamsPerConn bounds the gRPC calls one connection has in flight at
// once (HTTP/2 streams; the fast path serves one call at a time): each may
// hold a request of up to fast.MaxMessage (root's) or
// server.max_user_request_bytes (anyone else's). Calls past it wait in the
// client until one ends.
const MaxStreamsPerConn = 16

// mux is the listener gRPC serves (Accept returns its connections only);
// it accepts on the daemon's socket and sorts the connections.
type mux struct {
	l    net.Listener
	log  hclog.Logger
	fast func(*net.UnixConn, Caller) // serves a fast-path connection, in its own goroutine

	conns chan net.Conn // gRPC's, sorted: root's
	user  chan net.Conn // and every other uid's (users)
	errs  chan error    // from accept(2), for gRPC's Serve
	done  chan struct{}
	once  sync.Once

	mu        sync.Mutex
	closed    bool
	sorting   map[*net.UnixConn]struct{} // connections whose first bytes are awaited
	perUID    map[uint32]int             // open connections of each non-root uid
	refused   map[uint32]int             // connections of each non-root uid past MaxConnsPerUser, being refused
	userConns int                        // open connections of all non-root uids
	maxUser   int                        // the bound of userConns (userConnsLimit)
	dropped   int                        // refusals not logged since the last warning
	warned    time.Time                  // of the last warning of a refusal
	failed    error                      // accept(2)'s error that ended the mux, if one did
}

func newMux(l net.Listener, log hclog.Logger, fast func(*net.UnixConn, Caller)) *mux {
	m := &mux{l: l, log: log, fast: fast, conns: make(chan net.Conn), user: make(chan net.Conn), errs: make(chan error),
		done: make(chan struct{}), sorting: make(map[*net.UnixConn]struct{}), perUID: make(map[uint32]int),
		refused: make(map[uint32]int), maxUser: userConnsLimit()}
	go m.acceptLoop()
	return m
}

func (m *mux) acceptLoop() {
	for {
		c, err := m.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || !isTemporary(err) {
				// Both gRPC servers stop: their Accept returns a failure,
				// or net.ErrClosed once the listener is closed.
				if !errors.Is(err, net.ErrClosed) {
					m.mu.Lock()
					m.failed = err
					m.mu.Unlock()
				}
				m.Close()
				return
			}
			select {
			case m.errs <- err: // one gRPC server backs off before it asks again
			case <-m.done:
				return
			}
			continue
		}
		uc, ok := c.(*net.UnixConn)
		if !ok {
			m.log.Debug("api: closed a connection that is not on a unix socket", "network", c.RemoteAddr().Network())
			c.Close()
			continue
		}
		caller, err := peerCaller(uc)
		if err != nil {
			m.log.Debug("api: closed a connection without kernel credentials", "error", err)
			uc.Close()
			continue
		}
		v := m.admit(caller)
		if v == dropped {
			uc.Close()
			continue
		}
		if !m.track(uc) {
			m.release(caller, v)
			uc.Close()
			return
		}
		go m.sort(uc, caller, v)
	}
}

// MaxUserConns bounds the connections of all non-root uids together,
// with a quarter of the fd limit (userConnsLimit): each may hold a
// request of up to server.max_user_request_bytes being read.
const MaxUserConns = 1024

// userConnsLimit is the bound of all non-root connections: a quarter of
// this process's fd limit, at least 4 × MaxConnsPerUser, at most
// MaxUserConns.
func userConnsLimit() int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur > 1<<24 {
		return MaxUserConns
	}
	return min(max(int(lim.Cur/4), 4*MaxConnsPerUser), MaxUserConns)
}

// isTemporary reports a failure of accept(2) that passes (EMFILE, ...), as
// gRPC's Serve judges it.
func isTemporary(err error) bool {
	t, ok := err.(interface{ Temporary() bool })
	return ok && t.Temporary()
}

func (m *mux) track(c *net.UnixConn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false
	}
	m.sorting[c] = struct{}{}
	return true
}

// sorted ends the wait for c's first bytes; false when the mux is closed
// (and c with it).
func (m *mux) sorted(c *net.UnixConn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.sorting, c)
	return !m.closed
}

// sort reads c's first bytes and hands it on, or refuses it (v).
func (m *mux) sort(c *net.UnixConn, caller Caller, v verdict) {
	release := sync.OnceFunc(func() { m.release(caller, v) })
	wait := prefaceTimeout
	if v == refused {
		wait = refusalTimeout
	}
	head, proto, err := readPreface(c, wait)
	if !m.sorted(c) {
		release()
		c.Close()
		return
	}
	switch {
	case err != nil:
		release()
		m.log.Debug("api: closed a connection before its protocol was known", "caller_uid", caller.UID, "caller_pid", caller.PID, "error", err)
		c.Close()
	case v == refused:
		release()
		if proto == "fast" {
			refuseFast(c, wire.Errorf(syscall.EMFILE, "uid %d has %d connections open to the nsplug daemon, the most a user may (server.MaxConnsPerUser); close some", caller.UID, MaxConnsPerUser))
		}
		c.Close()
	case proto == "fast":
		m.fast(c, caller)
		release()
	default:
		to := m.conns
		if !caller.Root() {
			to = m.user
		}
		select {
		case to <- &sortedConn{UnixConn: c, head: head, caller: caller, release: release}:
		case <-m.done:
			release()
			c.Close()
		}
	}
}

// A verdict is what admit decides of a new connection.
type verdict int

const (
	admitted verdict = iota // served
	refused                 // told why, then closed
	dropped                 // closed at once, unread
)

// admit counts a new connection of the caller's and decides its fate (see
// MaxRefusalsPerUser); release uncounts what admit counted. Root's
// connections are always admitted, and not counted.
func (m *mux) admit(c Caller) verdict {
	if c.Root() {
		return admitted
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.perUID[c.UID]
	switch {
	case m.userConns >= m.maxUser:
		m.warnLocked("api: closed a connection unread: the connections of users other than root hold the most fds they may", "caller_uid", c.UID, "user_connections", m.userConns)
		return dropped
	case n < MaxConnsPerUser:
		m.perUID[c.UID]++
		m.userConns++
		return admitted
	case m.refused[c.UID] < MaxRefusalsPerUser:
		m.warnLocked("api: refused a connection: the caller's uid holds the most it may", "caller_uid", c.UID, "caller_pid", c.PID, "max_conns_per_user", MaxConnsPerUser)
		m.refused[c.UID]++
		m.userConns++
		return refused
	default:
		m.warnLocked("api: closed a connection unread: the caller's uid holds the most it may, and is being refused others", "caller_uid", c.UID, "max_conns_per_user", MaxConnsPerUser)
		return dropped
	}
}

// warnLocked logs a refusal, at most once a second: a client can make
// them as fast as it connects. The connections refused meanwhile are
// counted in the next line.
func (m *mux) warnLocked(msg string, args ...any) {
	now := time.Now()
	if now.Sub(m.warned) < time.Second {
		m.dropped++
		return
	}
	if m.dropped > 0 {
		args = append(args, "refused_since_last_warning", m.dropped)
	}
	m.log.Warn(msg, args...)
	m.warned, m.dropped = now, 0
}

func (m *mux) release(c Caller, v verdict) {
	if c.Root() || v == dropped {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.userConns--
	counts := m.perUID
	if v == refused {
		counts = m.refused
	}
	if counts[c.UID]--; counts[c.UID] <= 0 {
		delete(counts, c.UID)
	}
}

// readPreface reads c's first bytes, for at most wait, until
// they tell the protocol: "fast" once fast.Preface has come whole, "grpc"
// at the first byte that starts an HTTP/2 preface (gRPC checks the rest);
// head is what was read. Anything else is an error.
func readPreface(c *net.UnixConn, wait time.Duration) (head []byte, proto string, err error) {
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return nil, "", err
	}
	buf := make([]byte, len(fast.Preface))
	n := 0
	for {
		k, rerr := c.Read(buf[n:]) // never past fast.Preface: what follows is the fast path's
		n += k
		got := string(buf[:n])
		switch {
		case got == fast.Preface:
			return nil, "fast", c.SetReadDeadline(time.Time{})
		case n > 0 && strings.HasPrefix(h2Preface, got[:1]):
			return buf[:n], "grpc", c.SetReadDeadline(time.Time{})
		case !strings.HasPrefix(fast.Preface, got):
			return nil, "", errors.New("unknown protocol: first bytes " + strconv.Quote(got))
		case rerr != nil:
			return nil, "", rerr
		}
	}
}

// Accept returns the next gRPC connection of root's.
func (m *mux) Accept() (net.Conn, error) { return m.accept(m.conns) }

func (m *mux) accept(conns chan net.Conn) (net.Conn, error) {
	select {
	case c := <-conns:
		return c, nil
	case err := <-m.errs:
		return nil, err
	case <-m.done:
		if err := m.failure(); err != nil {
			return nil, err
		}
		return nil, net.ErrClosed
	}
}

// failure is the error of accept(2) that ended the mux; nil when it was
// closed.
func (m *mux) failure() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.failed
}

// users is the listener of the gRPC connections of every uid but root's;
// closing it closes the mux.
func (m *mux) users() net.Listener { return userListener{m} }

type userListener struct{ *mux }

func (u userListener) Accept() (net.Conn, error) { return u.accept(u.user) }

// Close stops accepting (closing the socket, which removes it) and closes
// the connections whose first bytes are still awaited. Connections
// already sorted are their protocol's to end.
func (m *mux) Close() error {
	var err error
	m.once.Do(func() {
		m.mu.Lock()
		m.closed = true
		for c := range m.sorting {
			c.Close()
		}
		m.mu.Unlock()
		close(m.done)
		err = m.l.Close()
	})
	return err
}

func (m *mux) Addr() net.Addr { return m.l.Addr() }

// sortedConn is a gRPC connection whose first bytes the mux read: they are
// read again first. It carries its Caller to peerCreds.
type sortedConn struct {
	*net.UnixConn
	head    []byte
	caller  Caller
	release func() // uncounts it for its uid (mux.admit); idempotent
}

// Close closes the connection and uncounts it.
func (c *sortedConn) Close() error {
	if c.release != nil {
		c.release()
	}
	return c.UnixConn.Close()
}

func (c *sortedConn) Read(p []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.UnixConn.Read(p)
}
