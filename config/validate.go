package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nsplug/nsplug/nsexec/boot"
	"github.com/nsplug/nsplug/wire"
)

var (
	logLevels   = []string{"trace", "debug", "info", "warn", "error"}
	modes       = []string{"pooled", "oneshot"}
	freshMounts = []string{"proc", "sys", "cgroup"}
)

// validPluginName reports whether name matches [a-z0-9][a-z0-9_-]*.
// These checks are loops rather than regexps: a regexp compiled at init
// is paid by every process of the binary (CLI, daemon, each plugin start).
func validPluginName(name string) bool {
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || i > 0 && (c == '_' || c == '-')) {
			return false
		}
	}
	return name != ""
}

// validSHA256 reports whether sum is 64 lower-case hex digits.
func validSHA256(sum string) bool {
	for i := 0; i < len(sum); i++ {
		if c := sum[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return len(sum) == 64
}

// namespaces are the names the preamble knows, in its order.
var namespaces = func() []string {
	var names []string
	for _, ns := range boot.Namespaces {
		names = append(names, ns.Name)
	}
	return names
}()

// checkTypeName is the one rule for message type names, the contract's (wire): a
// type the configuration may name is one a plugin may serve.
func checkTypeName(name string) error { return wire.CheckTypeName(name) }

// Validate checks every value of c and reports all problems, joined with
// errors.Join. Each message names the key, the plugin (by index, counted from
// 1, and name) and, for a Config returned by Load or Parse, the file and
// line. Line numbers are dropped for a plugin whose entry no longer matches
// the parsed file (e.g. after reordering c.Plugins).
//
// Everything the configuration alone decides is checked here, including
// what the nsexec preamble can carry out (unshare); what only loading a
// plugin can tell (its executable, its options, the types it serves) is
// checked by core.New, which calls Validate first.
//
// Validate normalizes Plugin.SHA256 to lowercase. Load and Parse call it;
// embedders building a Config in Go (preferably starting from Default)
// should call it too.
func (c *Config) Validate() error {
	v := &validator{src: c.src}
	root := key{}

	v.oneOf(root.child("log_level"), c.LogLevel, "log level", logLevels)
	if k := root.child("runtime_dir"); !filepath.IsAbs(c.RuntimeDir) {
		v.fail(k, "", "must be an absolute path, got %q", c.RuntimeDir)
	}
	for _, n := range []struct {
		key string
		val int64
	}{
		{"max_instances", int64(c.MaxInstances)},
		{"max_starts_per_target", int64(c.MaxStartsPerTarget)},
		{"max_queued_starts", int64(c.MaxQueuedStarts)},
		{"max_plugin_bytes", c.MaxPluginBytes},
	} {
		if n.val < 1 {
			v.fail(root.child(n.key), "", "must be at least 1, got %d", n.val)
		}
	}
	if k := root.child("max_starts"); c.MaxStarts < 0 {
		v.fail(k, "", "must be at least 0 (0: twice the CPU count), got %d", c.MaxStarts)
	}
	v.settings(root.child("defaults"), &c.Defaults, false)

	seen := make(map[string]int, len(c.Plugins))
	for i := range c.Plugins {
		p := &c.Plugins[i]
		pk := c.pluginKey(i, p.Name)
		switch k := pk.child("name"); {
		case p.Name == "":
			v.fail(k, "", "required")
		case !validPluginName(p.Name):
			v.fail(k, "", "invalid plugin name %q (want [a-z0-9][a-z0-9_-]*)", p.Name)
		default:
			if j, dup := seen[p.Name]; dup {
				v.fail(k, "", "duplicate plugin name %q (also used by plugin #%d)", p.Name, j+1)
			} else {
				seen[p.Name] = i
			}
		}
		if k := pk.child("path"); p.Path != "" && !filepath.IsAbs(p.Path) {
			v.fail(k, "", "must be an absolute path, got %q", p.Path)
		}
		if k := pk.child("sha256"); p.SHA256 != "" {
			sum := strings.ToLower(p.SHA256)
			switch {
			case p.Path == "":
				v.fail(k, "", `set without "path" (built-in plugins are part of the nsplug binary and cannot be pinned)`)
			case !validSHA256(sum):
				v.fail(k, "", "invalid sha256 %q (want 64 hex digits)", p.SHA256)
			default:
				p.SHA256 = sum
			}
		}
		k := pk.child("types")
		for j, t := range p.Types {
			if err := checkTypeName(t); err != nil {
				v.fail(k, k.elem(j).canon, "%v", err)
			} else if slices.Contains(p.Types[:j], t) {
				v.fail(k, k.elem(j).canon, "duplicate message type %q", t)
			}
		}
		if k := pk.child("options"); p.Options != nil {
			if _, err := json.Marshal(p.Options); err != nil {
				v.fail(k, "", "cannot be passed to the plugin as JSON: %v", err)
			}
		}
		v.settings(pk, &p.Settings, true)
	}
	v.server(root.child("server"), &c.Server)
	return errors.Join(v.errs...)
}

type validator struct {
	src  *source
	errs []error
}

func (v *validator) fail(k key, at string, format string, args ...any) {
	v.errs = append(v.errs, v.src.keyError(k, at, fmt.Sprintf(format, args...)))
}

// set reports whether a settings field at its zero value must nevertheless be
// validated: always in [defaults], and in a [[plugin]] when the file wrote
// the key explicitly.
func (v *validator) set(k key, isZero, override bool) bool {
	return !isZero || !override || v.src.line(k.canon, k.plugin) > 0
}

func (v *validator) oneOf(k key, val, what string, valid []string) {
	if !slices.Contains(valid, val) {
		v.fail(k, "", "invalid %s %q (want %s)", what, val, alternatives(valid))
	}
}

// list checks that vals are distinct members of valid; it reports whether
// they are.
func (v *validator) list(k key, vals []string, what string, valid []string) bool {
	ok := true
	for i, s := range vals {
		at := k.elem(i).canon
		if !slices.Contains(valid, s) {
			v.fail(k, at, "unknown %s %q (want %s)", what, s, alternatives(valid))
			ok = false
		} else if slices.Contains(vals[:i], s) {
			v.fail(k, at, "duplicate %s %q", what, s)
			ok = false
		}
	}
	return ok
}

func (v *validator) settings(k key, s *Settings, override bool) {
	v.list(k.child("namespaces"), s.Namespaces, "namespace", namespaces)
	if mk := k.child("mode"); v.set(mk, s.Mode == "", override) {
		v.oneOf(mk, s.Mode, "mode", modes)
	}
	for _, d := range []struct {
		key string
		val time.Duration
	}{
		{"idle_timeout", s.IdleTimeout.Duration},
		{"request_timeout", s.RequestTimeout.Duration},
		{"start_timeout", s.StartTimeout.Duration},
	} {
		if dk := k.child(d.key); v.set(dk, d.val == 0, override) && d.val <= 0 {
			v.fail(dk, "", "must be a positive duration, got %q", d.val.String())
		}
	}
	rk := k.child("allowed_roots")
	for i, r := range s.AllowedRoots {
		switch at := rk.elem(i).canon; {
		case !filepath.IsAbs(r):
			v.fail(rk, at, "%q is not an absolute path", r)
		case filepath.Clean(r) != r:
			v.fail(rk, at, "%q is not a clean path (want %q)", r, filepath.Clean(r))
		}
	}
	v.list(k.child("fresh_mounts"), s.FreshMounts, "fresh mount", freshMounts)
	if uk := k.child("unshare"); v.list(uk, s.Unshare, "namespace", namespaces) {
		// The preamble's rule: what it cannot unshare once joined.
		for i, ns := range s.Unshare {
			flags, _ := boot.ParseNamespaces([]string{ns})
			if err := (boot.Bootstrap{Unshare: flags}).Validate(); err != nil {
				v.fail(uk, uk.elem(i).canon, "%v", err)
			}
		}
	}
	v.list(k.child("allow_host_changes"), s.AllowHostChanges, "namespace", namespaces)
}

func alternatives(valid []string) string {
	q := make([]string, len(valid))
	for i, s := range valid {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}
