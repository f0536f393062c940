package tests

import (
	"strings"
	"syscall"
	"testing"

	"github.com/nsplug/nsplug/sandbox"
)

// A response over sdk.MaxMessageBytes is an EIO error that names its size
// and the limit once, with the errno once; the instance keeps serving.
func TestResponseOverTheLimitNamesIt(t *testing.T) {
	target := newTarget(t, sandbox.Options{})
	pid := target.PID()
	d, _ := newDispatcher(t, "")
	// 49 MiB are 65 MiB of base64: over the 64 MiB limit.
	err := call(t, d, pid, "probe.big", `{"size":51380224}`, nil)
	wantErrno(t, err, syscall.EIO, "probe.big: response of ", " bytes exceeds the 64 MiB limit of one message")
	if err != nil && strings.Count(err.Error(), "(EIO)") != 1 {
		t.Errorf("the errno is named more than once: %v", err)
	}
	served := servingPID(t, d, "probe")
	mustCall(t, d, pid, "probe.big", `{"size":10}`, nil)
	if again := servingPID(t, d, "probe"); again != served {
		t.Errorf("the instance was replaced (%d, then %d)", served, again)
	}
}
