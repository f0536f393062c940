package sysctl

import (
	"errors"
	"strings"
	"syscall"
	"testing"
)

func TestParseName(t *testing.T) {
	for _, c := range []struct {
		in, canon, path string
	}{
		{"net.ipv4.ip_forward", "net.ipv4.ip_forward", "sys/net/ipv4/ip_forward"},
		{"net/ipv4/ip_forward", "net.ipv4.ip_forward", "sys/net/ipv4/ip_forward"},
		{"kernel", "kernel", "sys/kernel"},
		{"fs.file-max", "fs.file-max", "sys/fs/file-max"},
		// VLAN interfaces: '/' is a literal dot in dotted form, '.' in slash form.
		{"net.ipv4.conf.eth0/100.rp_filter", "net.ipv4.conf.eth0/100.rp_filter", "sys/net/ipv4/conf/eth0.100/rp_filter"},
		{"net/ipv4/conf/eth0.100/rp_filter", "net.ipv4.conf.eth0/100.rp_filter", "sys/net/ipv4/conf/eth0.100/rp_filter"},
		{"net.ipv6.conf.br-lan.forwarding", "net.ipv6.conf.br-lan.forwarding", "sys/net/ipv6/conf/br-lan/forwarding"},
		// Interface names are bytes.
		{"net.ipv4.conf.a\xffb.rp_filter", "net.ipv4.conf.a\xffb.rp_filter", "sys/net/ipv4/conf/a\xffb/rp_filter"},
		{"net/ipv4/conf/caf\xc3\xa9.1/rp_filter", "net.ipv4.conf.caf\xc3\xa9/1.rp_filter", "sys/net/ipv4/conf/caf\xc3\xa9.1/rp_filter"},
	} {
		n, err := parseName("name", c.in)
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if n.String() != c.canon || n.path() != c.path {
			t.Errorf("%q: canonical %q path %q, want %q %q", c.in, n.String(), n.path(), c.canon, c.path)
		}
	}
}

func TestParseNameRejects(t *testing.T) {
	for _, c := range []struct {
		in, why string
	}{
		{"", "empty"},
		{".net", "empty component"},
		{"net.", "empty component"},
		{"net..ipv4", "empty component"},
		{"/net/ipv4", "empty component"},
		{"net//ipv4", "empty component"},
		{"net/../../etc", "must sit between"},
		{"net/./ipv4", "must sit between"},
		{"net.ipv4.conf./eth0.x", "must sit between"},
		{"net/ipv4/conf/eth0../x", "must sit between"},
		{"net.ipv4.conf.a//b.x", "must sit between"},
		{"net.ipv4.ip forward", "not allowed"},
		{"net.ipv4.*", "not allowed"},
		{"net.ipv4\x00.x", "not allowed"},
		{"kernel.hostname\n", "not allowed"},
		{"net.ipv4.conf.a\xff b.x", "not allowed"},
		{"net.ipv4.conf.\xff\x00.x", "not allowed"},
		{"net/ipv4/conf/\xff../x", "must sit between"},
		{"net.ipv4." + strings.Repeat("a", 65), "longer than 64"},
		{strings.Repeat("a.", 130) + "a", "bytes long"},
		{"a.b.c.d.e.f.g.h.i.j.k", "components"},
	} {
		_, err := parseName("name", c.in)
		if !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%q: %v, want EINVAL mentioning %q", c.in, err, c.why)
		}
	}
}

func TestCheckValue(t *testing.T) {
	for _, ok := range []string{"1", "4096\t131072\t6291456", "|/usr/bin/x %p", "a b"} {
		if err := checkValue(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "1\n", "a\x00b", "\x1b[0m", strings.Repeat("1", MaxValueLen+1)} {
		if err := checkValue(bad); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("%q: %v, want EINVAL", bad, err)
		}
	}
}
