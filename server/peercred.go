package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// peerCreds are the server's transport credentials: they encrypt nothing
// (the socket is local) but hand gRPC who connected, as the kernel told
// the mux once per accepted connection (peerCaller). The answer is what
// the peer's process was when it called connect(2) (SO_PEERCRED,
// SO_PEERGROUPS), whatever it does afterwards (setuid, passing the socket
// on): a client cannot name itself.
type peerCreds struct{}

// callerInfo is the credentials.AuthInfo of a connection: its Caller.
type callerInfo struct {
	credentials.CommonAuthInfo
	caller Caller
}

func (callerInfo) AuthType() string { return "peercred" }

// ServerHandshake takes the Caller the mux read when it accepted conn.
func (peerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	sc, ok := conn.(*sortedConn)
	if !ok {
		conn.Close()
		return nil, nil, fmt.Errorf("nsplug serves the connections of its own listener only, not a %T", conn)
	}
	return conn, callerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, caller: sc.caller}, nil
}

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peerCreds are server credentials")
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (p peerCreds) Clone() credentials.TransportCredentials { return p }

func (peerCreds) OverrideServerName(string) error { return nil }

// peerCaller reads the kernel's credentials of the peer of conn.
func peerCaller(conn *net.UnixConn) (Caller, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return Caller{}, err
	}
	var c Caller
	var opErr error
	err = raw.Control(func(fd uintptr) {
		var cred *unix.Ucred
		if cred, opErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); opErr != nil {
			opErr = fmt.Errorf("SO_PEERCRED: %w", opErr)
			return
		}
		c = Caller{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}
		if c.Groups, opErr = peerGroups(int(fd)); opErr != nil {
			opErr = fmt.Errorf("SO_PEERGROUPS: %w", opErr)
		}
	})
	if err == nil {
		err = opErr
	}
	return c, err
}

// peerGroups reads SO_PEERGROUPS, the peer's supplementary groups at
// connect(2) (Linux ≥ 4.13). The kernel answers ERANGE with the length it
// needs when the buffer is too small.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 32)
	for {
		size := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == 0:
			return buf[:size/4], nil
		case errno == unix.ERANGE && int(size/4) > len(buf):
			buf = make([]uint32, size/4)
		default:
			return nil, errno
		}
	}
}

// withCaller is the interceptor that hands each call the Caller of its
// connection (CallerFrom), and refuses a call that has none.
func withCaller(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := callerContext(ctx)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// withCallerStream is withCaller for streaming calls (health's Watch).
func withCallerStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if _, err := callerContext(ss.Context()); err != nil {
		return err
	}
	return handler(srv, ss)
}

func callerContext(ctx context.Context) (context.Context, error) {
	if p, ok := peer.FromContext(ctx); ok {
		if info, ok := p.AuthInfo.(callerInfo); ok {
			return WithCaller(ctx, info.caller), nil
		}
	}
	return nil, status.Error(codes.Unauthenticated, "nsplug: the connection has no kernel credentials (not accepted by the daemon's listener)")
}
