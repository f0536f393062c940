#!/usr/bin/python3
"""A client of the nsplug node API in Python, with stubs generated at run
time from the published api/v1/nsplug.proto by Debian's python3-grpc-tools:
what a program in another language does to call `nsplug serve`.

usage: nsplug_client.py PROTO_DIR SOCKET health
       nsplug_client.py PROTO_DIR SOCKET types
       nsplug_client.py PROTO_DIR SOCKET call PID[:STARTTIME] TYPE [PAYLOAD]
       nsplug_client.py PROTO_DIR SOCKET channel PID TYPE COUNT [PAYLOAD]

Prints the answer as one JSON object on stdout. A failed call prints
{"code": ..., "errno": ..., "errno_name": ..., "message": ...}, taken from
the status and its nsplug.api.v1.Error detail, and exits 1.

`channel` speaks the daemon's fast path by hand (api/fast/README.md):
it asks for a direct channel, takes the socket that comes with the reply,
and sends COUNT requests on it as frames of the plugin contract
(wire/README.md), whose messages come from PROTO_DIR/wire/plugin.proto;
it prints the last response's payload, or its error.
"""
import array
import atexit
import json
import os
import shutil
import socket
import struct
import sys
import tempfile

import grpc
import grpc_tools
from grpc_tools import protoc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory


def stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="nsplug-pystubs-")
    atexit.register(shutil.rmtree, out, True)
    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", "-I", proto_dir, "-I", wkt, "--python_out=" + out,
                      "--grpc_python_out=" + out, os.path.join(proto_dir, "v1", "nsplug.proto"),
                      os.path.join(proto_dir, "v1", "service", "service.proto"),
                      os.path.join(proto_dir, "wire", "plugin.proto")])
    if rc != 0:
        sys.exit("protoc failed: %d" % rc)
    sys.path.insert(0, out)
    from v1 import nsplug_pb2  # noqa: E402
    from v1.service import service_pb2_grpc  # noqa: E402
    return nsplug_pb2, service_pb2_grpc


def rpc_status_type():
    """google.rpc.Status, built from its three fields: the status details
    travel in it, and grpcio-status is not packaged here."""
    f = descriptor_pb2.FileDescriptorProto(name="nsplug_client_status.proto", package="google.rpc",
                                           dependency=["google/protobuf/any.proto"], syntax="proto3")
    m = f.message_type.add(name="Status")
    F = descriptor_pb2.FieldDescriptorProto
    m.field.add(name="code", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    m.field.add(name="message", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    m.field.add(name="details", number=3, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                type_name=".google.protobuf.Any")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pb2.FileDescriptorProto.FromString(
        any_pb2.DESCRIPTOR.serialized_pb).SerializeToString())
    pool.Add(f)
    desc = pool.FindMessageTypeByName("google.rpc.Status")
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)


def failure(err, pb):
    out = {"code": err.code().name, "message": err.details()}
    for key, value in (err.trailing_metadata() or ()):
        if key == "grpc-status-details-bin":
            fail_with(out, rpc_status_type().FromString(value), pb)
    fail_with(out, None, pb)


def fail_with(out, st, pb):
    """Prints out, with the errno of st's nsplug.api.v1.Error detail, and exits 1."""
    for d in (st.details if st is not None else ()):
        e = pb.Error()
        if d.Unpack(e):
            out.update(errno=e.errno, errno_name=e.errno_name, message=e.message)
    print(json.dumps(out))
    sys.exit(1)


PREFACE = b"NSPLUG-FAST/1\n"
FRAME_REQUEST, FRAME_RESPONSE_PART, FRAME_RESPONSE, FRAME_OPEN_CHANNEL = 2, 3, 4, 7


def frame(kind, rid, body):
    return bytes([kind, len(rid)]) + rid + body


def read_reply(conn):
    """One fast-path reply: its frames' bodies joined, and the fds that came."""
    buf, fds, body = b"", [], b""
    while True:
        while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
            data, anc, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
            if not data:
                sys.exit("the daemon closed the connection")
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    a = array.array("i")
                    a.frombytes(cdata[:len(cdata) - len(cdata) % a.itemsize])
                    fds.extend(a)
            buf += data
        n = struct.unpack(">I", buf[:4])[0]
        f, buf = buf[4:4 + n], buf[4 + n:]
        kind, idlen = f[0], f[1]
        body += f[2 + idlen:]
        if kind == FRAME_RESPONSE:
            return body, fds


def direct_channel(pb, sock):
    from wire import plugin_pb2  # noqa: E402
    pid, typ, count = int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
    payload = (sys.argv[7] if len(sys.argv) > 7 else "{}").encode()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(sock)
    req = pb.CallRequest(type=typ)
    req.target.pid = pid
    body = req.SerializeToString()
    conn.sendall(PREFACE + struct.pack(">I", 3 + len(body)) + frame(FRAME_OPEN_CHANNEL, b"1", body))
    if conn.recv(len(PREFACE), socket.MSG_WAITALL) != PREFACE:
        sys.exit("not the fast path's preface")
    reply, fds = read_reply(conn)
    st = rpc_status_type().FromString(reply)
    if st.code != 0:
        fail_with({"code": st.code, "message": st.message}, st, pb)
    grant = pb.ChannelGrant()
    if len(st.details) != 1 or not st.details[0].Unpack(grant) or len(fds) != 1:
        sys.exit("a channel's reply without its grant and socket")
    ch = socket.socket(fileno=fds[0])
    for i in range(count):
        rid = str(i + 1).encode()
        hreq = plugin_pb2.HandleRequest(type=typ, payload=payload, request_id=rid.decode())
        ch.send(frame(FRAME_REQUEST, rid, hreq.SerializeToString()))
        resp_body = b""
        while True:
            f = ch.recv(2 + 255 + 61440)
            if not f:
                print(json.dumps({"revoked": True, "served": i}))
                sys.exit(1)
            resp_body += f[2 + f[1]:]
            if f[0] == FRAME_RESPONSE:
                break
        resp = plugin_pb2.HandleResponse.FromString(resp_body)
        if resp.HasField("error"):
            print(json.dumps({"errno": resp.error.errno, "message": resp.error.message, "served": i}))
            sys.exit(1)
    print(json.dumps({"payload": json.loads(resp.payload), "channel": grant.id, "type": grant.type, "served": count}))


def main():
    proto_dir, sock, cmd = sys.argv[1:4]
    pb, pbg = stubs(proto_dir)
    if cmd == "channel":
        direct_channel(pb, sock)
        return
    channel = grpc.insecure_channel("unix://" + sock)
    if cmd == "health":
        # grpc.health.v1.Health/Check, by hand: an empty request; the answer's
        # field 1 is the serving status (1: SERVING).
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=lambda _: b"", response_deserializer=lambda b: b)
        answer = check(None, timeout=10)
        status = {b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}.get(answer, "UNKNOWN")
        print(json.dumps({"status": status}))
        return
    api = pbg.NsplugStub(channel)
    try:
        if cmd == "types":
            r = api.Types(pb.TypesRequest(), timeout=10)
            print(json.dumps({"types": [{"name": t.name, "plugin": t.plugin, "changes": list(t.changes)} for t in r.types]}))
        elif cmd == "call":
            target, typ = sys.argv[4], sys.argv[5]
            payload = sys.argv[6] if len(sys.argv) > 6 else "{}"
            req = pb.CallRequest(type=typ, payload=payload.encode())
            pid, _, start = target.partition(":")
            req.target.pid = int(pid)
            if start:
                req.target.start_time.value = int(start)
            req.timeout.FromSeconds(10)
            r = api.Call(req, timeout=20)
            print(json.dumps({"payload": json.loads(r.payload)}))
        else:
            sys.exit("unknown command " + cmd)
    except grpc.RpcError as err:
        failure(err, pb)


if __name__ == "__main__":
    main()
