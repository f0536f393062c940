package tests

import (
	"strings"
	"syscall"
	"testing"

	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/sdk"
)

// A response over sdk.MaxMessageBytes is an EIO error that names its size
// and the limit once, with the errno once; the instance keeps serving.
func TestResponseOverTheLimitNamesIt(t *testing.T) {
	parallel(t)
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

// A request over sdk.MaxMessageBytes is refused by the core before it is
// sent, with the EIO error a response over the limit gets, naming its size
// and the limit once; the warm instance is neither used nor replaced.
func TestRequestOverTheLimitNamesIt(t *testing.T) {
	parallel(t)
	target := newTarget(t, sandbox.Options{Files: map[string]string{"/mnt/small": "ok"}})
	pid := target.PID()
	d, _ := newDispatcher(t, "")
	mustCall(t, d, pid, "procfs.read", `{"path":"/mnt/small"}`, nil)
	served := servingPID(t, d, "procfs")
	payload := `{"path":"/mnt/small","pad":"` + strings.Repeat("x", sdk.MaxMessageBytes) + `"}`
	err := call(t, d, pid, "procfs.read", payload, nil)
	wantErrno(t, err, syscall.EIO, "procfs.read: request of ", " bytes exceeds the 64 MiB limit of one message")
	if err != nil && strings.Count(err.Error(), "(EIO)") != 1 {
		t.Errorf("the errno is named more than once: %v", err)
	}
	mustCall(t, d, pid, "procfs.read", `{"path":"/mnt/small"}`, nil)
	if again := servingPID(t, d, "procfs"); again != served {
		t.Errorf("the instance was replaced (%d, then %d)", served, again)
	}
}
