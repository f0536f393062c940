package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/nsexec/boot"
	"github.com/nsplug/nsplug/plugins/builtin"
	"github.com/nsplug/nsplug/sandbox"
)

// demoConfig gives procfs fresh mounts, so /proc reads work in a target
// that has no /proc of its own.
const demoConfig = `
log_level = "warn"
runtime_dir = %q

[[plugin]]
name = "procfs"
fresh_mounts = ["proc", "sys"]
`

// cmdDemo starts a rootless, FROM-scratch sandbox target and shows what
// the host sees beside what the target sees.
func cmdDemo(args []string, stdout, stderr io.Writer) error {
	if len(args) != 0 {
		return UsageErr("demo takes no arguments")
	}
	fmt.Fprintln(stdout, "Starting a sandbox target: a rootless, FROM-scratch container (own user namespace")
	fmt.Fprintln(stdout, "mapping root to host uid 100000, empty tmpfs root: no libc, no /proc, no /sys).")
	target, err := sandbox.Start(sandbox.Options{
		Rootless: true,
		Scratch:  true,
		Hostname: "demo-container",
		Files: map[string]string{
			"/etc/motd":   "hello from inside the container\n",
			"/etc/passwd": "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:the app:/srv/app:/bin/sh\n",
		},
	})
	if err != nil {
		return fmt.Errorf("starting the sandbox target: %w", err)
	}
	defer target.Close()
	fmt.Fprintf(stdout, "Target pid %d (as the host numbers it).\n\n", target.PID())

	runDir, err := os.MkdirTemp("", "nsplug-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(runDir)
	cfg, err := config.Parse([]byte(fmt.Sprintf(demoConfig, runDir)), "demo")
	if err != nil {
		return err
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "nsplug", Level: hclog.Warn, Output: stderr})
	d, err := core.New(cfg, core.Options{Logger: log, Builtins: builtin.All()})
	if err != nil {
		return err
	}
	defer d.Close()

	pid := target.PID()
	ask := func(typ, payload string) (map[string]any, error) {
		raw, err := d.Dispatch(context.Background(), core.Request{PID: pid, Type: typ, Payload: json.RawMessage(payload)})
		if err != nil {
			return nil, err
		}
		var m map[string]any
		return m, json.Unmarshal(raw, &m)
	}
	read := func(path string) string {
		m, err := ask("procfs.read", fmt.Sprintf(`{"path":%q}`, path))
		if err != nil {
			return "error: " + err.Error()
		}
		data, _ := decodeBase64(m["data"])
		return strings.TrimSpace(string(data))
	}
	hostRead := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			return "error: " + err.Error()
		}
		return strings.TrimSpace(string(b))
	}

	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REQUEST\tHOST SEES\tTARGET SEES (through nsplug)")
	row := func(what, host, inside string) { fmt.Fprintf(tw, "%s\t%s\t%s\n", what, host, inside) }
	row("procfs.read /proc/sys/kernel/hostname", hostRead("/proc/sys/kernel/hostname"), read("/proc/sys/kernel/hostname"))
	self, _ := os.Readlink("/proc/self")
	if m, err := ask("procfs.readlink", `{"path":"/proc/self"}`); err == nil {
		row("procfs.readlink /proc/self (pid numbering)", self, fmt.Sprint(m["target"]))
	}
	row("procfs.read /proc/self/status: Uid", statusLine(hostRead("/proc/self/status"), "Uid:"), statusLine(read("/proc/self/status"), "Uid:"))
	row("procfs.read /proc/net/dev: interfaces", interfaces(hostRead("/proc/net/dev")), interfaces(read("/proc/net/dev")))
	hostRoot, _ := os.ReadDir("/")
	var hostNames []string
	for _, e := range hostRoot {
		hostNames = append(hostNames, e.Name())
	}
	if m, err := ask("procfs.readdir", `{"path":"/"}`); err == nil {
		var names []string
		for _, e := range m["entries"].([]any) {
			names = append(names, fmt.Sprint(e.(map[string]any)["name"]))
		}
		row("procfs.readdir /", summarize(hostNames), summarize(names))
	}
	row("procfs.read /etc/motd", "(the host has its own /etc)", read("/etc/motd"))
	field := func(typ, payload, key string) string {
		m, err := ask(typ, payload)
		if err != nil {
			return "error: " + err.Error()
		}
		return fmt.Sprint(m[key])
	}
	row("sysctl.get net.ipv4.ip_forward", hostRead("/proc/sys/net/ipv4/ip_forward"), field("sysctl.get", `{"name":"net.ipv4.ip_forward"}`, "value"))
	field("sysctl.set", `{"name":"net.ipv4.ip_forward","value":"1"}`, "value")
	row("sysctl.set net.ipv4.ip_forward=1, then get", hostRead("/proc/sys/net/ipv4/ip_forward"), field("sysctl.get", `{"name":"net.ipv4.ip_forward"}`, "value"))
	hostMounts, _ := os.ReadFile("/proc/self/mountinfo")
	mounts := "error"
	if m, err := ask("mount.info", `{}`); err == nil {
		mounts = fmt.Sprintf("%d mounts", len(m["mounts"].([]any)))
	}
	row("mount.info", fmt.Sprintf("%d mounts", strings.Count(string(hostMounts), "\n")), mounts)
	row("ids.user {\"id\":1000}", "(NSS would load host libraries)", field("ids.user", `{"id":1000}`, "name"))
	_, err = ask("procfs.read", `{"path":"/etc/missing"}`)
	row("procfs.read /etc/missing", "", fmt.Sprint(err))
	tw.Flush()

	fmt.Fprintln(stdout, "\nThe handler processes, seen from the host (the built-ins share one warm process per target):")
	instances := d.Instances()
	for i, in := range instances {
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", in.PID))
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", in.PID))
		fmt.Fprintf(stdout, "  plugin %-7s host pid %d, host %s, exe %s\n", in.Plugin+":", in.PID, statusLine(string(status), "Uid:"), exe)
		if i > 0 {
			continue
		}
		tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "    NAMESPACE\tHANDLER\tTARGET\tHOST")
		for _, ns := range boot.NamespaceNames(boot.AllNamespaces) {
			fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\n", ns, nsLink(in.PID, ns), nsLink(pid, ns), nsLink(os.Getpid(), ns))
		}
		tw.Flush()
	}

	const n = 2000
	lat := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		if _, err := d.Dispatch(context.Background(), core.Request{PID: pid, Type: "procfs.read", Payload: json.RawMessage(`{"path":"/proc/sys/kernel/hostname"}`)}); err != nil {
			return err
		}
		lat = append(lat, time.Since(start))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fmt.Fprintf(stdout, "\n%d warm requests to the same instance: p50 %v, p99 %v.\n", n, lat[n/2].Round(time.Microsecond), lat[n*99/100].Round(time.Microsecond))

	d.Close()
	target.Close()
	gone := true
	for _, in := range instances {
		if _, err := os.Stat("/proc/" + strconv.Itoa(in.PID)); !os.IsNotExist(err) {
			gone = false
		}
	}
	_, terr := os.Stat("/proc/" + strconv.Itoa(pid))
	left, _ := os.ReadDir(runDir)
	fmt.Fprintf(stdout, "Cleaned up: handlers gone: %v, target gone: %v, runtime dir entries left: %d.\n", gone, os.IsNotExist(terr), len(left))
	return nil
}

func decodeBase64(v any) ([]byte, error) {
	var b []byte
	raw, _ := json.Marshal(v)
	err := json.Unmarshal(raw, &b)
	return b, err
}

func statusLine(status, key string) string {
	for _, line := range strings.Split(status, "\n") {
		if strings.HasPrefix(line, key) {
			return strings.Join(strings.Fields(line), " ")
		}
	}
	return "?"
}

func interfaces(netdev string) string {
	var names []string
	for _, line := range strings.Split(netdev, "\n") {
		if i := strings.Index(line, ":"); i > 0 && !strings.Contains(line, "|") {
			names = append(names, strings.TrimSpace(line[:i]))
		}
	}
	return strings.Join(names, " ")
}

func summarize(names []string) string {
	if len(names) > 6 {
		return strings.Join(names[:6], " ") + fmt.Sprintf(" … (%d)", len(names))
	}
	return strings.Join(names, " ")
}

func nsLink(pid int, ns string) string {
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, ns))
	if err != nil {
		return "?"
	}
	return strings.TrimSuffix(strings.TrimPrefix(l, ns+":["), "]")
}
