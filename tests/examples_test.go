package tests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core"
	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/sdk/sdktest"
)

// The example third-party plugin, examples/netinfo: its own module, built
// with go build in its directory, named in the configuration by path and
// sha256 like any plugin a user installs.

// exNetinfo is the response of netinfo.interfaces.
type exNetinfo struct {
	Interfaces []struct {
		Name         string   `json:"name"`
		Index        int      `json:"index"`
		MTU          int      `json:"mtu"`
		HardwareAddr string   `json:"hardware_addr"`
		Flags        []string `json:"flags"`
		Addrs        []string `json:"addrs"`
	} `json:"interfaces"`
}

// exRoutes is the response of netinfo.route.
type exRoutes struct {
	Routes []struct {
		Family   string `json:"family"`
		Dst      string `json:"dst"`
		Gateway  string `json:"gateway"`
		Dev      string `json:"dev"`
		Src      string `json:"src"`
		Table    string `json:"table"`
		Type     string `json:"type"`
		Scope    string `json:"scope"`
		Protocol string `json:"protocol"`
		Metric   uint32 `json:"metric"`
	} `json:"routes"`
}

// exPluginTOML is the [[plugin]] entry of a built netinfo.
func exPluginTOML(bin, sum string) string {
	return fmt.Sprintf("[[plugin]]\nname = \"netinfo\"\npath = %q\nsha256 = %q\n", bin, sum)
}

// exIP runs ip(8) with args in the network namespace of pid (only that
// namespace: the host's ip binary and root privileges) and returns its
// JSON output decoded into out.
func exIP(t *testing.T, pid int, out any, args ...string) {
	t.Helper()
	cmd := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(pid), "-n", "ip"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	data, err := cmd.Output()
	if err != nil {
		t.Fatalf("nsenter -n ip %s: %v: %s", strings.Join(args, " "), err, stderr.Bytes())
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, data)
		}
	}
}

// exIPInterfaces describes the interfaces of pid's network namespace as
// ip -j addr shows them, in netinfo's terms: "name index mtu hwaddr
// flags addrs", one string per interface.
func exIPInterfaces(t *testing.T, pid int) []string {
	t.Helper()
	var links []struct {
		Index   int      `json:"ifindex"`
		Name    string   `json:"ifname"`
		Flags   []string `json:"flags"`
		MTU     int      `json:"mtu"`
		Address string   `json:"address"`
		Addrs   []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	exIP(t, pid, &links, "-j", "addr", "show")
	var out []string
	for _, l := range links {
		var flags []string
		for _, f := range l.Flags {
			// IFF_* flags net.Flags has a name for; ip does not print
			// IFF_RUNNING (it prints LOWER_UP), so that one is left out.
			if n, ok := map[string]string{"UP": "up", "BROADCAST": "broadcast", "LOOPBACK": "loopback",
				"POINTOPOINT": "pointtopoint", "MULTICAST": "multicast"}[f]; ok {
				flags = append(flags, n)
			}
		}
		sort.Strings(flags)
		hw := l.Address
		if strings.Trim(hw, "0:") == "" {
			hw = "" // all zeros: netinfo (net.Interface) leaves it out
		}
		var addrs []string
		for _, a := range l.Addrs {
			addrs = append(addrs, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
		}
		sort.Strings(addrs)
		out = append(out, fmt.Sprintf("%s %d mtu=%d hw=%s flags=%v addrs=%v", l.Name, l.Index, l.MTU, hw, flags, addrs))
	}
	return out
}

// exPluginInterfaces is the same description from netinfo's response.
func exPluginInterfaces(resp exNetinfo) []string {
	var out []string
	for _, i := range resp.Interfaces {
		var flags []string
		for _, f := range i.Flags {
			if f != "running" {
				flags = append(flags, f)
			}
		}
		sort.Strings(flags)
		addrs := slices.Clone(i.Addrs)
		sort.Strings(addrs)
		out = append(out, fmt.Sprintf("%s %d mtu=%d hw=%s flags=%v addrs=%v", i.Name, i.Index, i.MTU, i.HardwareAddr, flags, addrs))
	}
	return out
}

// exIPRoutes describes the main table's routes of family ("-4" or "-6")
// as ip -j route shows them: "dst via gw dev d src s metric m", sorted.
func exIPRoutes(t *testing.T, pid int, family string) []string {
	t.Helper()
	var routes []struct {
		Dst     string `json:"dst"`
		Gateway string `json:"gateway"`
		Dev     string `json:"dev"`
		PrefSrc string `json:"prefsrc"`
		Metric  uint32 `json:"metric"`
	}
	exIP(t, pid, &routes, "-j", family, "route", "show", "table", "main")
	var out []string
	for _, r := range routes {
		dst := r.Dst
		if dst != "default" && !strings.Contains(dst, "/") {
			dst += map[string]string{"-4": "/32", "-6": "/128"}[family] // ip leaves out a host route's length
		}
		out = append(out, fmt.Sprintf("%s via %s dev %s src %s metric %d", dst, r.Gateway, r.Dev, r.PrefSrc, r.Metric))
	}
	sort.Strings(out)
	return out
}

func exPluginRoutes(resp exRoutes, family string) []string {
	var out []string
	for _, r := range resp.Routes {
		if r.Family == family {
			out = append(out, fmt.Sprintf("%s via %s dev %s src %s metric %d", r.Dst, r.Gateway, r.Dev, r.Src, r.Metric))
		}
	}
	sort.Strings(out)
	return out
}

// The example plugin, called through the core in three kinds of target
// with a network namespace of their own, reports what ip(8) sees there.
func TestNetinfoExample(t *testing.T) {
	parallel(t)
	bin := sdktest.Build(t, "../examples/netinfo")
	sum := sha256File(t, bin)
	for _, kind := range []struct {
		name string
		opts sandbox.Options
	}{
		{"container", sandbox.Options{Hostname: "net-ctr", MountProc: true}},
		{"rootless", sandbox.Options{Hostname: "net-rootless", Rootless: true, MountProc: true}},
		// No /proc, no /sys, no libc: netlink needs none of them.
		{"scratch", sandbox.Options{Hostname: "net-scratch", Rootless: true, Scratch: true}},
	} {
		t.Run(kind.name, func(t *testing.T) {
			target := newTarget(t, kind.opts)
			pid := target.PID()
			d, _ := newDispatcher(t, exPluginTOML(bin, sum))

			// A fresh network namespace: only lo, down, no address.
			var ifs exNetinfo
			mustCall(t, d, pid, "netinfo.interfaces", `{}`, &ifs)
			got, want := exPluginInterfaces(ifs), exIPInterfaces(t, pid)
			if !slices.Equal(got, want) || len(got) != 1 || !strings.HasPrefix(got[0], "lo 1 ") {
				t.Errorf("interfaces:\n netinfo %q\n ip      %q", got, want)
			}
			h := servingPID(t, d, "netinfo")
			if nsInode(t, h, "net") != nsInode(t, pid, "net") {
				t.Errorf("the handler is not in the target's network namespace")
			}

			// Give the target a network: lo up, a veth pair (both ends
			// inside; nothing changes on the host), an address, routes.
			for _, args := range [][]string{
				{"link", "set", "lo", "up"},
				{"link", "add", "eth0", "type", "veth", "peer", "name", "peer0"},
				{"link", "set", "eth0", "addrgenmode", "none"}, // no IPv6 link-local racing the comparison
				{"link", "set", "peer0", "addrgenmode", "none"},
				{"link", "set", "eth0", "mtu", "1400"},
				{"addr", "add", "10.11.12.2/24", "dev", "eth0"},
				{"link", "set", "peer0", "up"},
				{"link", "set", "eth0", "up"},
				{"route", "add", "default", "via", "10.11.12.1"},
				{"route", "add", "192.0.2.0/24", "via", "10.11.12.254", "metric", "50"},
			} {
				exIP(t, pid, nil, args...)
			}
			mustCall(t, d, pid, "netinfo.interfaces", `{}`, &ifs)
			got, want = exPluginInterfaces(ifs), exIPInterfaces(t, pid)
			if !slices.Equal(got, want) || len(got) != 3 {
				t.Errorf("interfaces:\n netinfo %q\n ip      %q", got, want)
			}
			var eth0 exNetinfo
			mustCall(t, d, pid, "netinfo.interfaces", `{"name":"eth0"}`, &eth0)
			if len(eth0.Interfaces) != 1 || eth0.Interfaces[0].MTU != 1400 ||
				!slices.Equal(eth0.Interfaces[0].Addrs, []string{"10.11.12.2/24"}) || !slices.Contains(eth0.Interfaces[0].Flags, "up") {
				t.Errorf("eth0: %+v", eth0)
			}

			var routes exRoutes
			mustCall(t, d, pid, "netinfo.route", `{}`, &routes)
			for _, fam := range []struct{ ip, netinfo string }{{"-4", "inet"}, {"-6", "inet6"}} {
				got, want := exPluginRoutes(routes, fam.netinfo), exIPRoutes(t, pid, fam.ip)
				if !slices.Equal(got, want) || (fam.netinfo == "inet" && len(got) != 3) {
					t.Errorf("%s routes:\n netinfo %q\n ip      %q", fam.netinfo, got, want)
				}
			}
			foundDefault := false
			for _, r := range routes.Routes {
				if r.Dst == "default" && r.Gateway == "10.11.12.1" && r.Dev == "eth0" && r.Table == "main" && r.Type == "unicast" {
					foundDefault = true
				}
			}
			if !foundDefault {
				t.Errorf("no default route via 10.11.12.1: %+v", routes)
			}

			// Handler errors keep their errno through the core; the
			// payload is decoded strictly.
			wantErrno(t, call(t, d, pid, "netinfo.interfaces", `{"name":"wlan9"}`, nil), syscall.ENODEV, "wlan9")
			wantErrno(t, call(t, d, pid, "netinfo.interfaces", `{"nmae":"eth0"}`, nil), syscall.EINVAL, "nmae")
			wantErrno(t, call(t, d, pid, "netinfo.route", `{"family":"ipx"}`, nil), syscall.EINVAL, "ipx")
		})
	}
}

// Configured [plugin.options] reach the plugin (sdk.OptionsFrom); the
// command line serves it like any plugin, against a FROM-scratch target.
func TestNetinfoExampleConfiguration(t *testing.T) {
	parallel(t)
	bin := sdktest.Build(t, "../examples/netinfo")
	sum := sha256File(t, bin)
	target := newTarget(t, sandbox.Options{Rootless: true, Scratch: true})
	d, _ := newDispatcher(t, exPluginTOML(bin, sum)+"types = [\"netinfo.interfaces\"]\n[plugin.options]\nexclude = [\"l*\"]\n")
	var ifs exNetinfo
	mustCall(t, d, target.PID(), "netinfo.interfaces", `{}`, &ifs)
	if len(ifs.Interfaces) != 0 {
		t.Errorf("lo not excluded by the options: %+v", ifs)
	}
	wantErrno(t, call(t, d, target.PID(), "netinfo.interfaces", `{"name":"lo"}`, nil), syscall.ENODEV, "lo")
	// types restricts what is registered.
	wantErrno(t, call(t, d, target.PID(), "netinfo.route", `{}`, nil), syscall.EOPNOTSUPP, "netinfo.route")

	// Bad options fail the plugin's load (checked where it describes
	// itself), naming the option's line. (One core at a time: the leak
	// check of one counts the plugins of the other.)
	d.Close()
	d2, _ := newDispatcher(t, exPluginTOML(bin, sum)+"[plugin.options]\nexclude = 3\n")
	wantErrno(t, call(t, d2, target.PID(), "netinfo.interfaces", `{}`, nil), syscall.EOPNOTSUPP, "plugin netinfo", "failed to load", "test.toml:7:", "exclude")

	// nsplug call and nsplug plugins with the plugin in a config file.
	conf := cliConfig(t, exPluginTOML(bin, sum))
	stdout, stderr, code := runCLI(t, "call", "--config", conf, "--pid", strconv.Itoa(target.PID()), "netinfo.interfaces")
	if code != 0 || !strings.Contains(stdout, `"name": "lo"`) {
		t.Errorf("nsplug call: exit %d\n%s\n%s", code, stdout, stderr)
	}
	stdout, stderr, code = runCLI(t, "plugins", "--json", "--config", conf)
	var out struct {
		ProtocolVersion int               `json:"protocol_version"`
		Plugins         []core.PluginInfo `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(stdout), &out); err != nil || code != 0 {
		t.Fatalf("plugins --json: exit %d, %v\n%s\n%s", code, err, stdout, stderr)
	}
	var netinfo *core.PluginInfo
	for i := range out.Plugins {
		if out.Plugins[i].Name == "netinfo" {
			netinfo = &out.Plugins[i]
		}
	}
	if netinfo == nil || netinfo.Builtin || netinfo.Path != bin || netinfo.SHA256 != sum || netinfo.Mode != "pooled" {
		t.Fatalf("plugins --json: netinfo is %+v\n%s", netinfo, stdout)
	}
	var types []string
	for _, ty := range netinfo.Types {
		if ty.Version != 1 || ty.Description == "" || ty.Plugin != "netinfo" {
			t.Errorf("type %+v: want version 1 and a description", ty)
		}
		types = append(types, ty.Name)
	}
	if !slices.Equal(types, []string{"netinfo.interfaces", "netinfo.route"}) {
		t.Errorf("types %v", types)
	}
	stdout, _, _ = runCLI(t, "plugins", "--config", conf)
	if !strings.Contains(stdout, bin) || !strings.Contains(stdout, "netinfo.route") || !strings.Contains(stdout, "v1") {
		t.Errorf("plugins:\n%s", stdout)
	}
}

// exLockedBuffer is a log destination safe for concurrent writes.
type exLockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *exLockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *exLockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// What a handler logs through Env.Log reaches the embedder's logger
// (core.Options.Logger) under the plugin's name, with the request id and
// the target pid, at the configured log_level and not below it.
func TestPluginLogsReachTheCoresLogger(t *testing.T) {
	parallel(t)
	bin := sdktest.Build(t, "../examples/netinfo")
	sum := sha256File(t, bin)
	target := newTarget(t, sandbox.Options{})
	for _, level := range []string{"debug", "info"} {
		t.Run(level, func(t *testing.T) {
			var logs exLockedBuffer
			// The embedder's logger takes everything; what the plugin
			// sends is the configuration's business.
			logger := hclog.New(&hclog.LoggerOptions{Name: "host", Level: hclog.Trace, Output: &logs})
			runDir := t.TempDir()
			before := snapshot(t)
			cfg, err := config.Parse([]byte(fmt.Sprintf("runtime_dir = %q\nlog_level = %q\n%s", runDir, level, exPluginTOML(bin, sum))), "logs.toml")
			if err != nil {
				t.Fatal(err)
			}
			d, err := core.New(cfg, core.Options{Logger: logger, Started: before.started.add})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				d.Close()
				before.assertNoLeaks(t, runDir)
			})
			mustCall(t, d, target.PID(), "netinfo.interfaces", `{}`, nil)
			mustCall(t, d, target.PID(), "netinfo.route", `{}`, nil)
			d.Close() // flushes the plugin's stderr into the log

			var lines []string
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, "listed ") {
					lines = append(lines, l)
				}
			}
			if level == "info" {
				if len(lines) != 0 {
					t.Errorf("debug lines logged at log_level info:\n%s", strings.Join(lines, "\n"))
				}
				return
			}
			if len(lines) != 2 {
				t.Fatalf("want the two handlers' debug lines, got %q in\n%s", lines, logs.String())
			}
			ids := map[string]bool{}
			for _, l := range lines {
				for _, want := range []string{"[DEBUG]", "host.netinfo", "@module=netinfo", fmt.Sprintf("target_pid=%d", target.PID()), "type=netinfo."} {
					if !strings.Contains(l, want) {
						t.Errorf("log line lacks %q: %s", want, l)
					}
				}
				_, id, ok := strings.Cut(l, "request_id=")
				id, _, _ = strings.Cut(id, " ")
				if !ok || id == "" {
					t.Errorf("log line without request_id: %s", l)
				}
				ids[id] = true
			}
			if len(ids) != 2 {
				t.Errorf("two requests logged with request ids %v", ids)
			}
		})
	}
}
