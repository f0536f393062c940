package main

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/nsplug/nsplug/sdk"
	"github.com/nsplug/nsplug/sdk/sdktest"
)

// In-process tests: the handlers run in the test process, through the
// sdk's server, and see the test process's own network namespace. No
// root needed.

func TestInterfacesInProcess(t *testing.T) {
	resp, err := sdktest.Call[InterfacesRequest, InterfacesResponse](t, Plugin(), "netinfo.interfaces", InterfacesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Interfaces) != len(want) {
		t.Fatalf("got %d interfaces, net.Interfaces has %d: %+v", len(resp.Interfaces), len(want), resp.Interfaces)
	}
	for i, ifi := range want {
		got := resp.Interfaces[i]
		if got.Name != ifi.Name || got.Index != ifi.Index || got.MTU != ifi.MTU {
			t.Errorf("interface %d: %+v, want %s index %d mtu %d", i, got, ifi.Name, ifi.Index, ifi.MTU)
		}
	}
}

func TestOptionsExcludeInterfaces(t *testing.T) {
	env := sdktest.Env{Options: map[string]any{"exclude": []string{"l?"}}}
	resp, err := sdktest.Call[InterfacesRequest, InterfacesResponse](t, Plugin(), "netinfo.interfaces", InterfacesRequest{}, env)
	if err != nil {
		t.Fatal(err)
	}
	for _, ifi := range resp.Interfaces {
		if ifi.Name == "lo" {
			t.Errorf("lo was not excluded: %+v", resp.Interfaces)
		}
	}
	// An excluded interface does not exist as far as requests go.
	_, err = sdktest.Call[InterfacesRequest, InterfacesResponse](t, Plugin(), "netinfo.interfaces", InterfacesRequest{Name: "lo"}, env)
	if !errors.Is(err, syscall.ENODEV) {
		t.Errorf("excluded lo by name: %v, want ENODEV", err)
	}
	// Bad options are refused by the plugin's Configure hook: EINVAL
	// in-process, where a core would refuse to load the plugin.
	bad := sdktest.Env{Options: map[string]any{"exclude": []string{"["}}}
	_, err = sdktest.Call[InterfacesRequest, InterfacesResponse](t, Plugin(), "netinfo.interfaces", InterfacesRequest{}, bad)
	if !errors.Is(err, syscall.EINVAL) {
		t.Errorf("bad pattern: %v, want EINVAL", err)
	}
	unknown := sdktest.Env{Options: map[string]any{"exlude": []string{"lo"}}}
	_, err = sdktest.Call[InterfacesRequest, InterfacesResponse](t, Plugin(), "netinfo.interfaces", InterfacesRequest{}, unknown)
	if !errors.Is(err, syscall.EINVAL) {
		t.Errorf("misspelt option: %v, want EINVAL", err)
	}
}

func TestErrorsKeepTheirErrno(t *testing.T) {
	_, err := sdktest.Call[InterfacesRequest, InterfacesResponse](t, Plugin(), "netinfo.interfaces", InterfacesRequest{Name: "nosuch0"})
	var e *sdk.Error
	if !errors.As(err, &e) || e.Errno != syscall.ENODEV {
		t.Errorf("unknown interface: %v, want ENODEV", err)
	}
	// Strict decoding: an unknown field is EINVAL, before the handler runs.
	_, err = sdktest.CallJSON(t, Plugin(), "netinfo.interfaces", `{"nmae":"lo"}`)
	if !errors.Is(err, syscall.EINVAL) {
		t.Errorf("misspelt field: %v, want EINVAL", err)
	}
	_, err = sdktest.Call[RouteRequest, RouteResponse](t, Plugin(), "netinfo.route", RouteRequest{Family: "ipx"})
	if !errors.Is(err, syscall.EINVAL) {
		t.Errorf("unknown family: %v, want EINVAL", err)
	}
	_, err = sdktest.CallJSON(t, Plugin(), "netinfo.nope", `{}`)
	if !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("unserved type: %v, want EOPNOTSUPP", err)
	}
}

func TestRoutesInProcess(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := sdktest.Call[RouteRequest, RouteResponse](t, Plugin(), "netinfo.route", RouteRequest{Table: "local"}, sdktest.Env{Context: ctx})
	if err != nil {
		t.Fatal(err)
	}
	// Every namespace with an address has local routes for it; the
	// loopback one of an up lo is 127.0.0.1.
	for _, r := range resp.Routes {
		if r.Table != "local" || r.Family == "" || r.Type == "" {
			t.Errorf("odd route %+v", r)
		}
	}
}
