package wire

import "time"

// Direct channels (README.md, "Direct channels"): a second frame channel
// between a caller and a serving process, with the core off the path of
// its requests. The core opens one with a request of type
// ChannelOpenType on the process's own frame channel, the caller's end
// of a new socketpair attached (SCM_RIGHTS on its final frame), and
// watches it with requests of type ChannelStatsType. Both types are the
// frame channel's own: no plugin may declare a type under ReservedPrefix
// (CheckTypeName), and a serving process answers them only on the
// channel the core started it with.
const (
	ReservedPrefix   = "nsplug."
	ChannelOpenType  = "nsplug.channel_open"
	ChannelStatsType = "nsplug.channel_stats"
)

// ChannelGrant is the payload of a ChannelOpenType request: what the
// channel serves. The serving process holds its requests to it: another
// type is refused (EACCES), the target fields of HandleRequest are the
// grant's whatever the caller sent, each request runs for at most
// Timeout and is at most MaxRequestBytes. The caller sends one request at
// a time: a frame of another request while one is arriving, or a frame
// that does not parse, ends the channel.
type ChannelGrant struct {
	ID          uint64 `json:"id"`   // the core's, unique in the process
	Type        string `json:"type"` // the one type it serves
	TimeoutMs   int64  `json:"timeout_ms"`
	TargetPID   int32  `json:"target_pid"`
	TargetNsPID int32  `json:"target_ns_pid"`
	// MaxRequestBytes bounds each request, below MaxMessageBytes; 0:
	// MaxMessageBytes. A daemon grants a user what it takes from them.
	MaxRequestBytes int `json:"max_request_bytes,omitempty"`
}

// Timeout is the grant's per-request timeout; 0 for none.
func (g ChannelGrant) Timeout() time.Duration { return time.Duration(g.TimeoutMs) * time.Millisecond }

// ChannelStats is the response to a ChannelStatsType request: what each
// open channel of the process has served since it opened.
type ChannelStats struct {
	Channels []ChannelCounts `json:"channels"`
}

// ChannelCounts are one channel's totals. Errors counts failed
// responses by errno (0 for a failure without one). Overdue is set when
// the request being served has run past its timeout by more than the
// cancellation grace (500 ms): its handler did not stop, and the core
// ends the process as it would for a request of its own.
type ChannelCounts struct {
	ID       uint64           `json:"id"`
	Requests uint64           `json:"requests"`
	Errors   map[int32]uint64 `json:"errors,omitempty"`
	Overdue  bool             `json:"overdue,omitempty"`
	// Closed: its holder closed it since the last report, these being its
	// final counts; it is not listed again.
	Closed bool `json:"closed,omitempty"`
}

// ChannelGrace is how long past its timeout a channel's request may run
// before the process serving it is overdue (ChannelCounts.Overdue): the
// grace a cancelled request of the core's own gets.
const ChannelGrace = 500 * time.Millisecond
