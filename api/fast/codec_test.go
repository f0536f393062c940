package fast

import (
	"syscall"
	"testing"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	apiv1 "github.com/nsplug/nsplug/api/v1"
	"github.com/nsplug/nsplug/wire"
)

// The hand-written encoding is the generated code's: what it writes
// decodes, with the generated code, to the same request.
func TestCallRequestEncodesAsTheGeneratedCode(t *testing.T) {
	for _, req := range []*apiv1.CallRequest{
		{},
		{Target: &apiv1.Target{}},
		{Target: &apiv1.Target{Pid: 42, StartTime: &wrapperspb.UInt64Value{}}, Type: "procfs.read", Payload: []byte(`{"path":"/proc/self/stat"}`)},
		{Target: &apiv1.Target{Pid: -7, StartTime: &wrapperspb.UInt64Value{Value: 1 << 60}}},
		{
			Target: &apiv1.Target{Pid: 1 << 30}, Type: "fs.open", Payload: []byte("{}"),
			Namespaces: []string{"mnt", "", "net"},
			Credentials: &apiv1.Credentials{Uid: 1000, Gid: 1 << 31, Groups: []uint32{0, 5, 1<<32 - 1},
				Capabilities: &apiv1.CapabilitySets{Effective: 1, Permitted: 1 << 63, Inheritable: 0},
				Root:         "/srv/root", Cwd: "/tmp"},
			Timeout: &durationpb.Duration{Seconds: 3, Nanos: 500},
		},
		{Credentials: &apiv1.Credentials{Capabilities: &apiv1.CapabilitySets{}}, Timeout: &durationpb.Duration{Seconds: -1, Nanos: -5}},
	} {
		got := &apiv1.CallRequest{}
		if err := proto.Unmarshal(appendCallRequest(nil, req), got); err != nil {
			t.Fatalf("%v: the encoding does not decode: %v", req, err)
		}
		if !proto.Equal(got, req) {
			t.Errorf("encoded %v, decoded %v", req, got)
		}
	}
}

// Every field of the request's messages is one the encoder writes: a field
// added to the proto fails here until appendCallRequest writes it.
func TestCallRequestEncoderCoversEveryField(t *testing.T) {
	encoded := map[protoreflect.FullName][]protoreflect.FieldNumber{
		"nsplug.api.v1.CallRequest":    {1, 2, 3, 4, 5, 6},
		"nsplug.api.v1.Target":         {1, 2},
		"nsplug.api.v1.Credentials":    {1, 2, 3, 4, 5, 6},
		"nsplug.api.v1.CapabilitySets": {1, 2, 3},
		"google.protobuf.UInt64Value":  {1},
		"google.protobuf.Duration":     {1, 2},
	}
	seen := map[protoreflect.FullName]bool{}
	var walk func(md protoreflect.MessageDescriptor)
	walk = func(md protoreflect.MessageDescriptor) {
		if seen[md.FullName()] {
			return
		}
		seen[md.FullName()] = true
		want, ok := encoded[md.FullName()]
		if !ok {
			t.Errorf("message %s is in a CallRequest, and the encoder knows nothing of it", md.FullName())
			return
		}
		fields := md.Fields()
		if fields.Len() != len(want) {
			t.Errorf("%s has %d fields; the encoder writes %v", md.FullName(), fields.Len(), want)
		}
		for i := range fields.Len() {
			f := fields.Get(i)
			if !containsNumber(want, f.Number()) {
				t.Errorf("%s.%s (field %d) is not encoded", md.FullName(), f.Name(), f.Number())
			}
			if f.Message() != nil {
				walk(f.Message())
			}
		}
	}
	walk((&apiv1.CallRequest{}).ProtoReflect().Descriptor())
}

func containsNumber(ns []protoreflect.FieldNumber, n protoreflect.FieldNumber) bool {
	for _, x := range ns {
		if x == n {
			return true
		}
	}
	return false
}

// A reply the daemon encodes with the generated code decodes to its
// response, or to its error with the errno.
func TestRepliesDecodeAsTheDaemonEncodesThem(t *testing.T) {
	encode := func(st *spb.Status) []byte {
		b, err := proto.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	anyOf := func(m proto.Message) *anypb.Any {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}

	st, err := decodeStatus(encode(&spb.Status{Details: []*anypb.Any{anyOf(&apiv1.CallResponse{Payload: []byte(`{"data":"eA=="}`)})}}))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := decodeReply(st)
	if err != nil || string(resp.Payload) != `{"data":"eA=="}` {
		t.Errorf("a successful reply: %v, %v", resp, err)
	}

	st, err = decodeStatus(encode(&spb.Status{Code: 5, Message: "not found", Details: []*anypb.Any{
		anyOf(&apiv1.CallResponse{}), // not the error: skipped
		anyOf(&apiv1.Error{Errno: int32(syscall.ENOENT), ErrnoName: "ENOENT", Message: "no such file"}),
	}}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = decodeReply(st)
	if we, ok := err.(*wire.Error); !ok || we.Errno != syscall.ENOENT || we.Message != "no such file" {
		t.Errorf("a failed reply: %v", err)
	}

	st, err = decodeStatus(encode(&spb.Status{Code: 13, Message: "internal"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err = decodeReply(st); err == nil || err.(*wire.Error).Errno != syscall.EIO {
		t.Errorf("a failed reply without an Error: %v", err)
	}

	st, err = decodeStatus(encode(&spb.Status{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err = decodeReply(st); err == nil || err.(*wire.Error).Errno != syscall.EPROTO {
		t.Errorf("a successful reply without its response: %v", err)
	}

	for _, bad := range [][]byte{{0x0a}, {0x1a, 0x05, 0x0a}, {0xff}} {
		if _, err := decodeStatus(bad); err == nil {
			t.Errorf("decodeStatus(%x) = nil error", bad)
		}
	}
}
