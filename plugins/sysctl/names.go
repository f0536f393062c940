package sysctl

import (
	"strings"
	"syscall"

	"github.com/nsplug/nsplug/sdk/handler"
)

// Bounds on what a request may name or write.
const (
	MaxNameLen      = 256      // bytes of a whole name
	MaxComponentLen = 64       // bytes of one component
	MaxComponents   = 10       // depth of the deepest /proc/sys entry, with room
	MaxValueLen     = 4096     // bytes written by sysctl.set (the kernel's PAGE_SIZE limit)
	MaxReadLen      = 64 << 10 // bytes read from one entry
)

// name is a parsed sysctl name: its components as the kernel names the
// files under /proc/sys (a component may hold a literal '.', as VLAN
// interface names like "eth0.100" do).
type name []string

// parseName parses a sysctl name in dotted or slash form.
//
// The rule is procps sysctl(8)'s: the first separator in the name decides.
// If it is '.', the name is dotted: '.' separates components and '/' in a
// component stands for a literal '.' ("net.ipv4.conf.eth0/100.rp_filter").
// If it is '/', the name is in slash form: '/' separates and '.' is literal
// ("net/ipv4/conf/eth0.100/rp_filter"). Components use letters, digits,
// '_', '-' and bytes from 0x80 up (interface names need not be UTF-8, and
// the name is bytes, handler.Name); a literal '.' must sit between two other
// characters, so no component is "." or ".." or starts or ends with a dot.
//
// what names the field in error messages ("name", "prefix").
func parseName(what, s string) (name, error) {
	if s == "" {
		return nil, handler.Errorf(syscall.EINVAL, "%s is empty", what)
	}
	if len(s) > MaxNameLen {
		return nil, handler.Errorf(syscall.EINVAL, "%s is %d bytes long, at most %d are allowed", what, len(s), MaxNameLen)
	}
	sep, lit := byte('.'), byte('/')
	if i := strings.IndexAny(s, "./"); i >= 0 && s[i] == '/' {
		sep, lit = '/', '.'
	}
	parts := strings.Split(s, string(sep))
	if len(parts) > MaxComponents {
		return nil, handler.Errorf(syscall.EINVAL, "%s %q has %d components, at most %d are allowed", what, s, len(parts), MaxComponents)
	}
	out := make(name, len(parts))
	for i, p := range parts {
		if p == "" {
			return nil, handler.Errorf(syscall.EINVAL, "%s %q has an empty component (leading, trailing or doubled %q)", what, s, sep)
		}
		if len(p) > MaxComponentLen {
			return nil, handler.Errorf(syscall.EINVAL, "%s %q: component %q is longer than %d bytes", what, s, p, MaxComponentLen)
		}
		for j := 0; j < len(p); j++ {
			c := p[j]
			switch {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-', c >= 0x80:
			case c == lit:
				if j == 0 || j == len(p)-1 || p[j-1] == lit {
					return nil, handler.Errorf(syscall.EINVAL, "%s %q: component %q: a literal %q (written %q) must sit between other characters", what, s, strings.ReplaceAll(p, string(lit), "."), '.', lit)
				}
			default:
				return nil, handler.Errorf(syscall.EINVAL, "%s %q: character %q is not allowed (letters, digits, '_', '-', bytes from 0x80 and separators only)", what, s, c)
			}
		}
		out[i] = strings.ReplaceAll(p, string(lit), ".")
	}
	return out, nil
}

// String is the canonical, dotted form: a literal '.' becomes '/'.
func (n name) String() string {
	parts := make([]string, len(n))
	for i, c := range n {
		parts[i] = strings.ReplaceAll(c, ".", "/")
	}
	return strings.Join(parts, ".")
}

// path is the entry's path relative to the root of a procfs.
func (n name) path() string {
	return "sys/" + strings.Join(n, "/")
}

// checkValue validates a value for sysctl.set.
func checkValue(v string) error {
	if v == "" {
		return handler.Errorf(syscall.EINVAL, "value is empty")
	}
	if len(v) > MaxValueLen {
		return handler.Errorf(syscall.EINVAL, "value is %d bytes long, at most %d are allowed", len(v), MaxValueLen)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return handler.Errorf(syscall.EINVAL, "value contains control character %q at byte %d (only tab is allowed; no newline)", c, i)
		}
	}
	return nil
}
