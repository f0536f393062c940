package tests

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
)

// plantFIFOs is what root in a hostile target can do to the files a
// starting plugin process would read by path: glibc's /proc/self/maps, the
// Go runtime's cgroup and transparent-hugepage files, the net package's
// somaxconn and the time package's /etc/localtime. Each becomes a FIFO,
// which blocks whoever opens it for reading.
const plantFIFOs = `set -e
d=/mnt/plant
mkdir -p $d/proc/self $d/proc/sys/net/core $d/sys/kernel/mm/transparent_hugepage $d/sys/fs/cgroup
for f in maps cgroup mountinfo status; do mkfifo $d/proc/self/$f; done
mkfifo $d/proc/sys/net/core/somaxconn $d/sys/kernel/mm/transparent_hugepage/hpage_pmd_size $d/sys/fs/cgroup/cpu.max
mount --bind $d/proc /proc
mount --bind $d/sys /sys
if [ -e /etc/localtime ]; then mkfifo $d/localtime; mount --bind $d/localtime /etc/localtime; fi
test -p /proc/self/maps
`

// Nothing a target plants in its own /proc, /sys or /etc stalls or feeds
// a plugin's start: the runtime starts with the host socket directory as
// its root and enters the target's only when nsplug's code runs. Without
// that, every start below waits for start_timeout and fails.
func TestPlantedFIFOsDoNotStallStarts(t *testing.T) {
	parallel(t)
	for _, tc := range []struct {
		name string
		opts sandbox.Options
		mode string
	}{
		{"rootless", sandbox.Options{Rootless: true, MountProc: true, Hostname: "hostile-rootless", Files: map[string]string{"/mnt/placeholder": ""}}, "pooled"},
		{"rootful", sandbox.Options{MountProc: true, Hostname: "hostile-rootful", Files: map[string]string{"/mnt/placeholder": ""}}, "pooled"},
		{"rootless oneshot", sandbox.Options{Rootless: true, MountProc: true, Hostname: "hostile-oneshot", Files: map[string]string{"/mnt/placeholder": ""}}, "oneshot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := newTarget(t, tc.opts)
			inTarget(t, target.PID(), plantFIFOs)
			d, _ := newDispatcher(t, "[defaults]\nstart_timeout = \"3s\"\nrequest_timeout = \"5s\"\nmode = \""+tc.mode+"\"\n")
			call := func(typ, payload string) json.RawMessage {
				t.Helper()
				resp, err := d.Dispatch(context.Background(), core.Request{PID: target.PID(), Type: typ, Payload: json.RawMessage(payload)})
				if err != nil {
					t.Fatalf("%s against a target with planted FIFOs: %v", typ, err)
				}
				return resp
			}
			var user struct{ Name string }
			json.Unmarshal(call("ids.user", `{"id":0}`), &user)
			if user.Name != "root" {
				t.Errorf("ids.user 0 = %q, want root", user.Name)
			}
			var sc struct{ Value string }
			json.Unmarshal(call("sysctl.get", `{"name":"kernel.hostname"}`), &sc)
			if strings.TrimSpace(sc.Value) != tc.opts.Hostname {
				t.Errorf("kernel.hostname = %q, want %q", sc.Value, tc.opts.Hostname)
			}
			// The handler runs in the target's root: it sees the plant.
			var st struct{ Type string }
			json.Unmarshal(call("procfs.stat", `{"path":"/proc/self/maps"}`), &st)
			if st.Type != "fifo" {
				t.Errorf("procfs.stat /proc/self/maps: a %s, want the planted FIFO", st.Type)
			}
		})
	}
}
