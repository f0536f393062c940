package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/nsplug/nsplug/wire"
)

// tomlLines joins lines into a TOML document, so that a test case can count
// lines: lines[i] is line i+1.
func tomlLines(lines ...string) string { return strings.Join(lines, "\n") + "\n" }

// checkConfigErr fails unless err is non-nil and contains every one of want.
func checkConfigErr(t *testing.T, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error\n%v\ndoes not contain\n%s", err, w)
		}
	}
}

// withoutSource returns a copy of c without its source information, for
// comparisons.
func withoutSource(c *Config) *Config {
	n := c.clone()
	n.src = nil
	return n
}

// The defaults are stated once, in default.toml: it decodes and
// validates, sets every key of the schema but [[plugin]] (so that Default
// leaves nothing at a Go zero value by omission), and Default hands out
// independent copies of it.
func TestConfigDefault(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Errorf("Default().Validate() = %v", err)
	}
	if len(c.Plugins) != 0 {
		t.Errorf("Default has plugins: %+v", c.Plugins)
	}
	var raw map[string]any
	md, err := toml.Decode(string(defaultTOML), &raw)
	if err != nil {
		t.Fatal(err)
	}
	var keys func(prefix []string, t reflect.Type) [][]string
	keys = func(prefix []string, typ reflect.Type) (out [][]string) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			name := f.Tag.Get("toml")
			switch {
			case !f.IsExported() || f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct: // [[plugin]], [[server.allow]]
			case f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[Duration]():
				out = append(out, keys(append(slices.Clip(prefix), name), f.Type)...)
			default:
				out = append(out, append(slices.Clip(prefix), name))
			}
		}
		return out
	}
	for _, k := range keys(nil, reflect.TypeFor[Config]()) {
		if !md.IsDefined(k...) {
			t.Errorf("default.toml does not set %s", toml.Key(k))
		}
	}
	for _, l := range [][]string{c.Defaults.Namespaces, c.Defaults.FreshMounts, c.Defaults.Unshare, c.Defaults.AllowHostChanges} {
		if l == nil {
			t.Errorf("a list of [defaults] is nil, not empty: %+v", c.Defaults)
		}
	}

	// Each call returns an independent copy.
	root, mode := c.Defaults.AllowedRoots[0], c.Defaults.Mode
	c.Defaults.AllowedRoots[0] = "/changed"
	c.Defaults.Mode = "changed"
	if d := Default(); d.Defaults.AllowedRoots[0] != root || d.Defaults.Mode != mode {
		t.Errorf("Default shares state between calls: %+v", d.Defaults)
	}
}

// The example file documents the defaults; with its commented-out [[plugin]]
// entries uncommented it must still be valid.
func TestConfigExampleFile(t *testing.T) {
	data, err := os.ReadFile("../config.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(data, "config.toml.example")
	if err != nil {
		t.Fatalf("Parse(config.toml.example): %v", err)
	}
	if got, want := withoutSource(c), withoutSource(Default()); !reflect.DeepEqual(got, want) {
		t.Errorf("config.toml.example = %+v, want the defaults %+v", got, want)
	}

	// Uncomment "# key = ...", "# [[plugin]]" and "# [plugin.options]", and
	// turn "# # text" into "# text".
	active := regexp.MustCompile(`(?m)^# ((\[\[plugin\]\]|\[plugin\.options\]|\[\[server\.allow\]\])$|[a-z0-9_]+ = )`)
	text := active.ReplaceAllString(string(data), "$1")
	text = strings.ReplaceAll(text, "\n# # ", "\n# ")
	c, err = Parse([]byte(text), "uncommented config.toml.example")
	if err != nil {
		t.Fatalf("Parse(uncommented config.toml.example): %v\n%s", err, text)
	}
	if r := c.Server.Allow; len(r) != 2 || r[0].Targets != TargetsAny || !r[0].MatchType("procfs.read") || r[0].MatchType("procfs.write") || r[1].Targets != TargetsOwned {
		t.Errorf("uncommented example's [[server.allow]] = %+v", r)
	}
	if len(c.Plugins) != 5 {
		t.Fatalf("uncommented example has %d plugins, want 5:\n%s", len(c.Plugins), text)
	}
	procfs, third := &c.Plugins[0], &c.Plugins[len(c.Plugins)-1]
	if procfs.Options["max_read_bytes"] != int64(1048576) || c.Plugins[1].Options["max_list_entries"] != int64(10000) {
		t.Errorf("built-in plugin options: %+v / %+v", procfs.Options, c.Plugins[1].Options)
	}
	if procfs.Name != "procfs" || procfs.Path != "" {
		t.Errorf("first plugin = %+v, want the built-in procfs", procfs)
	}
	s := c.Settings(procfs)
	if !slices.Equal(s.AllowedRoots, []string{"/proc", "/sys"}) || !slices.Equal(s.FreshMounts, []string{"proc"}) || s.Mode != "pooled" {
		t.Errorf("procfs settings = %+v", s)
	}
	if third.Path == "" || len(third.SHA256) != 64 || len(third.Types) == 0 || third.Options["interval"] != "5s" {
		t.Errorf("third-party plugin = %+v", third)
	}
	if s := c.Settings(third); s.Mode != "oneshot" || s.RequestTimeout.Duration != 30*time.Second || s.IdleTimeout != Default().Defaults.IdleTimeout {
		t.Errorf("third-party plugin settings = %+v", s)
	}
}

func TestConfigParseOverridesDefaults(t *testing.T) {
	c, err := Parse([]byte(tomlLines(
		`max_instances = 8`,
		`[defaults]`,
		`mode = "oneshot"`,
		`namespaces = ["net", "mnt"]`,
		`[[plugin]]`,
		`name = "procfs"`,
		`types = ["procfs.read"]`,
		`namespaces = []`,
		`[plugin.options]`,
		`depth = 3`,
		`[plugin.options.nested]`,
		`Anything = "goes"`,
		`[[plugin]]`,
		`name = "ext"`,
		`path = "/opt/ext"`,
		`sha256 = "ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789"`,
	)), "config.toml")
	if err != nil {
		t.Fatal(err)
	}
	def := Default()
	if c.MaxInstances != 8 || c.LogLevel != def.LogLevel || c.RuntimeDir != def.RuntimeDir {
		t.Errorf("top level = %d %q %q", c.MaxInstances, c.LogLevel, c.RuntimeDir)
	}
	d := c.Defaults
	if d.Mode != "oneshot" || !slices.Equal(d.Namespaces, []string{"net", "mnt"}) ||
		d.IdleTimeout != def.Defaults.IdleTimeout || !slices.Equal(d.AllowedRoots, def.Defaults.AllowedRoots) {
		t.Errorf("defaults = %+v", d)
	}
	p := c.Plugins[0]
	if p.Namespaces == nil || len(p.Namespaces) != 0 {
		t.Errorf("explicit namespaces = [] decoded as %#v, want a non-nil empty slice", p.Namespaces)
	}
	if p.Mode != "" || p.AllowedRoots != nil || p.IdleTimeout.Duration != 0 {
		t.Errorf("unset overrides are not zero: %+v", p.Settings)
	}
	if p.Options["depth"] != int64(3) || p.Options["nested"].(map[string]any)["Anything"] != "goes" {
		t.Errorf("options = %#v", p.Options)
	}
	if got := c.Plugins[1].SHA256; got != strings.ToLower(got) {
		t.Errorf("sha256 not lowercased: %q", got)
	}
}

func TestConfigUnknownKeys(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		want       []string
	}{
		{"top level", tomlLines(
			`log_level = "info"`,
			`log_levle = "debug"`,
		), []string{`config.toml:2: unknown key "log_levle"`}},
		{"case sensitive", tomlLines(
			`Log_Level = "debug"`,
		), []string{`config.toml:1: unknown key "Log_Level"`}},
		{"in defaults", tomlLines(
			`max_instances = 3`,
			``,
			`[defaults]`,
			`mode = "pooled"`,
			`mdoe = "oneshot"`,
		), []string{`config.toml:5: unknown key "defaults.mdoe"`}},
		{"dotted key into defaults", tomlLines(
			`log_level = "info"`,
			`defaults.mdoe = "oneshot"`,
		), []string{`config.toml:2: unknown key "defaults.mdoe"`}},
		{"quoted key", tomlLines(
			`[defaults]`,
			`mode = "pooled"`,
			`"mo de".x = 1`,
			`'lit.eral' = 2`,
		), []string{
			`config.toml:3: unknown key "defaults.\"mo de\""`,
			`config.toml:4: unknown key "defaults.\"lit.eral\""`,
		}},
		{"escaped quoted key", tomlLines(
			`[defaults]`,
			`"m\u006fde" = "pooled"`,
			`"\x41" = 1`,
		), []string{`config.toml:3: unknown key "defaults.A"`}},
		{"unknown table reported once", tomlLines(
			`[defaults]`,
			`[extra]`,
			`a = 1`,
			`b = 2`,
		), []string{`config.toml:2: unknown key "extra"`}},
		{"in second plugin", tomlLines(
			`[[plugin]]`,
			`name = "procfs"`,
			`mdoe = "x"`,
			``,
			`# comment with "quotes" and 'more' and [brackets]`,
			`[[plugin]]`,
			`name = "netstat"`,
			`mode = "oneshot"`,
			`options.text = """`,
			`multi-line "string" ]]`,
			`"""`,
			`mdoe = "pooled"`,
		), []string{
			`config.toml:3: unknown key "plugin.mdoe" in plugin #1 "procfs"`,
			`config.toml:12: unknown key "plugin.mdoe" in plugin #2 "netstat"`,
		}},
		{"unknown subtable of second plugin", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`[plugin.options]`,
			`free = "form"`,
			`[[plugin]]`,
			`name = "b"`,
			`[plugin.extra]`,
			`x = 1`,
		), []string{`config.toml:7: unknown key "plugin.extra" in plugin #2 "b"`}},
		{"plugin without name", tomlLines(
			`[[plugin]]`,
			`path = "/bin/x"`,
			`[[plugin]]`,
			`bogus = 1`,
		), []string{`config.toml:4: unknown key "plugin.bogus" in plugin #2`}},
		{"inline array of tables", tomlLines(
			`plugin = [`,
			`  { name = "a" },`,
			`  { name = "b",`,
			`    mdoe = "x" },`,
			`]`,
		), []string{`config.toml:4: unknown key "plugin.mdoe" in plugin #2 "b"`}},
		{"defaults key that only plugins have", tomlLines(
			`[defaults]`,
			`name = "x"`,
		), []string{`config.toml:2: unknown key "defaults.name"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml), "config.toml")
			checkConfigErr(t, err, tc.want...)
			if tc.name == "unknown table reported once" && strings.Count(err.Error(), "unknown key") != 1 {
				t.Errorf("want one error, got\n%v", err)
			}
		})
	}
}

func TestConfigWrongTypes(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		want       string
	}{
		{"integer as string", tomlLines(
			`max_instances = "64"`,
		), `config.toml:1: key "max_instances": expected integer, got string`},
		{"float for integer", tomlLines(
			`log_level = "info"`,
			`max_instances = 1.5`,
		), `config.toml:2: key "max_instances": expected integer, got float`},
		{"string as integer", tomlLines(
			`log_level = 3`,
		), `config.toml:1: key "log_level": expected string, got integer`},
		{"string as array", tomlLines(
			`runtime_dir = ["/run"]`,
		), `config.toml:1: key "runtime_dir": expected string, got array`},
		{"defaults not a table", tomlLines(
			`defaults = "x"`,
		), `config.toml:1: key "defaults": expected table, got string`},
		{"defaults array of tables", tomlLines(
			`[[defaults]]`,
		), `config.toml:1: key "defaults": expected table, got array of tables`},
		{"list as string", tomlLines(
			`[defaults]`,
			`namespaces = "net"`,
		), `config.toml:2: key "defaults.namespaces": expected array of strings, got string`},
		{"allow_host_changes as string", tomlLines(
			`[[plugin]]`,
			`name = "mount"`,
			`allow_host_changes = "mnt"`,
		), `config.toml:3: key "plugin.allow_host_changes" in plugin #1 "mount": expected array of strings, got string`},
		{"list item type, multi-line array", tomlLines(
			`[defaults]`,
			`namespaces = [`,
			`  "net", # comment, with comma`,
			`  5,`,
			`]`,
		), `config.toml:4: key "defaults.namespaces": expected array of strings, but item 2 is integer`},
		{"duration as integer", tomlLines(
			`[defaults]`,
			`idle_timeout = 30`,
		), `config.toml:2: key "defaults.idle_timeout": expected duration string (e.g. "30s"), got integer`},
		{"invalid duration", tomlLines(
			`log_level = "info"`,
			``,
			`[defaults]`,
			`mode = "pooled"`,
			`# idle`,
			``,
			`idle_timeout = "3x"`,
		), `config.toml:7: key "defaults.idle_timeout": invalid duration "3x"`},
		{"invalid duration in second plugin", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`idle_timeout = "1s"`,
			`[[plugin]]`,
			`name = "b"`,
			`idle_timeout = "1 s"`,
			`[[plugin]]`,
			`name = "c"`,
			`idle_timeout = "2s"`,
		), `config.toml:6: key "plugin.idle_timeout" in plugin #2 "b": invalid duration "1 s"`},
		{"plugin as table", tomlLines(
			`[plugin]`,
			`name = "a"`,
		), `config.toml:1: key "plugin": expected array of tables ([[plugin]]), got table`},
		{"plugin array of integers", tomlLines(
			`plugin = [1]`,
		), `config.toml:1: key "plugin": expected array of tables, got array containing integer`},
		{"plugin name", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`[[plugin]]`,
			`name = 2`,
		), `config.toml:4: key "plugin.name" in plugin #2: expected string, got integer`},
		{"plugin types", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`types = "procfs.read"`,
		), `config.toml:3: key "plugin.types" in plugin #1 "a": expected array of strings, got string`},
		{"plugin options", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`options = ["x"]`,
		), `config.toml:3: key "plugin.options" in plugin #1 "a": expected table, got array`},
		{"datetime", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`mode = 1979-05-27 07:32:00Z`,
		), `config.toml:3: key "plugin.mode" in plugin #1 "a": expected string, got datetime`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml), "config.toml")
			checkConfigErr(t, err, tc.want)
		})
	}
}

func TestConfigSyntaxErrors(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		want       string
	}{
		{"missing value", tomlLines(
			`log_level = "info"`,
			`max_instances =`,
			`runtime_dir = "/run"`,
		), `config.toml:2: expected value but found '\n' instead`},
		{"duplicate key", tomlLines(
			`log_level = "info"`,
			``,
			`log_level = "debug"`,
		), `config.toml:3: Key 'log_level' has already been defined.`},
		{"unterminated string", tomlLines(
			`[defaults]`,
			`mode = "pooled`,
		), `config.toml:2: strings cannot contain newlines`},
		{"bad header", tomlLines(
			`[defaults`,
		), `config.toml:1: expected '.' or ']' to end table name`},
		{"garbage after value", tomlLines(
			`log_level = "info"`,
			`max_instances = 1 2`,
		), `config.toml:2: expected a top-level item to end with a newline`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml), "config.toml")
			checkConfigErr(t, err, tc.want)
			var pe toml.ParseError
			if !errors.As(err, &pe) {
				t.Errorf("error %v does not wrap a toml.ParseError", err)
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	const sum = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, tc := range []struct {
		name, toml string
		want       []string
	}{
		{"log level", tomlLines(
			`log_level = "verbose"`,
		), []string{`config.toml:1: key "log_level": invalid log level "verbose" (want "trace", "debug", "info", "warn" or "error")`}},
		{"runtime dir", tomlLines(
			`runtime_dir = "run/nsplug"`,
		), []string{`config.toml:1: key "runtime_dir": must be an absolute path, got "run/nsplug"`}},
		{"max instances zero", tomlLines(
			`max_instances = 0`,
		), []string{`config.toml:1: key "max_instances": must be at least 1, got 0`}},
		{"max instances negative", tomlLines(
			`log_level = "info"`,
			`max_instances = -3`,
		), []string{`config.toml:2: key "max_instances": must be at least 1, got -3`}},
		{"max starts per target zero", tomlLines(
			`log_level = "info"`,
			`max_starts_per_target = 0`,
		), []string{`config.toml:2: key "max_starts_per_target": must be at least 1, got 0`}},
		{"max starts negative", tomlLines(
			`log_level = "info"`,
			`max_starts = -1`,
		), []string{`config.toml:2: key "max_starts": must be at least 0 (0: twice the CPU count), got -1`}},
		{"max queued starts zero", tomlLines(
			`max_queued_starts = 0`,
		), []string{`config.toml:1: key "max_queued_starts": must be at least 1, got 0`}},
		{"mode in defaults", tomlLines(
			`[defaults]`,
			`mode = "fast"`,
		), []string{`config.toml:2: key "defaults.mode": invalid mode "fast" (want "pooled" or "oneshot")`}},
		{"empty mode in defaults", tomlLines(
			`[defaults]`,
			`mode = ""`,
		), []string{`config.toml:2: key "defaults.mode": invalid mode ""`}},
		{"mode in plugin", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`mode = "fast"`,
		), []string{`config.toml:3: key "plugin.mode" in plugin #1 "a": invalid mode "fast"`}},
		{"explicit empty mode in plugin", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`mode = ""`,
		), []string{`config.toml:3: key "plugin.mode" in plugin #1 "a": invalid mode ""`}},
		{"namespace", tomlLines(
			`[defaults]`,
			`namespaces = ["net",`,
			`  "network"]`,
		), []string{`config.toml:3: key "defaults.namespaces": unknown namespace "network" (want "user", "mnt", "pid", "net", "ipc", "uts", "cgroup" or "time")`}},
		{"duplicate namespace", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`namespaces = ["net", "net"]`,
		), []string{`config.toml:3: key "plugin.namespaces" in plugin #1 "a": duplicate namespace "net"`}},
		{"fresh mounts", tomlLines(
			`[defaults]`,
			`fresh_mounts = ["proc", "dev"]`,
		), []string{`config.toml:2: key "defaults.fresh_mounts": unknown fresh mount "dev" (want "proc", "sys" or "cgroup")`}},
		{"unshare", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`unshare = ["mnt", "mount"]`,
		), []string{`config.toml:3: key "plugin.unshare" in plugin #1 "a": unknown namespace "mount"`}},
		{"allow host changes", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`allow_host_changes = ["mnt",`,
			`  "mount", "mnt"]`,
		), []string{`config.toml:4: key "plugin.allow_host_changes" in plugin #1 "a": unknown namespace "mount"`,
			`config.toml:4: key "plugin.allow_host_changes" in plugin #1 "a": duplicate namespace "mnt"`}},
		{"allow host changes in defaults", tomlLines(
			`[defaults]`,
			`allow_host_changes = ["mount"]`,
		), []string{`config.toml:2: key "defaults.allow_host_changes": unknown namespace "mount" (want "user", "mnt", "pid", "net", "ipc", "uts", "cgroup" or "time")`}},
		{"zero duration in defaults", tomlLines(
			`[defaults]`,
			`request_timeout = "0s"`,
		), []string{`config.toml:2: key "defaults.request_timeout": must be a positive duration, got "0s"`}},
		{"negative duration", tomlLines(
			`[defaults]`,
			`start_timeout = "-1m"`,
		), []string{`config.toml:2: key "defaults.start_timeout": must be a positive duration, got "-1m0s"`}},
		{"explicit zero duration in plugin", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`idle_timeout = "0s"`,
		), []string{`config.toml:3: key "plugin.idle_timeout" in plugin #1 "a": must be a positive duration, got "0s"`}},
		{"allowed roots", tomlLines(
			`[defaults]`,
			`allowed_roots = [`,
			`  "/",`,
			`  "proc",`,
			`  "/sys/",`,
			`  "/a/../b",`,
			`]`,
		), []string{
			`config.toml:4: key "defaults.allowed_roots": "proc" is not an absolute path`,
			`config.toml:5: key "defaults.allowed_roots": "/sys/" is not a clean path (want "/sys")`,
			`config.toml:6: key "defaults.allowed_roots": "/a/../b" is not a clean path (want "/b")`,
		}},
		{"plugin name missing", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			``,
			`[[plugin]]`,
			`mode = "oneshot"`,
		), []string{`config.toml:4: key "plugin.name" in plugin #2: required`}},
		{"plugin name invalid", tomlLines(
			`[[plugin]]`,
			`name = "Procfs"`,
			`[[plugin]]`,
			`name = "-x"`,
		), []string{
			`config.toml:2: key "plugin.name" in plugin #1 "Procfs": invalid plugin name "Procfs" (want [a-z0-9][a-z0-9_-]*)`,
			`config.toml:4: key "plugin.name" in plugin #2 "-x": invalid plugin name "-x"`,
		}},
		{"plugin name duplicate", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`[[plugin]]`,
			`name = "b"`,
			`[[plugin]]`,
			`name = "a"`,
		), []string{`config.toml:6: key "plugin.name" in plugin #3 "a": duplicate plugin name "a" (also used by plugin #1)`}},
		{"relative path", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`path = "bin/a"`,
		), []string{`config.toml:3: key "plugin.path" in plugin #1 "a": must be an absolute path, got "bin/a"`}},
		{"sha256 without path", tomlLines(
			`[[plugin]]`,
			`name = "procfs"`,
			`sha256 = "`+sum+`"`,
		), []string{`config.toml:3: key "plugin.sha256" in plugin #1 "procfs": set without "path"`}},
		{"sha256 too short", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`path = "/bin/a"`,
			`sha256 = "abc"`,
		), []string{`config.toml:4: key "plugin.sha256" in plugin #1 "a": invalid sha256 "abc" (want 64 hex digits)`}},
		{"sha256 not hex", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`path = "/bin/a"`,
			`sha256 = "`+strings.Repeat("g", 64)+`"`,
		), []string{`config.toml:4: key "plugin.sha256" in plugin #1 "a": invalid sha256`}},
		{"types", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`types = ["procfs.read", "procfs", "Procfs.read",`,
			`  "net.if-list", "x_1.y_2", "`+strings.Repeat("t", 63)+`.x", "a..b"]`,
		), []string{
			`config.toml:3: key "plugin.types" in plugin #1 "a": message type "procfs": want <plugin>.<verb>`,
			`config.toml:3: key "plugin.types" in plugin #1 "a": message type "Procfs.read": only a-z, 0-9, '_' and '.' are allowed`,
			`config.toml:4: key "plugin.types" in plugin #1 "a": message type "net.if-list": only a-z, 0-9, '_' and '.' are allowed`,
			`config.toml:4: key "plugin.types" in plugin #1 "a": message type "` + strings.Repeat("t", 63) + `.x": want 1 to 64 bytes`,
			`config.toml:4: key "plugin.types" in plugin #1 "a": message type "a..b": empty part`,
		}},
		{"duplicate type", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`types = ["a.x",`,
			`  "a.x"]`,
		), []string{`config.toml:4: key "plugin.types" in plugin #1 "a": duplicate message type "a.x"`}},
		{"unshare what cannot be unshared once joined", tomlLines(
			`[defaults]`,
			`unshare = ["mnt", "user"]`,
			`[[plugin]]`,
			`name = "a"`,
			`unshare = ["net",`,
			`  "pid", "time"]`,
		), []string{
			`config.toml:2: key "defaults.unshare": cannot unshare user after joining (only mnt, net, ipc, uts, cgroup)`,
			`config.toml:6: key "plugin.unshare" in plugin #1 "a": cannot unshare pid after joining`,
			`config.toml:6: key "plugin.unshare" in plugin #1 "a": cannot unshare time after joining`,
		}},
		{"options not JSON", tomlLines(
			`[[plugin]]`,
			`name = "a"`,
			`[plugin.options]`,
			`ratio = nan`,
		), []string{`config.toml:3: key "plugin.options" in plugin #1 "a": cannot be passed to the plugin as JSON`}},
		{"several problems are all reported", tomlLines(
			`log_level = "loud"`,
			`max_instances = 0`,
			`[[plugin]]`,
			`name = "a"`,
			`mode = "x"`,
		), []string{
			`config.toml:1: key "log_level": invalid log level "loud"`,
			`config.toml:2: key "max_instances": must be at least 1`,
			`config.toml:5: key "plugin.mode" in plugin #1 "a": invalid mode "x"`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml), "config.toml")
			checkConfigErr(t, err, tc.want...)
			if n := strings.Count(err.Error(), "\n") + 1; n != len(tc.want) {
				t.Errorf("%d problems reported, want %d:\n%v", n, len(tc.want), err)
			}
		})
	}
}

// The one type name rule is the contract's (wire): a name a plugin may serve may be
// configured, and no other.
func TestConfigTypesFollowTheSDK(t *testing.T) {
	for _, name := range []string{"net.route.get", "a.b.c", "x_1.y_2", strings.Repeat("t", 61) + ".xy", "procfs", "Procfs.read", "a..b", strings.Repeat("t", 62) + ".xy", ""} {
		_, err := Parse([]byte(fmt.Sprintf("[[plugin]]\nname = \"a\"\ntypes = [%q]\n", name)), "t.toml")
		if sdkErr := wire.CheckTypeName(name); (err == nil) != (sdkErr == nil) {
			t.Errorf("type %q: config says %v, wire %v", name, err, sdkErr)
		}
	}
}

func TestConfigValidateGoBuilt(t *testing.T) {
	// A zero Config: every required value is missing; no file, no lines.
	err := (&Config{}).Validate()
	checkConfigErr(t, err,
		`key "log_level": invalid log level ""`,
		`key "runtime_dir": must be an absolute path, got ""`,
		`key "max_instances": must be at least 1, got 0`,
		`key "defaults.mode": invalid mode ""`,
		`key "defaults.idle_timeout": must be a positive duration, got "0s"`,
		`key "defaults.request_timeout": must be a positive duration`,
		`key "defaults.start_timeout": must be a positive duration`,
	)
	if strings.Contains(err.Error(), ":1") || strings.HasPrefix(err.Error(), ":") {
		t.Errorf("error of a Go-built Config has a file position: %v", err)
	}

	// Zero overrides mean "unset" in a Go-built plugin entry.
	c := Default()
	c.Plugins = []Plugin{{Name: "procfs"}, {Name: "ext", Path: "/opt/ext", SHA256: strings.Repeat("AB", 32)}}
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	if c.Plugins[1].SHA256 != strings.Repeat("ab", 32) {
		t.Errorf("Validate did not lowercase sha256: %q", c.Plugins[1].SHA256)
	}
	c.Plugins[0].Mode = "fast"
	err = c.Validate()
	checkConfigErr(t, err, `key "plugin.mode" in plugin #1 "procfs": invalid mode "fast"`)
	if !strings.HasPrefix(err.Error(), "key ") {
		t.Errorf("error of a Go-built Config names a file: %v", err)
	}
}

// Validate keeps file lines for a parsed Config, and drops them for plugins
// that no longer match the file.
func TestConfigValidateAfterChanges(t *testing.T) {
	c, err := Parse([]byte(tomlLines(
		`[defaults]`,
		`mode = "oneshot"`,
		`[[plugin]]`,
		`name = "a"`,
		`mode = "pooled"`,
		`[[plugin]]`,
		`name = "b"`,
	)), "config.toml")
	if err != nil {
		t.Fatal(err)
	}
	c.Defaults.Mode = "bad"
	c.Plugins[0].Mode = "bad"
	checkConfigErr(t, c.Validate(),
		`config.toml:2: key "defaults.mode": invalid mode "bad"`,
		`config.toml:5: key "plugin.mode" in plugin #1 "a": invalid mode "bad"`,
	)
	c.Plugins[0], c.Plugins[1] = c.Plugins[1], c.Plugins[0]
	checkConfigErr(t, c.Validate(), `config.toml: key "plugin.mode" in plugin #2 "a": invalid mode "bad"`)
}

func TestConfigSettings(t *testing.T) {
	defaults := Settings{
		Namespaces:     []string{"net"},
		Mode:           "pooled",
		IdleTimeout:    Duration{30 * time.Second},
		RequestTimeout: Duration{10 * time.Second},
		StartTimeout:   Duration{5 * time.Second},
		AllowedRoots:   []string{"/"},
		FreshMounts:    []string{},
		Unshare:        nil,
	}
	for _, tc := range []struct {
		name     string
		override Settings
		want     Settings
	}{
		{"no overrides", Settings{}, defaults},
		{"everything overridden", Settings{
			Namespaces:     []string{"mnt", "pid"},
			Mode:           "oneshot",
			IdleTimeout:    Duration{time.Minute},
			RequestTimeout: Duration{time.Second},
			StartTimeout:   Duration{2 * time.Second},
			AllowedRoots:   []string{"/proc"},
			FreshMounts:    []string{"proc"},
			Unshare:        []string{"mnt"},

			AllowHostChanges: []string{"mnt"},
		}, Settings{
			Namespaces:     []string{"mnt", "pid"},
			Mode:           "oneshot",
			IdleTimeout:    Duration{time.Minute},
			RequestTimeout: Duration{time.Second},
			StartTimeout:   Duration{2 * time.Second},
			AllowedRoots:   []string{"/proc"},
			FreshMounts:    []string{"proc"},
			Unshare:        []string{"mnt"},

			AllowHostChanges: []string{"mnt"},
		}},
		{"empty non-nil slices replace", Settings{
			Namespaces:   []string{},
			AllowedRoots: []string{},
		}, Settings{
			Namespaces:     []string{},
			Mode:           "pooled",
			IdleTimeout:    Duration{30 * time.Second},
			RequestTimeout: Duration{10 * time.Second},
			StartTimeout:   Duration{5 * time.Second},
			AllowedRoots:   []string{},
			FreshMounts:    []string{},
		}},
		{"one duration", Settings{RequestTimeout: Duration{time.Minute}}, Settings{
			Namespaces:     []string{"net"},
			Mode:           "pooled",
			IdleTimeout:    Duration{30 * time.Second},
			RequestTimeout: Duration{time.Minute},
			StartTimeout:   Duration{5 * time.Second},
			AllowedRoots:   []string{"/"},
			FreshMounts:    []string{},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Config{Defaults: defaults}
			p := &Plugin{Name: "x", Settings: tc.override}
			got := c.Settings(p)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Settings() =\n%#v\nwant\n%#v", got, tc.want)
			}
			// The result does not alias the configuration.
			for _, s := range [][]string{got.Namespaces, got.AllowedRoots} {
				if len(s) > 0 {
					s[0] = "changed"
				}
			}
			if c.Defaults.Namespaces[0] != "net" || c.Defaults.AllowedRoots[0] != "/" ||
				(len(p.Namespaces) > 0 && p.Namespaces[0] == "changed") {
				t.Error("Settings() result aliases the configuration")
			}
		})
	}
	c := &Config{Defaults: defaults}
	if got := c.Settings(nil); !reflect.DeepEqual(got, defaults) {
		t.Errorf("Settings(nil) = %+v, want the defaults", got)
	}
}

// Settings of a parsed file: [defaults] merged with a [[plugin]]'s flat keys.
func TestConfigSettingsFromFile(t *testing.T) {
	c, err := Parse([]byte(tomlLines(
		`[defaults]`,
		`namespaces = ["net"]`,
		`idle_timeout = "1m"`,
		`allow_host_changes = ["uts"]`,
		`[[plugin]]`,
		`name = "a"`,
		`namespaces = []`,
		`request_timeout = "2s"`,
		`allow_host_changes = ["mnt", "net"]`,
		`[[plugin]]`,
		`name = "b"`,
	)), "config.toml")
	if err != nil {
		t.Fatal(err)
	}
	a, b := c.Settings(&c.Plugins[0]), c.Settings(&c.Plugins[1])
	if a.Namespaces == nil || len(a.Namespaces) != 0 || a.RequestTimeout.Duration != 2*time.Second || a.IdleTimeout.Duration != time.Minute {
		t.Errorf("plugin a settings = %+v", a)
	}
	if !slices.Equal(b.Namespaces, []string{"net"}) || b.RequestTimeout != Default().Defaults.RequestTimeout || b.Mode != Default().Defaults.Mode {
		t.Errorf("plugin b settings = %+v", b)
	}
	if !slices.Equal(a.AllowHostChanges, []string{"mnt", "net"}) || !slices.Equal(b.AllowHostChanges, []string{"uts"}) {
		t.Errorf("allow_host_changes: plugin a %q, plugin b %q", a.AllowHostChanges, b.AllowHostChanges)
	}
}

func TestConfigLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nsplug.toml")
	if err := os.WriteFile(path, []byte("log_level = \"debug\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.LogLevel != "debug" || c.MaxInstances != Default().MaxInstances {
		t.Errorf("LoadConfig = %+v", c)
	}

	if err := os.WriteFile(path, []byte("\n\nmax_instances = 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(path)
	checkConfigErr(t, err, path+`:3: key "max_instances": must be at least 1, got 0`)

	_, err = Load(filepath.Join(t.TempDir(), "missing.toml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want ErrNotExist", err)
	}
}

func TestConfigDuration(t *testing.T) {
	var d Duration
	if err := d.UnmarshalText([]byte("1m30s")); err != nil || d.Duration != 90*time.Second {
		t.Errorf("UnmarshalText(1m30s) = %v, %v", d, err)
	}
	if err := d.UnmarshalText([]byte("3x")); err == nil || err.Error() != `invalid duration "3x"` {
		t.Errorf("UnmarshalText(3x) error = %v", err)
	}
	text, err := Duration{250 * time.Millisecond}.MarshalText()
	if err != nil || string(text) != "250ms" {
		t.Errorf("MarshalText = %q, %v", text, err)
	}
	// The toml package uses the text methods too.
	var v struct {
		D Duration `toml:"d"`
	}
	if _, err := toml.Decode(`d = "2h"`, &v); err != nil || v.D.Duration != 2*time.Hour {
		t.Errorf("toml.Decode = %v, %v", v.D, err)
	}
}

// configScanDocs are TOML documents exercising the line scanner.
var configScanDocs = []string{
	tomlLines(
		`# comment`,
		`a = 1`,
		`b.c.d = "x" # trailing`,
		`"quoted key".'lit key' = 'v'`,
		`"esc\"aped" = """`,
		`multi "line" ''' "" [x] = 1`,
		`"""`,
		`e = '''`,
		`literal \ with "quotes" ]]`,
		`'''`,
		`f = """a""""`,
		`g = [`,
		`  1, # comment ]`,
		`  [2, 3],`,
		`  { h = 4, i = { j = 5 } },`,
		`]`,
		`dt = 1979-05-27 07:32:00Z`,
		`[t]`,
		`k = 1`,
		`[t.sub]`,
		`l = "\\"`,
		`[[arr]]`,
		`m = 1`,
		`[arr.sub]`,
		`n = 2`,
		`[[arr.inner]]`,
		`o = 3`,
		`[[arr]]`,
		`m = 2`,
		`[[arr.inner]]`,
		`o = 4`,
		`[[arr.inner]]`,
		`o = 5`,
		`[ spaced . "header" ]`,
		`p = { q = 1,`,
		`  r = 2, }`,
		`s = "\u00e9\x41\e"`,
		"crlf = 1\r",
		`[[ 'arr' ]]`,
	),
}

// parseCanon splits a canonical path back into key segments and indexes,
// dropping the indexes.
func parseCanon(t *testing.T, canon string) []string {
	var keys []string
	for canon != "" {
		if canon[0] == '[' {
			canon = canon[strings.IndexByte(canon, ']')+1:]
			continue
		}
		q, err := strconv.QuotedPrefix(canon)
		if err != nil {
			t.Fatalf("bad canonical path %q", canon)
		}
		k, _ := strconv.Unquote(q)
		keys = append(keys, k)
		canon = canon[len(q):]
	}
	return keys
}

func TestConfigScanLines(t *testing.T) {
	lines := scanLines(configScanDocs[0])
	for canon, want := range map[string]int{
		`"a"`:                       2,
		`"b"`:                       3,
		`"b""c""d"`:                 3,
		`"quoted key""lit key"`:     4,
		`"esc\"aped"`:               5,
		`"e"`:                       8,
		`"f"`:                       11,
		`"g"`:                       12,
		`"g"[1]`:                    14,
		`"g"[1][1]`:                 14,
		`"g"[2]`:                    15,
		`"g"[2]"i""j"`:              15,
		`"dt"`:                      17,
		`"t"`:                       18,
		`"t""k"`:                    19,
		`"t""sub""l"`:               21,
		`"arr"`:                     22,
		`"arr"[0]`:                  22,
		`"arr"[0]"m"`:               23,
		`"arr"[0]"sub"`:             24,
		`"arr"[0]"sub""n"`:          25,
		`"arr"[0]"inner"[0]"o"`:     27,
		`"arr"[1]`:                  28,
		`"arr"[1]"m"`:               29,
		`"arr"[1]"inner"[0]"o"`:     31,
		`"arr"[1]"inner"[1]"o"`:     33,
		`"spaced""header""p""q"`:    35,
		`"spaced""header""p""r"`:    36,
		`"spaced""header""s"`:       37,
		`"spaced""header""crlf"`:    38,
		`"arr"[2]`:                  39,
		`"quoted key"`:              4,
		`"spaced""header""p"`:       35,
		`"arr"[1]"inner"[1]`:        32,
		`"spaced""header"`:          34,
		`"t""sub"`:                  20,
		`"g"[0]`:                    13,
		`"g"[2]"h"`:                 15,
		`"arr"[0]"inner"[0]`:        26,
		`"arr"[1]"inner"`:           30,
		`"arr"[0]"inner"`:           26,
		`"spaced"`:                  34,
		`"t""sub""l"[0]`:            0, // not an array
		`"g"[3]`:                    0, // no such element
		`"arr"[3]`:                  0,
		`"arr"[0]"inner"[1]"o"`:     0,
		`"spaced""header""p""q""x"`: 0,
	} {
		if got := lines[canon]; got != want {
			t.Errorf("line of %s = %d, want %d", canon, got, want)
		}
	}
}

// checkScanAgreesWithToml checks that every key the toml package reports for
// the valid TOML doc has a line, and that the scanner finds no key the toml
// package does not know.
func checkScanAgreesWithToml(t *testing.T, doc string) {
	t.Helper()
	var raw map[string]any
	md, err := toml.Decode(doc, &raw)
	if err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	known := map[string]bool{}
	for _, k := range md.Keys() {
		known[k.String()] = true
	}
	found := map[string]bool{}
	for canon := range scanLines(doc) {
		found[toml.Key(parseCanon(t, canon)).String()] = true
	}
	for k := range known {
		if !found[k] {
			t.Errorf("no line for key %s in\n%s", k, doc)
		}
	}
scanned:
	for k := range found {
		if known[k] {
			continue
		}
		// Implicit tables (b in b.c = 1) are not toml keys.
		for kk := range known {
			if strings.HasPrefix(kk, k+".") {
				continue scanned
			}
		}
		t.Errorf("scanner found key %s unknown to toml in\n%s", k, doc)
	}
}

func TestConfigScanLinesAgreesWithToml(t *testing.T) {
	docs := append(slices.Clone(configScanDocs), string(defaultTOML))
	if example, err := os.ReadFile("../config.toml.example"); err == nil {
		docs = append(docs, string(example))
	}
	for _, doc := range docs {
		checkScanAgreesWithToml(t, doc)
	}
}

func FuzzConfigScanLines(f *testing.F) {
	for _, doc := range configScanDocs {
		f.Add(doc)
	}
	f.Add(string(defaultTOML))
	f.Add("a = \"unterminated\n[[")
	f.Add("[a.\"b")
	f.Add("a = {b = [1, {c = '''")
	f.Fuzz(func(t *testing.T, doc string) {
		lines := scanLines(doc) // must not hang or panic
		var raw map[string]any
		if _, err := toml.Decode(doc, &raw); err != nil {
			return
		}
		for canon, line := range lines {
			if line < 1 || line > strings.Count(doc, "\n")+1 {
				t.Errorf("line of %s = %d out of range", canon, line)
			}
		}
		checkScanAgreesWithToml(t, doc)
		// Decoding valid TOML with arbitrary keys never panics either.
		_, _ = Parse([]byte(doc), "fuzz.toml")
	})
}
func TestConfigPluginLoadingKeys(t *testing.T) {
	c, err := Parse([]byte("max_plugin_bytes = 1024\nfail_on_plugin_error = true\n"), "n.toml")
	if err != nil || c.MaxPluginBytes != 1024 || !c.FailOnPluginError {
		t.Fatalf("ParseConfig: %+v, %v", c, err)
	}
	_, err = Parse([]byte("log_level = \"info\"\nmax_plugin_bytes = \"1M\"\nfail_on_plugin_error = 1\n"), "n.toml")
	checkConfigErr(t, err, `n.toml:2: key "max_plugin_bytes": expected integer, got string`,
		`n.toml:3: key "fail_on_plugin_error": expected boolean, got integer`)
	_, err = Parse([]byte("\nmax_plugin_bytes = 0\n"), "n.toml")
	checkConfigErr(t, err, `n.toml:2: key "max_plugin_bytes": must be at least 1, got 0`)
}

// An option error a plugin reports is placed at its line: the key's, an
// array element's, else the options table's.
func TestConfigOptionErrorLines(t *testing.T) {
	c, err := Parse([]byte(tomlLines(
		`[[plugin]]`,
		`name = "a"`,
		`[[plugin]]`,
		`name = "b"`,
		`[plugin.options]`,
		`x = 1`,
		`list = ["ok",`,
		`  "bad"]`,
		`[plugin.options.sub]`,
		`depth = 3`,
	)), "o.toml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key, want string
	}{
		{"x", `o.toml:6: key "plugin.options.x" in plugin #2 "b": m`},
		{"list[1]", `o.toml:8: key "plugin.options.list" in plugin #2 "b": m`},
		{"sub.depth", `o.toml:10: key "plugin.options.sub.depth" in plugin #2 "b": m`},
		{"nosuch", `o.toml:5: key "plugin.options.nosuch" in plugin #2 "b": m`},
		{"", `o.toml:5: key "plugin.options" in plugin #2 "b": m`},
	} {
		if got := c.OptionError("b", tc.key, "m").Error(); got != tc.want {
			t.Errorf("key %q: %s, want %s", tc.key, got, tc.want)
		}
	}
}

// max_starts = 0 (the default) is twice the CPU count; any other value is
// itself.
func TestStartLimit(t *testing.T) {
	c := Default()
	if c.MaxStarts != 0 {
		t.Fatalf("default max_starts = %d, want 0", c.MaxStarts)
	}
	if got, want := c.StartLimit(), 2*runtime.NumCPU(); got != want {
		t.Errorf("StartLimit() = %d with max_starts = 0, want %d", got, want)
	}
	c.MaxStarts = 3
	if got := c.StartLimit(); got != 3 {
		t.Errorf("StartLimit() = %d with max_starts = 3", got)
	}
}

// The hand-written name and sha256 checks accept exactly what the
// patterns in their error messages describe.
func TestConfigNameAndSHA256Checks(t *testing.T) {
	nameRE := regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
	for _, s := range []string{"", "a", "0", "procfs", "my-plug_2", "-a", "_a", "A", "aB", "a.b", "a b", "é", "a\x00", "a/b"} {
		if got, want := validPluginName(s), nameRE.MatchString(s); got != want {
			t.Errorf("validPluginName(%q) = %v, want %v", s, got, want)
		}
	}
	sumRE := regexp.MustCompile(`^[0-9a-f]{64}$`)
	ok := strings.Repeat("0123456789abcdef", 4)
	for _, s := range []string{"", ok, ok[1:], ok + "0", strings.ToUpper(ok), ok[:63] + "g", ok[:63] + "\n"} {
		if got, want := validSHA256(s), sumRE.MatchString(s); got != want {
			t.Errorf("validSHA256(%q) = %v, want %v", s, got, want)
		}
	}
}

// keySegments splits plain dotted keys itself and leaves every other key
// to the toml package: both ways give the toml package's answer.
func TestConfigKeySegments(t *testing.T) {
	for _, raw := range []string{"a", "a.b", "plugin_x.max-starts.3", `"a.b".c`, `a . b`, `'x'.y`, `a."b\u0041"`, "a..b", ".a", "a.", "é.b", ""} {
		var want []string
		var m map[string]any
		if md, err := toml.Decode(raw+" = 0", &m); err == nil && len(md.Keys()) > 0 {
			want = md.Keys()[len(md.Keys())-1]
		}
		if got := keySegments(raw); !slices.Equal(got, want) {
			t.Errorf("keySegments(%q) = %q, want %q", raw, got, want)
		}
	}
}
