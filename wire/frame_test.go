package wire

import (
	"strings"
	"testing"
)

// A message is refused past its own limit when it has one, past
// MaxMessageBytes otherwise, and keeps no bytes once refused.
func TestMessageLimit(t *testing.T) {
	m := Message{Max: 10}
	m.Add([]byte("0123456789"))
	if m.TooLarge() || string(m.Body) != "0123456789" {
		t.Fatalf("10 bytes under a limit of 10: too large %v, body %q", m.TooLarge(), m.Body)
	}
	m.Add([]byte("x"))
	if !m.TooLarge() || m.Body != nil || m.Size != 11 {
		t.Fatalf("11 bytes under a limit of 10: too large %v, body %q, size %d", m.TooLarge(), m.Body, m.Size)
	}
	big := Message{Max: 2 * MaxMessageBytes} // above the contract's: the contract's
	big.Add(make([]byte, MaxMessageBytes+1))
	if !big.TooLarge() {
		t.Error("a limit above MaxMessageBytes lifted it")
	}
}

// No plugin may declare a type under the frame channel's own prefix.
func TestReservedTypePrefix(t *testing.T) {
	for _, name := range []string{ChannelOpenType, ChannelStatsType, "nsplug.mine"} {
		if err := CheckTypeName(name); err == nil || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("CheckTypeName(%q) = %v, want a refusal naming the reserved prefix", name, err)
		}
	}
	if err := CheckTypeName("nsplugx.read"); err != nil {
		t.Errorf("CheckTypeName(nsplugx.read) = %v", err)
	}
}
