package main

import (
	"context"
	"fmt"
	"net"
	"path"
	"strings"
	"syscall"

	"github.com/nsplug/nsplug/sdk"
)

// Plugin returns the netinfo plugin. Its handlers use netlink only
// (net.Interfaces and a raw RTM_GETROUTE dump): nothing is read from the
// target's filesystem, so they work in a FROM-scratch target without
// /proc or /sys, and no fresh mount is needed.
func Plugin() *sdk.Plugin {
	return &sdk.Plugin{
		Name:      "netinfo",
		Configure: sdk.TypedOptions(Options{}, checkOptions),
		Handlers: []sdk.Handler{
			sdk.Handle("netinfo.interfaces", "list network interfaces: name, index, mtu, flags, addresses", interfaces),
			sdk.Handle("netinfo.route", "list routes of the main (or local, or every) table", routes),
		},
	}
}

// Options are the plugin's [plugin.options].
type Options struct {
	// Exclude hides interfaces whose name matches one of these
	// path.Match patterns ("veth*") from every response.
	Exclude []string `json:"exclude"`
}

// checkOptions validates the options once, when the plugin is loaded (an
// unknown key or a wrong type the sdk refuses before).
func checkOptions(o *Options) error {
	for i, p := range o.Exclude {
		if _, err := path.Match(p, ""); err != nil {
			return sdk.OptionErrorf(fmt.Sprintf("exclude[%d]", i), "pattern %q: %v", p, err)
		}
	}
	return nil
}

func (o *Options) excluded(name string) bool {
	for _, p := range o.Exclude {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// InterfacesRequest asks for every interface, or for the one named.
type InterfacesRequest struct {
	// Name, when set, selects one interface; ENODEV if the target's
	// network namespace has none of that name.
	Name string `json:"name,omitempty"`
}

// Interface is one network interface as the target sees it.
type Interface struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
	MTU   int    `json:"mtu"`
	// HardwareAddr is the link-layer address; omitted when it is all
	// zeros (loopback) or absent.
	HardwareAddr string `json:"hardware_addr,omitempty"`
	// Flags are among up, broadcast, loopback, pointtopoint, multicast
	// and running.
	Flags []string `json:"flags"`
	// Addrs are the interface's addresses with their prefix length,
	// "127.0.0.1/8", "::1/128".
	Addrs []string `json:"addrs"`
}

// InterfacesResponse lists interfaces by index.
type InterfacesResponse struct {
	Interfaces []Interface `json:"interfaces"`
}

func interfaces(ctx context.Context, req InterfacesRequest) (InterfacesResponse, error) {
	env := sdk.EnvFrom(ctx)
	opts := sdk.OptionsFrom[Options](ctx)
	// net.Interfaces asks the kernel over netlink (RTM_GETLINK), in the
	// network namespace this process joined before Go started.
	ifs, err := net.Interfaces()
	if err != nil {
		return InterfacesResponse{}, err // keeps the errno of the netlink failure
	}
	resp := InterfacesResponse{Interfaces: []Interface{}}
	hidden := 0
	for _, ifi := range ifs {
		if opts.excluded(ifi.Name) {
			hidden++
			continue
		}
		if req.Name != "" && ifi.Name != req.Name {
			continue
		}
		out := Interface{Name: ifi.Name, Index: ifi.Index, MTU: ifi.MTU, Flags: []string{}, Addrs: []string{}}
		if len(ifi.HardwareAddr) > 0 {
			out.HardwareAddr = ifi.HardwareAddr.String()
		}
		if ifi.Flags != 0 {
			out.Flags = strings.Split(ifi.Flags.String(), "|")
		}
		addrs, err := ifi.Addrs() // RTM_GETADDR
		if err != nil {
			return InterfacesResponse{}, err
		}
		for _, a := range addrs {
			out.Addrs = append(out.Addrs, a.String())
		}
		resp.Interfaces = append(resp.Interfaces, out)
	}
	if req.Name != "" && len(resp.Interfaces) == 0 {
		return resp, sdk.Errorf(syscall.ENODEV, "no network interface %q in the target", req.Name)
	}
	env.Log.Debug("listed interfaces", "count", len(resp.Interfaces), "excluded", hidden)
	return resp, nil
}
