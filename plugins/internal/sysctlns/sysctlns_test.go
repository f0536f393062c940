package sysctlns

import "testing"

func TestOf(t *testing.T) {
	for n, want := range map[string]string{
		"net.ipv4.ip_forward":     "net",
		"net.core.somaxconn":      "net",
		"kernel.hostname":         "uts",
		"kernel.shmmax":           "ipc",
		"fs.mqueue.queues_max":    "ipc",
		"user.max_net_namespaces": "user",
		"kernel.pid_max":          "pid",
		"vm.overcommit_memory":    "",
		"kernel.core_pattern":     "",
		"fs.file-max":             "",
		"fs.mqueue":               "",
		"network.x":               "",
		"kernel.hostnamex":        "",
	} {
		if got := Of(n); got != want {
			t.Errorf("Of(%q) = %q, want %q", n, got, want)
		}
	}
}
