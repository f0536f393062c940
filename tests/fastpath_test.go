package tests

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nsplug/nsplug/api/fast"
	apiv1 "github.com/nsplug/nsplug/api/v1"
	apisvc "github.com/nsplug/nsplug/api/v1/service"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/server"
	"github.com/nsplug/nsplug/wire"
)

// The fast path (api/fast) on the daemon's socket, beside gRPC: from the
// outside, with connections of root and of another user, and with bytes
// written by hand where a client would not write them.

// dialSocket is a plain connection to the daemon's socket.
func dialSocket(t *testing.T, d *daemon) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: d.socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// connectAs is a connection to the daemon's socket made by a process of
// cred (python3, which hands it over with SCM_RIGHTS): the daemon's caller
// is that user.
func connectAs(t *testing.T, cred *syscall.Credential, socket string) *net.UnixConn {
	t.Helper()
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours, theirs := os.NewFile(uintptr(pair[0]), "ours"), os.NewFile(uintptr(pair[1]), "theirs")
	defer ours.Close()
	const script = `import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
socket.send_fds(socket.socket(fileno=3), [b"c"], [s.fileno()])
`
	cmd := execAs(cred, "/usr/bin/python3", "-c", script, socket)
	cmd.ExtraFiles = []*os.File{theirs}
	out, err := cmd.CombinedOutput()
	theirs.Close()
	if err != nil {
		t.Fatalf("connecting as uid %d: %v %s", cred.Uid, err, out)
	}
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(pair[0], buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("no connection handed over: %v", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("no connection handed over: %v", err)
	}
	f := os.NewFile(uintptr(fds[0]), "conn")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UnixConn)
}

// grpcOver is a gRPC client on conn alone.
func grpcOver(t *testing.T, conn net.Conn) apisvc.NsplugClient {
	t.Helper()
	return apisvc.NewNsplugClient(grpcConnOver(t, conn))
}

// grpcConnOver is a gRPC client connection on conn alone.
func grpcConnOver(t *testing.T, conn net.Conn) *grpc.ClientConn {
	t.Helper()
	used := false
	cc, err := grpc.NewClient("passthrough:///nsplug", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if used {
				return nil, errors.New("one connection only")
			}
			used = true
			return conn, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// rawFast speaks the fast path by hand: what goes out is the test's to
// write, what comes back is read as the protocol says.
type rawFast struct {
	conn *net.UnixConn
	r    *fast.Reader
}

// newRawFast sends the preface on conn and reads the daemon's.
func newRawFast(t *testing.T, conn *net.UnixConn) *rawFast {
	t.Helper()
	f := &rawFast{conn: conn, r: fast.NewReader(conn)}
	f.write(t, []byte(fast.Preface))
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	if ok, err := f.r.ReadPreface(); !ok {
		t.Fatalf("the daemon's preface: %v", err)
	}
	return f
}

func (f *rawFast) write(t *testing.T, b []byte) {
	t.Helper()
	if _, err := f.conn.Write(b); err != nil {
		t.Fatal(err)
	}
}

// send sends msg as a request of id.
func (f *rawFast) send(t *testing.T, id string, msg []byte) {
	t.Helper()
	b, err := fast.AppendMessage(nil, wire.FrameRequest, id, msg)
	if err != nil {
		t.Fatal(err)
	}
	f.write(t, b)
}

// reply reads one reply, which must be for id.
func (f *rawFast) reply(t *testing.T, id string) *spb.Status {
	t.Helper()
	f.conn.SetReadDeadline(time.Now().Add(time.Minute))
	rid, msg, err := f.r.Read(wire.FrameResponse)
	if err != nil {
		t.Fatalf("reading the reply: %v", err)
	}
	if rid != id {
		t.Fatalf("the reply is for %q, want %q", rid, id)
	}
	var st spb.Status
	if err := proto.Unmarshal(msg, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

func (f *rawFast) call(t *testing.T, req *apiv1.CallRequest) *spb.Status {
	t.Helper()
	return f.callReplied(t, req, "7")
}

// callReplied sends req as request "7" and reads the reply of id: "7", or
// "" for the reply to a breach of the protocol.
func (f *rawFast) callReplied(t *testing.T, req *apiv1.CallRequest, id string) *spb.Status {
	t.Helper()
	msg, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	f.send(t, "7", msg)
	return f.reply(t, id)
}

// wantClosed reads until the daemon closes the connection, which it must
// within limit, and returns what came before.
func wantClosed(t *testing.T, conn *net.UnixConn, limit time.Duration) []byte {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(limit))
	b, err := io.ReadAll(conn)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the daemon did not close the connection: %v (after %q)", err, b)
	}
	return b
}

// sameAsGRPC checks that the fast path's reply st is what the gRPC call
// returned (resp, err): the payload, or the status with its code, message
// and apiv1.Error detail.
func sameAsGRPC(t *testing.T, what string, st *spb.Status, resp *apiv1.CallResponse, err error) {
	t.Helper()
	if err != nil {
		if want := status.Convert(err).Proto(); !proto.Equal(st, want) {
			t.Errorf("%s: fast path %v, gRPC %v", what, st, want)
		}
		return
	}
	var got apiv1.CallResponse
	if st.Code != 0 || len(st.Details) != 1 || st.Details[0].UnmarshalTo(&got) != nil || string(got.Payload) != string(resp.Payload) {
		t.Errorf("%s: fast path %v, gRPC %s", what, st, resp.Payload)
	}
}

// scrape reads one counter of the daemon's metrics ("name{labels}").
func scrape(t *testing.T, addr, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// The fast path answers every call as gRPC does, byte for byte in the
// status (code, message, Error detail): successes, errnos, a stale
// identity, an unknown type, a bad payload, and a denial of another user,
// audited once per transport. The metrics count its calls apart.
func TestFastPathMatchesGRPC(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Hostname: "fast-path", MountProc: true})
	metrics := freeLoopbackAddr(t)
	audit := filepath.Join(t.TempDir(), "audit.log")
	d := startDaemon(t, fmt.Sprintf("metrics_address = %q\naudit_log = %q", metrics, audit), "")
	g := d.client(t)
	raw := newRawFast(t, dialSocket(t, d))
	client, err := fast.Dial(d.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	pid := int32(target.PID())
	read := func(path string) []byte { return []byte(`{"path":"` + path + `"}`) }
	cases := []struct {
		name string
		req  *apiv1.CallRequest
	}{
		{"success", &apiv1.CallRequest{Target: &apiv1.Target{Pid: pid}, Type: "procfs.read", Payload: read("/proc/sys/kernel/hostname")}},
		{"ENOENT", &apiv1.CallRequest{Target: &apiv1.Target{Pid: pid}, Type: "procfs.read", Payload: read("/proc/nope")}},
		{"stale identity", &apiv1.CallRequest{Target: &apiv1.Target{Pid: pid, StartTime: wrapperspb.UInt64(1)}, Type: "procfs.read", Payload: read("/proc/uptime")}},
		{"unknown type", &apiv1.CallRequest{Target: &apiv1.Target{Pid: pid}, Type: "procfs.fly"}},
		{"bad payload", &apiv1.CallRequest{Target: &apiv1.Target{Pid: pid}, Type: "procfs.read", Payload: []byte(`[1]`)}},
		{"no target", &apiv1.CallRequest{Type: "procfs.read"}},
	}
	for _, c := range cases {
		resp, gerr := g.Call(context.Background(), c.req)
		sameAsGRPC(t, c.name, raw.call(t, c.req), resp, gerr)
		fresp, _, ferr := client.Call(context.Background(), c.req)
		if gerr == nil {
			if ferr != nil || string(fresp.Payload) != string(resp.Payload) {
				t.Errorf("%s: fast.Client %v %v, gRPC %s", c.name, fresp, ferr, resp.Payload)
			}
			continue
		}
		want := server.ErrorFromStatus(gerr).(*wire.Error)
		if e, ok := ferr.(*wire.Error); !ok || *e != *want {
			t.Errorf("%s: fast.Client %#v, gRPC %#v", c.name, ferr, want)
		}
	}
	if !strings.Contains(string(mustPayload(t, raw.call(t, cases[0].req))), "ZmFzdC1wYXRoCg==") {
		t.Errorf("the hostname read through the fast path is not the target's")
	}

	// uid 65534 may call nothing (root only, the default): denied alike.
	deny := &apiv1.CallRequest{Target: &apiv1.Target{Pid: pid}, Type: "procfs.read", Payload: read("/proc/uptime")}
	_, gerr := grpcOver(t, connectAs(t, nobody, d.socket)).Call(context.Background(), deny)
	if status.Code(gerr) != codes.PermissionDenied || !strings.Contains(status.Convert(gerr).Message(), "uid 65534") {
		t.Fatalf("gRPC call as uid 65534: %v", gerr)
	}
	sameAsGRPC(t, "denial", newRawFast(t, connectAs(t, nobody, d.socket)).call(t, deny), nil, gerr)
	denials := 0
	for _, l := range auditLines(t, audit) {
		if l.Result == "denied" && l.Caller.UID == 65534 && l.Type == "procfs.read" {
			denials++
		}
	}
	if denials != 2 {
		t.Errorf("%d audit lines of the denials, want one per transport: %v", denials, auditLines(t, audit))
	}

	n := float64(len(cases) + 1)
	if got := scrape(t, metrics, `nsplug_requests_by_transport_total{transport="fast"}`); got != 2*n {
		t.Errorf("fast-path calls counted: %v, want %v", got, 2*n)
	}
	if got := scrape(t, metrics, `nsplug_requests_by_transport_total{transport="grpc"}`); got != n {
		t.Errorf("gRPC calls counted: %v, want %v", got, n)
	}
	if got := scrape(t, metrics, `nsplug_requests_total{result="EACCES",type="procfs.read"}`); got != 2 {
		t.Errorf("denied calls counted: %v, want 2", got)
	}
}

func mustPayload(t *testing.T, st *spb.Status) []byte {
	t.Helper()
	var resp apiv1.CallResponse
	if st.Code != 0 || len(st.Details) != 1 || st.Details[0].UnmarshalTo(&resp) != nil {
		t.Fatalf("not a success: %v", st)
	}
	return resp.Payload
}

// The files a handler hands back (fs.open) reach the fast path's client
// as its own descriptors (SCM_RIGHTS), and the daemon keeps none; the CLI
// prints them as in-process.
func TestFastPathHandsBackFiles(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true, Files: map[string]string{"/mnt/hello": "hello from the target\n"}})
	d := startDaemon(t, "", "")
	client, err := fast.Dial(d.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	open := &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(target.PID())}, Type: "fs.open", Payload: []byte(`{"path":"/mnt/hello"}`)}
	if _, files, err := client.Call(context.Background(), open); err != nil || len(files) != 1 {
		t.Fatalf("fs.open: %v, %d files", err, len(files))
	} else {
		files[0].Close()
	}
	// The daemon closes its copies once the reply is sent: the client
	// may have it a moment before.
	closed := func() int {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if !slices.ContainsFunc(d.fdList(), func(fd string) bool { return strings.HasSuffix(fd, ":/mnt/hello") }) {
				return d.fds(t)
			}
		}
		t.Fatalf("the daemon keeps the file handed back: %v", d.fdList())
		return 0
	}
	before := closed()
	for range 3 {
		resp, files, err := client.Call(context.Background(), open)
		if err != nil || len(files) != 1 {
			t.Fatalf("fs.open: %v %v, %d files", resp, err, len(files))
		}
		data, err := io.ReadAll(files[0])
		if err != nil || string(data) != "hello from the target\n" {
			t.Errorf("the file handed back: %q %v", data, err)
		}
		if fl, _ := unix.FcntlInt(files[0].Fd(), unix.F_GETFD, 0); fl&unix.FD_CLOEXEC == 0 {
			t.Errorf("the file handed back is not close-on-exec")
		}
		files[0].Close()
	}
	if after := closed(); after != before {
		t.Errorf("daemon fds: %d before, %d after three responses with files: %v", before, after, d.fdList())
	}
	out, errOut, code := runNsplug(t, nil, nil, "call", "--addr", d.addr, "--pid", strconv.Itoa(target.PID()), "fs.open", `{"path":"/mnt/hello"}`)
	if code != 0 || !strings.Contains(out, `"files"`) || !strings.Contains(out, `"first_bytes": "hello from the target\n"`) {
		t.Errorf("CLI: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

// Bytes that break the protocol get a precise error (where the stream
// still says who is asking) and a closed connection; a request that does
// not decode gets EINVAL on a connection that goes on serving. The daemon
// keeps serving both protocols, with no fd or goroutine more.
func TestFastPathMalformed(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	metrics := freeLoopbackAddr(t)
	d := startDaemon(t, fmt.Sprintf("metrics_address = %q", metrics), "")
	good := &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(target.PID())}, Type: "procfs.read", Payload: []byte(`{"path":"/proc/uptime"}`)}
	alive, g := newRawFast(t, dialSocket(t, d)), d.client(t)
	if st := alive.call(t, good); st.Code != 0 {
		t.Fatalf("a good call: %v", st)
	}
	if _, err := g.Call(context.Background(), good); err != nil {
		t.Fatalf("a good call through gRPC: %v", err)
	}
	base := daemonUsage(t, d, metrics)

	for _, c := range []struct {
		name  string
		bytes []byte
		want  string
	}{
		{"frame too long", []byte{0xff, 0xff, 0xff, 0xff}, "a frame of 4294967295 bytes"},
		{"frame too short", []byte{0, 0, 0, 1, 2}, "a frame of 1 bytes"},
		{"a response", lengthed(t, wire.FrameResponse, "1", nil), "a frame of kind 4"},
		{"a cancel", lengthed(t, wire.FrameCancel, "1", nil), "a frame of kind 5"},
		{"id too long", append([]byte{0, 0, 0, 3, wire.FrameRequest, 200}, 'x'), "truncated"},
		{"ids mixed", append(lengthed(t, wire.FrameRequestPart, "1", []byte{1}), lengthed(t, wire.FrameRequest, "2", nil)...), `a frame of request "2" inside the message of request "1"`},
	} {
		raw := newRawFast(t, dialSocket(t, d))
		raw.write(t, c.bytes)
		st := raw.reply(t, "")
		if codes.Code(st.Code) != codes.InvalidArgument || !strings.Contains(st.Message, c.want) || !strings.Contains(st.Message, "(EINVAL)") {
			t.Errorf("%s: %v, want InvalidArgument naming %q", c.name, st, c.want)
		}
		if rest := wantClosed(t, raw.conn, 10*time.Second); len(rest) != 0 {
			t.Errorf("%s: %q after the error", c.name, rest)
		}
	}

	// A request that is no CallRequest: EINVAL, and the connection serves on.
	raw := newRawFast(t, dialSocket(t, d))
	raw.send(t, "1", []byte{0xff, 0xff, 0xff})
	if st := raw.reply(t, "1"); codes.Code(st.Code) != codes.InvalidArgument || !strings.Contains(st.Message, "CallRequest") {
		t.Errorf("a request that does not decode: %v", st)
	}
	if st := raw.call(t, good); st.Code != 0 {
		t.Errorf("the next call on the connection: %v", st)
	}
	raw.conn.Close()

	// A message over the limit is refused once it is known to be, without
	// reading the rest: EIO naming the limit.
	raw = newRawFast(t, dialSocket(t, d))
	go func() {
		part := lengthed(t, wire.FrameRequestPart, "9", make([]byte, wire.MaxFrameBody))
		for sent := 0; sent <= fast.MaxMessage; sent += wire.MaxFrameBody {
			if _, err := raw.conn.Write(part); err != nil {
				return
			}
		}
	}()
	if st := raw.reply(t, ""); codes.Code(st.Code) != codes.Internal || !strings.Contains(st.Message, "exceeds the limit of one message") || !strings.Contains(st.Message, "(EIO)") {
		t.Errorf("a message too large: %v", st)
	}
	wantClosed(t, raw.conn, 10*time.Second)

	// Neither protocol: closed, nothing written back.
	junk := dialSocket(t, d)
	junk.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	if b := wantClosed(t, junk, 10*time.Second); len(b) != 0 {
		t.Errorf("an HTTP/1 request got %q", b)
	}
	// A frame cut short by the client's close.
	raw = newRawFast(t, dialSocket(t, d))
	raw.write(t, []byte{0, 0, 1, 0, wire.FrameRequest})
	raw.conn.Close()

	if _, err := g.Call(context.Background(), good); err != nil {
		t.Errorf("gRPC after the malformed connections: %v", err)
	}
	if st := alive.call(t, good); st.Code != 0 {
		t.Errorf("the fast path after the malformed connections: %v", st)
	}
	waitUsage(t, d, metrics, base)
}

// lengthed is one frame as the fast path carries it: its length, then it.
func lengthed(t *testing.T, kind byte, id string, body []byte) []byte {
	t.Helper()
	f, err := wire.AppendFrame(nil, kind, id, body)
	if err != nil {
		t.Fatal(err)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(f))), f...)
}

// waitUsage waits until the daemon's fds and goroutines are back to base.
func waitUsage(t *testing.T, d *daemon, metrics string, base usage) {
	t.Helper()
	var u usage
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if u = daemonUsage(t, d, metrics); u.FDs <= base.FDs+1 && u.Goroutines <= base.Goroutines+1 {
			return
		}
	}
	t.Errorf("daemon usage %+v, at the start %+v: %v", u, base, d.fdList())
}

// A client that connects and sends nothing, or half a preface, is dropped
// once the preface's deadline passes; nothing of it stays.
func TestFastPathSilentClient(t *testing.T) {
	parallel(t)
	metrics := freeLoopbackAddr(t)
	d := startDaemon(t, fmt.Sprintf("metrics_address = %q", metrics), "")
	base := daemonUsage(t, d, metrics)
	silent, half := dialSocket(t, d), dialSocket(t, d)
	half.Write([]byte(fast.Preface[:7]))
	if b := wantClosed(t, silent, 30*time.Second); len(b) != 0 {
		t.Errorf("the silent client got %q", b)
	}
	if b := wantClosed(t, half, 30*time.Second); len(b) != 0 {
		t.Errorf("the client of half a preface got %q", b)
	}
	silent.Close()
	half.Close()
	waitUsage(t, d, metrics, base)
}

// The client's going away ends its request: a cancelled fast.Client (its
// connection closed) and a client that sends a request and closes. The
// handlers are killed, the daemon's fds come back. SIGTERM with a fast-path
// connection idle and one busy past shutdown_grace: the busy call is told
// it was cancelled, and the daemon exits 0 leaving nothing.
func TestFastPathClientGoneAndShutdown(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{MountProc: true})
	d := startDaemon(t, `shutdown_grace = "1s"`, "")
	g := d.client(t)
	d.instances(t, g)
	hang := &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(target.PID())}, Type: "extprobe.hang"}
	before := d.fds(t) + 1 // the target's pidfd, kept after the first request

	client, err := fast.Dial(d.addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := client.Call(ctx, hang)
		done <- err
	}()
	handler := d.waitInflight(t, g, "extprobe")
	cancel()
	if err := <-done; !errorsIsErrno(err, syscall.ECANCELED) {
		t.Errorf("cancelled call: %v", err)
	}
	if _, _, err := client.Call(context.Background(), hang); !errorsIsErrno(err, syscall.ECANCELED) {
		t.Errorf("a call on the client after a cancel: %v", err)
	}
	procGone(t, handler, "the cancelled request's handler")
	d.waitQuiet(t, before)

	raw := newRawFast(t, dialSocket(t, d))
	msg, _ := proto.Marshal(hang)
	raw.send(t, "1", msg)
	handler = d.waitInflight(t, g, "extprobe")
	raw.conn.Close()
	procGone(t, handler, "the closed connection's handler")
	d.waitQuiet(t, before)
	// Closed at once, before the daemon has read the request: it is not
	// left to hang (extprobe.hang would, until request_timeout).
	for range 3 {
		raw = newRawFast(t, dialSocket(t, d))
		raw.send(t, "1", msg)
		raw.conn.Close()
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		inflight := 0
		for _, in := range d.instances(t, g) {
			inflight += int(in.Inflight)
		}
		if inflight == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("requests of clients gone run on: %v", d.instances(t, g))
		}
	}

	idle := newRawFast(t, dialSocket(t, d))
	if st := idle.call(t, &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(target.PID())}, Type: "procfs.read", Payload: []byte(`{"path":"/proc/uptime"}`)}); st.Code != 0 {
		t.Fatalf("procfs.read: %v", st)
	}
	busy := newRawFast(t, dialSocket(t, d))
	busy.send(t, "2", msg)
	d.waitInflight(t, g, "extprobe")
	d.cmd.Process.Signal(syscall.SIGTERM)
	if st := busy.reply(t, "2"); codes.Code(st.Code) != codes.Canceled && codes.Code(st.Code) != codes.Unavailable {
		t.Errorf("the call in flight at shutdown: %v", st)
	}
	wantClosed(t, busy.conn, 30*time.Second)
	wantClosed(t, idle.conn, 30*time.Second)
	if code := d.wait(t, time.Minute); code != 0 {
		t.Errorf("daemon exited %d; its log:\n%s", code, d.log)
	}
	assertEmptyDir(t, d.runDir)
}

// A user's request is bounded by max_user_request_bytes on both protocols,
// and refused before the daemon reads it whole: a user who may connect
// (here one no rule names) cannot make the daemon hold 64 MiB per call in
// flight. Root's requests have the API's own bound; the user's smaller
// ones are served (denied here, by the policy, as usual).
func TestUsersRequestsAreBounded(t *testing.T) {
	parallel(t)
	d := startDaemon(t, "max_user_request_bytes = 8192", "")
	pid := int32(hostTarget(t))
	big := &apiv1.CallRequest{Target: &apiv1.Target{Pid: pid}, Type: "procfs.read", Payload: []byte(`{"path":"/proc/uptime","pad":"` + strings.Repeat("x", 16<<10) + `"}`)}
	small := &apiv1.CallRequest{Target: &apiv1.Target{Pid: pid}, Type: "procfs.read", Payload: []byte(`{"path":"/proc/uptime"}`)}

	g := grpcOver(t, connectAs(t, nobody, d.socket))
	_, err := g.Call(context.Background(), big)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "8192") {
		t.Errorf("gRPC: a user's request of 16 KiB: %v, want RESOURCE_EXHAUSTED naming the bound", err)
	}
	if _, err := g.Call(context.Background(), small); status.Code(err) != codes.PermissionDenied {
		t.Errorf("gRPC: a user's small request on the same connection: %v, want the policy's denial", err)
	}

	conn := connectAs(t, nobody, d.socket)
	raw := newRawFast(t, conn)
	st := raw.callReplied(t, big, "") // a breach: no request id
	if codes.Code(st.Code) != codes.Internal || !strings.Contains(st.Message, "exceeds the limit of one message (8192 bytes, server.max_user_request_bytes)") {
		t.Errorf("fast path: a user's request of 16 KiB: %v, want EIO naming the setting", st)
	}
	wantClosed(t, conn, 10*time.Second)
	if st := newRawFast(t, connectAs(t, nobody, d.socket)).call(t, small); codes.Code(st.Code) != codes.PermissionDenied {
		t.Errorf("fast path: a user's small request: %v, want the policy's denial", st)
	}

	// Root: the same request is not refused for its size (procfs.read
	// refuses its unknown field).
	_, err = d.client(t).Call(context.Background(), big)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "pad") {
		t.Errorf("gRPC: root's request of 16 KiB: %v, want procfs.read's own refusal", err)
	}
	if st := newRawFast(t, dialSocket(t, d)).call(t, big); codes.Code(st.Code) != codes.InvalidArgument {
		t.Errorf("fast path: root's request of 16 KiB: %v, want procfs.read's own refusal", st)
	}
}

// A user who connects over and over and sends nothing holds no more of
// the daemon's fds than their bound of connections, and root is served
// meanwhile. Before, each such connection was held for 3 s: one uid held
// all 20,000 of the daemon's fds within 5 s, and root's `nsplug call
// --addr` failed with EAGAIN.
func TestUnreadConnectionsDoNotExhaustTheDaemon(t *testing.T) {
	parallel(t)
	d := startDaemon(t, "", "")
	before := d.fds(t)
	const script = `import socket, sys
conns = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    conns.append(s)
print("connected", flush=True)
sys.stdin.read()
`
	const n = 400
	cmd := execAs(nobody, "/usr/bin/python3", "-c", script, d.socket, strconv.Itoa(n))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "connected\n" {
		t.Fatalf("uid %d's %d connections: %q %v", nobody.Uid, n, line, err)
	}
	time.Sleep(100 * time.Millisecond) // the daemon has accepted what it will
	bound := server.MaxConnsPerUser + server.MaxRefusalsPerUser
	if got := d.fds(t); got > before+bound+4 {
		t.Errorf("with %d unread connections of uid %d open, the daemon holds %d fds, %d before: want at most %d more", n, nobody.Uid, got, before, bound)
	}
	pid := int32(hostTarget(t))
	if _, err := d.client(t).Call(context.Background(), &apiv1.CallRequest{Target: &apiv1.Target{Pid: pid}, Type: "procfs.read", Payload: []byte(`{"path":"/proc/uptime"}`)}); err != nil {
		t.Errorf("root's call meanwhile: %v", err)
	}
}

// A user's gRPC calls count from the moment their streams open, not once
// their requests have been read: 16 streams of uid 65534 still open (here
// health watches; a request whose bytes are still coming is another)
// leave no room for a 17th call, which is refused at once. Before, only
// Call and Prepare counted, once their request was read, so each of a
// user's 32 connections could hold 16 requests being read.
func TestUsersStreamsCountAsTheyOpen(t *testing.T) {
	parallel(t)
	d := startDaemon(t, "", "")
	health := healthpb.NewHealthClient(grpcConnOver(t, connectAs(t, nobody, d.socket)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range server.MaxStreamsPerConn {
		w, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			_, err = w.Recv()
		}
		if err != nil {
			t.Fatalf("watch %d of uid %d: %v", i+1, nobody.Uid, err)
		}
	}
	call := &apiv1.CallRequest{Target: &apiv1.Target{Pid: int32(hostTarget(t))}, Type: "procfs.read", Payload: []byte(`{"path":"/proc/uptime"}`)}
	g := grpcOver(t, connectAs(t, nobody, d.socket))
	_, err := g.Call(context.Background(), call)
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "max_calls_per_user") {
		t.Errorf("a call of uid %d with 16 streams open: %v, want UNAVAILABLE naming server.max_calls_per_user", nobody.Uid, err)
	}
	cancel() // the watches end, and their places with them
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, err = g.Call(context.Background(), call)
		if status.Code(err) == codes.PermissionDenied || time.Now().After(deadline) {
			break
		}
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("the call once the watches ended: %v, want the policy's denial", err)
	}
}
