package main

import (
	"errors"
	"os"
	"slices"
	"strconv"
	"syscall"
	"testing"

	"github.com/nsplug/nsplug/sandbox"
	"github.com/nsplug/nsplug/sdk/sdktest"
)

// Tests of the built plugin through the real core, in targets with a
// network namespace of their own. They need root; without it they are
// skipped.

func TestInAFreshNetworkNamespace(t *testing.T) {
	bin := sdktest.Build(t, ".")
	for _, c := range []struct {
		name   string
		target sandbox.Options
	}{
		{"container", sandbox.Options{Hostname: "netinfo"}},
		{"rootless", sandbox.Options{Rootless: true}},
		{"scratch", sandbox.Options{Rootless: true, Scratch: true}}, // no /proc, no /sys, no libc
	} {
		t.Run(c.name, func(t *testing.T) {
			h := sdktest.NewHarness(t, sdktest.Config{PluginPath: bin, Target: c.target})
			var resp InterfacesResponse
			if err := h.Call("netinfo.interfaces", InterfacesRequest{}, &resp); err != nil {
				t.Fatal(err)
			}
			// A new network namespace has a loopback interface, down,
			// without addresses, and nothing else.
			want := []Interface{{Name: "lo", Index: 1, MTU: 65536, Flags: []string{"loopback"}, Addrs: []string{}}}
			if len(resp.Interfaces) != 1 || !equal(resp.Interfaces[0], want[0]) {
				t.Errorf("interfaces %+v, want %+v", resp.Interfaces, want)
			}
			// It ran in the target's network namespace.
			mine, _ := os.Readlink("/proc/" + strconv.Itoa(h.HandlerPID()) + "/ns/net")
			theirs, _ := os.Readlink("/proc/" + strconv.Itoa(h.Target().PID()) + "/ns/net")
			if mine != theirs {
				t.Errorf("handler in %s, target in %s", mine, theirs)
			}
			var routes RouteResponse
			if err := h.Call("netinfo.route", RouteRequest{Table: "all"}, &routes); err != nil || len(routes.Routes) != 0 {
				t.Errorf("routes of a namespace without addresses: %+v %v", routes, err)
			}
		})
	}
}

func TestOptionsFromTheConfiguration(t *testing.T) {
	h := sdktest.NewHarness(t, sdktest.Config{
		PluginPath: sdktest.Build(t, "."),
		PluginTOML: "[plugin.options]\nexclude = [\"lo\"]\n",
	})
	err := h.Call("netinfo.interfaces", InterfacesRequest{Name: "lo"}, nil)
	if !errors.Is(err, syscall.ENODEV) {
		t.Errorf("excluded lo: %v, want ENODEV", err)
	}
	var resp InterfacesResponse
	if err := h.Call("netinfo.interfaces", nil, &resp); err != nil || len(resp.Interfaces) != 0 {
		t.Errorf("with lo excluded: %+v %v", resp, err)
	}
}

func equal(a, b Interface) bool {
	return a.Name == b.Name && a.Index == b.Index && a.MTU == b.MTU && a.HardwareAddr == b.HardwareAddr &&
		slices.Equal(a.Flags, b.Flags) && slices.Equal(a.Addrs, b.Addrs)
}
