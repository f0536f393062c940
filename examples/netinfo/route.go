package main

import (
	"context"
	"encoding/binary"
	"net"
	"strconv"
	"syscall"
	"unsafe"

	"github.com/nsplug/nsplug/sdk"
)

// RouteRequest selects routes.
type RouteRequest struct {
	// Family is "inet", "inet6" or "" for both.
	Family string `json:"family,omitempty"`
	// Table is "main" (the default, what `ip route` shows), "local" or
	// "all".
	Table string `json:"table,omitempty"`
}

// Route is one route, in `ip route`'s words.
type Route struct {
	Family   string `json:"family"`            // inet or inet6
	Dst      string `json:"dst"`               // "default" or a prefix, "10.0.0.0/24"
	Gateway  string `json:"gateway,omitempty"` // next hop
	Dev      string `json:"dev,omitempty"`     // output interface
	Src      string `json:"src,omitempty"`     // preferred source address
	Table    string `json:"table"`             // main, local, default or a number
	Type     string `json:"type"`              // unicast, local, broadcast, ...
	Scope    string `json:"scope"`             // universe (global), link, host, ...
	Protocol string `json:"protocol"`          // kernel, boot, static, ...
	Metric   uint32 `json:"metric,omitempty"`
}

// RouteResponse lists routes in the kernel's order.
type RouteResponse struct {
	Routes []Route `json:"routes"`
}

func routes(ctx context.Context, req RouteRequest) (RouteResponse, error) {
	env := sdk.EnvFrom(ctx)
	opts := sdk.OptionsFrom[Options](ctx)
	family := syscall.AF_UNSPEC
	switch req.Family {
	case "":
	case "inet":
		family = syscall.AF_INET
	case "inet6":
		family = syscall.AF_INET6
	default:
		return RouteResponse{}, sdk.Errorf(syscall.EINVAL, "netinfo.route: family %q (want inet, inet6 or empty)", req.Family)
	}
	table := req.Table
	switch table {
	case "":
		table = "main"
	case "main", "local", "all":
	default:
		return RouteResponse{}, sdk.Errorf(syscall.EINVAL, "netinfo.route: table %q (want main, local or all)", req.Table)
	}
	names := map[int]string{}
	ifs, err := net.Interfaces()
	if err != nil {
		return RouteResponse{}, err
	}
	for _, ifi := range ifs {
		names[ifi.Index] = ifi.Name
	}

	// A dump of the routing tables over netlink, as `ip route` asks for it.
	rib, err := syscall.NetlinkRIB(syscall.RTM_GETROUTE, family)
	if err != nil {
		return RouteResponse{}, sdk.AsError(err)
	}
	msgs, err := syscall.ParseNetlinkMessage(rib)
	if err != nil {
		return RouteResponse{}, sdk.Errorf(syscall.EIO, "netinfo.route: parsing the netlink dump: %v", err)
	}
	resp := RouteResponse{Routes: []Route{}}
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Type != syscall.RTM_NEWROUTE || len(m.Data) < syscall.SizeofRtMsg {
			continue
		}
		rt := (*syscall.RtMsg)(unsafe.Pointer(&m.Data[0]))
		attrs, err := syscall.ParseNetlinkRouteAttr(m)
		if err != nil {
			return RouteResponse{}, sdk.Errorf(syscall.EIO, "netinfo.route: parsing a route: %v", err)
		}
		r := Route{
			Family:   familyName(rt.Family),
			Dst:      "default",
			Type:     lookup(routeTypes, rt.Type),
			Scope:    lookup(scopes, rt.Scope),
			Protocol: lookup(protocols, rt.Protocol),
		}
		tableID := uint32(rt.Table)
		for _, a := range attrs {
			switch a.Attr.Type {
			case syscall.RTA_DST:
				r.Dst = (&net.IPNet{IP: net.IP(a.Value), Mask: net.CIDRMask(int(rt.Dst_len), 8*len(a.Value))}).String()
			case syscall.RTA_GATEWAY:
				r.Gateway = net.IP(a.Value).String()
			case syscall.RTA_PREFSRC:
				r.Src = net.IP(a.Value).String()
			case syscall.RTA_OIF:
				if len(a.Value) == 4 {
					idx := int(binary.NativeEndian.Uint32(a.Value))
					r.Dev = names[idx]
					if r.Dev == "" {
						r.Dev = "if" + strconv.Itoa(idx)
					}
				}
			case syscall.RTA_PRIORITY:
				if len(a.Value) == 4 {
					r.Metric = binary.NativeEndian.Uint32(a.Value)
				}
			case syscall.RTA_TABLE:
				if len(a.Value) == 4 {
					tableID = binary.NativeEndian.Uint32(a.Value)
				}
			}
		}
		r.Table = lookup(tables, tableID)
		if table != "all" && r.Table != table {
			continue
		}
		if r.Dev != "" && opts.excluded(r.Dev) {
			continue
		}
		resp.Routes = append(resp.Routes, r)
	}
	env.Log.Debug("listed routes", "count", len(resp.Routes), "table", table)
	return resp, nil
}

func familyName(f uint8) string {
	switch f {
	case syscall.AF_INET:
		return "inet"
	case syscall.AF_INET6:
		return "inet6"
	}
	return "family" + strconv.Itoa(int(f))
}

// Names as iproute2 prints them (/usr/share/iproute2/rt_*, linux/rtnetlink.h).
var (
	tables     = map[uint32]string{253: "default", 254: "main", 255: "local"}
	scopes     = map[uint8]string{0: "universe", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
	protocols  = map[uint8]string{0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 16: "dhcp"}
	routeTypes = map[uint8]string{0: "unspec", 1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
		6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat", 11: "xresolve"}
)

func lookup[K uint8 | uint32](names map[K]string, k K) string {
	if n, ok := names[k]; ok {
		return n
	}
	return strconv.FormatUint(uint64(k), 10)
}
