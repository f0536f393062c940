package fast

import (
	"errors"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"

	apiv1 "github.com/nsplug/nsplug/api/v1"
)

// The client's messages, encoded and decoded field by field (protowire)
// rather than through protobuf's reflection: a process that makes one
// call, as a whole `nsplug call --addr` is, would otherwise spend a tenth
// of its life building the message types' reflection tables on first
// use. The bytes are the messages' protobuf encoding, which the daemon
// decodes with the generated code; codec_test.go checks both directions
// against it, and that every field of the messages is covered.

// appendCallRequest appends req's encoding.
func appendCallRequest(b []byte, req *apiv1.CallRequest) []byte {
	if t := req.Target; t != nil {
		b = appendMessage(b, 1, func(b []byte) []byte {
			b = appendVarintField(b, 1, uint64(int64(t.Pid)))
			if st := t.StartTime; st != nil {
				b = appendMessage(b, 2, func(b []byte) []byte { return appendVarintField(b, 1, st.Value) })
			}
			return b
		})
	}
	b = appendBytesField(b, 2, []byte(req.Type))
	b = appendBytesField(b, 3, req.Payload)
	for _, ns := range req.Namespaces {
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendString(b, ns)
	}
	if c := req.Credentials; c != nil {
		b = appendMessage(b, 5, func(b []byte) []byte {
			b = appendVarintField(b, 1, uint64(c.Uid))
			b = appendVarintField(b, 2, uint64(c.Gid))
			if len(c.Groups) > 0 {
				b = appendMessage(b, 3, func(b []byte) []byte { // packed
					for _, g := range c.Groups {
						b = protowire.AppendVarint(b, uint64(g))
					}
					return b
				})
			}
			if cs := c.Capabilities; cs != nil {
				b = appendMessage(b, 4, func(b []byte) []byte {
					b = appendVarintField(b, 1, cs.Effective)
					b = appendVarintField(b, 2, cs.Permitted)
					return appendVarintField(b, 3, cs.Inheritable)
				})
			}
			b = appendBytesField(b, 5, []byte(c.Root))
			return appendBytesField(b, 6, []byte(c.Cwd))
		})
	}
	if d := req.Timeout; d != nil {
		b = appendMessage(b, 6, func(b []byte) []byte {
			b = appendVarintField(b, 1, uint64(d.Seconds))
			return appendVarintField(b, 2, uint64(int64(d.Nanos)))
		})
	}
	return b
}

// appendMessage appends field num holding the message body writes.
func appendMessage(b []byte, num protowire.Number, body func([]byte) []byte) []byte {
	inner := body(nil)
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, inner)
}

// appendVarintField appends a scalar field, omitted when zero (proto3).
func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// appendBytesField appends a string or bytes field, omitted when empty.
func appendBytesField(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// A reply is a google.rpc.Status: the gRPC code, its message and details,
// each an Any of a message named by its type URL.
type replyStatus struct {
	code    int32
	message string
	details []detail
}

type detail struct {
	name  string // the message's full name, the type URL's last element
	value []byte
}

var errMalformed = errors.New("malformed protobuf")

// decodeStatus decodes a reply's Status.
func decodeStatus(b []byte) (replyStatus, error) {
	var r replyStatus
	err := fields(b, func(num protowire.Number, typ protowire.Type, v uint64, raw []byte) error {
		switch {
		case num == 1 && typ == protowire.VarintType:
			r.code = int32(v)
		case num == 2 && typ == protowire.BytesType:
			r.message = string(raw)
		case num == 3 && typ == protowire.BytesType:
			var d detail
			if err := fields(raw, func(num protowire.Number, typ protowire.Type, _ uint64, raw []byte) error {
				switch {
				case num == 1 && typ == protowire.BytesType:
					url := string(raw)
					d.name = url[strings.LastIndexByte(url, '/')+1:]
				case num == 2 && typ == protowire.BytesType:
					d.value = raw
				}
				return nil
			}); err != nil {
				return err
			}
			r.details = append(r.details, d)
		}
		return nil
	})
	return r, err
}

// decodeCallResponse decodes a CallResponse.
func decodeCallResponse(b []byte) (*apiv1.CallResponse, error) {
	resp := &apiv1.CallResponse{}
	err := fields(b, func(num protowire.Number, typ protowire.Type, _ uint64, raw []byte) error {
		if num == 1 && typ == protowire.BytesType {
			resp.Payload = append([]byte{}, raw...)
		}
		return nil
	})
	return resp, err
}

// decodeChannelGrant decodes a ChannelGrant.
func decodeChannelGrant(b []byte) (*apiv1.ChannelGrant, error) {
	g := &apiv1.ChannelGrant{}
	err := fields(b, func(num protowire.Number, typ protowire.Type, v uint64, raw []byte) error {
		switch {
		case num == 1 && typ == protowire.VarintType:
			g.Id = v
		case num == 2 && typ == protowire.BytesType:
			g.Type = string(raw)
		case num == 3 && typ == protowire.VarintType:
			g.TimeoutMs = int64(v)
		}
		return nil
	})
	return g, err
}

// decodeError decodes an Error.
func decodeError(b []byte) (*apiv1.Error, error) {
	e := &apiv1.Error{}
	err := fields(b, func(num protowire.Number, typ protowire.Type, v uint64, raw []byte) error {
		switch {
		case num == 1 && typ == protowire.VarintType:
			e.Errno = int32(v)
		case num == 2 && typ == protowire.BytesType:
			e.ErrnoName = string(raw)
		case num == 3 && typ == protowire.BytesType:
			e.Message = string(raw)
		}
		return nil
	})
	return e, err
}

// fields calls f with each field of the message b: its varint value or
// its bytes. Fields of other types are skipped, as unknown fields are.
func fields(b []byte, f func(num protowire.Number, typ protowire.Type, v uint64, raw []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errMalformed
		}
		b = b[n:]
		var v uint64
		var raw []byte
		switch typ {
		case protowire.VarintType:
			v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			raw, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return errMalformed
		}
		b = b[n:]
		if typ == protowire.VarintType || typ == protowire.BytesType {
			if err := f(num, typ, v, raw); err != nil {
				return err
			}
		}
	}
	return nil
}
