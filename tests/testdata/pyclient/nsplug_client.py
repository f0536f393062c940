#!/usr/bin/python3
"""A client of the nsplug node API in Python, with stubs generated at run
time from the published api/v1/nsplug.proto by Debian's python3-grpc-tools:
what a program in another language does to call `nsplug serve`.

usage: nsplug_client.py PROTO_DIR SOCKET health
       nsplug_client.py PROTO_DIR SOCKET types
       nsplug_client.py PROTO_DIR SOCKET call PID[:STARTTIME] TYPE [PAYLOAD]

Prints the answer as one JSON object on stdout. A failed call prints
{"code": ..., "errno": ..., "errno_name": ..., "message": ...}, taken from
the status and its nsplug.api.v1.Error detail, and exits 1.
"""
import atexit
import json
import os
import shutil
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
                      os.path.join(proto_dir, "v1", "service", "service.proto")])
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
            st = rpc_status_type().FromString(value)
            for d in st.details:
                e = pb.Error()
                if d.Unpack(e):
                    out.update(errno=e.errno, errno_name=e.errno_name, message=e.message)
    print(json.dumps(out))
    sys.exit(1)


def main():
    proto_dir, sock, cmd = sys.argv[1:4]
    pb, pbg = stubs(proto_dir)
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
