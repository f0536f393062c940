package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestServerTable(t *testing.T) {
	c, err := Parse([]byte(tomlLines(
		`[server]`,
		`socket = "/run/x/api.sock"`,
		`socket_mode = 0o666`,
		`socket_group = "nsplug"`,
		`metrics_address = "127.0.0.1:9464"`,
		`audit_log = "/var/log/nsplug/audit.log"`,
		`shutdown_grace = "3s"`,
		`[[server.allow]]`,
		`gids = [991]`,
		`types = ["procfs.*", "sysctl.get"]`,
		`targets = "any"`,
		`[[server.allow]]`,
		`uids = [1000, 4294967295]`,
		`types = ["*"]`,
		`targets = "owned"`,
	)), "config.toml")
	if err != nil {
		t.Fatal(err)
	}
	s := c.Server
	if s.Socket != "/run/x/api.sock" || s.SocketMode != 0o666 || s.SocketGroup != "nsplug" || s.MetricsAddress != "127.0.0.1:9464" ||
		s.AuditLog != "/var/log/nsplug/audit.log" || s.ShutdownGrace.Duration != 3*time.Second || len(s.Allow) != 2 {
		t.Fatalf("server = %+v", s)
	}
	if r := s.Allow[1]; !slices.Equal(r.UIDs, []uint32{1000, 4294967295}) || r.Targets != TargetsOwned {
		t.Errorf("second rule = %+v", r)
	}
	r := s.Allow[0]
	for typ, want := range map[string]bool{"procfs.read": true, "procfs.write": true, "sysctl.get": true, "sysctl.set": false, "mount.mount": false} {
		if got := r.MatchType(typ); got != want {
			t.Errorf("rule %v matches %q = %v, want %v", r.Types, typ, got, want)
		}
	}
	// The copy Default hands out does not share the rules.
	d := c.clone()
	d.Server.Allow[0].Types[0] = "changed"
	if c.Server.Allow[0].Types[0] != "procfs.*" {
		t.Error("clone shares [[server.allow]]")
	}
	if def := Default().Server; def.Socket != "/run/nsplug/nsplug.sock" || len(def.Allow) != 0 || def.MetricsAddress != "" || def.AuditLog != "" {
		t.Errorf("default server = %+v", def)
	}
}

func TestServerTableErrors(t *testing.T) {
	for _, tc := range []struct {
		name, toml string
		want       []string
	}{
		{"relative socket", tomlLines(`[server]`, `socket = "nsplug.sock"`),
			[]string{`config.toml:2: key "server.socket": must be an absolute, clean path, got "nsplug.sock"`}},
		{"mode", tomlLines(`[server]`, `socket_mode = 0o1777`),
			[]string{`config.toml:2: key "server.socket_mode": must be permission bits between 0o000 and 0o777, got 01777`}},
		{"metrics not loopback", tomlLines(`[server]`, `metrics_address = "0.0.0.0:9464"`),
			[]string{`config.toml:2: key "server.metrics_address": host "0.0.0.0" is not a loopback address`}},
		{"metrics no port", tomlLines(`[server]`, `metrics_address = "localhost"`),
			[]string{`config.toml:2: key "server.metrics_address": want a loopback host:port`}},
		{"audit relative", tomlLines(`[server]`, `audit_log = "audit.log"`),
			[]string{`config.toml:2: key "server.audit_log": must be an absolute path, got "audit.log"`}},
		{"grace", tomlLines(`[server]`, `shutdown_grace = "-1s"`),
			[]string{`config.toml:2: key "server.shutdown_grace": must not be negative, got "-1s"`}},
		{"no instances per user", tomlLines(`[server]`, `audit_log = ""`, `max_instances_per_user = 0`),
			[]string{`config.toml:3: key "server.max_instances_per_user": must be at least 1, got 0`}},
		{"no denial lines per user", tomlLines(`[server]`, `audit_denials_per_minute_per_user = 0`),
			[]string{`config.toml:2: key "server.audit_denials_per_minute_per_user": must be at least 1, got 0`}},
		{"no denial lines", tomlLines(`[server]`, `audit_denials_per_minute = -5`),
			[]string{`config.toml:2: key "server.audit_denials_per_minute": must be at least 1, got -5`}},
		{"no calls per user", tomlLines(`[server]`, `max_calls_per_user = -1`),
			[]string{`config.toml:2: key "server.max_calls_per_user": must be at least 1, got -1`}},
		{"user requests too small", tomlLines(`[server]`, `max_user_request_bytes = 100`),
			[]string{`config.toml:2: key "server.max_user_request_bytes": must be between 4096 and 68157440, got 100`}},
		{"rule names nobody", tomlLines(`[server]`, `socket_group = ""`, `[[server.allow]]`, `types = ["*"]`, `targets = "any"`),
			[]string{`config.toml:3: key "server.allow": rule #1 names nobody: set uids or gids`}},
		{"rule without types or targets", tomlLines(`[[server.allow]]`, `uids = [5]`),
			[]string{
				`config.toml:1: key "server.allow.types": rule #1 names no message types ("*" for all)`,
				`config.toml:1: key "server.allow.targets": rule #1: required ("any" or "owned")`,
			}},
		{"bad glob and targets", tomlLines(`[[server.allow]]`, `uids = [5]`, `types = ["procfs.read",`, `  "procfs.[" ]`, `targets = "mine"`),
			[]string{
				`config.toml:4: key "server.allow.types": invalid type glob "procfs.["`,
				`config.toml:5: key "server.allow.targets": invalid targets "mine" (want "any" or "owned")`,
			}},
		{"second rule", tomlLines(`[[server.allow]]`, `uids = [5]`, `types = ["*"]`, `targets = "any"`, `[[server.allow]]`, `gids = [7]`, `types = ["*"]`, `targets = "all"`),
			[]string{`config.toml:8: key "server.allow.targets": invalid targets "all"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml), "config.toml")
			checkConfigErr(t, err, tc.want...)
			if n := strings.Count(err.Error(), "\n") + 1; n != len(tc.want) {
				t.Errorf("%d problems reported, want %d:\n%v", n, len(tc.want), err)
			}
		})
	}
	for _, tc := range []struct{ name, toml, want string }{
		{"uid out of range", tomlLines(`[[server.allow]]`, `uids = [1,`, ` -1]`), `config.toml:3: key "server.allow.uids": item 2, -1, is out of range (0 to 4294967295)`},
		{"uid a string", tomlLines(`[[server.allow]]`, `uids = ["root"]`), `config.toml:2: key "server.allow.uids": expected array of integers, but item 1 is string`},
		{"unknown key", tomlLines(`[[server.allow]]`, `uid = [1]`), `config.toml:2: unknown key "server.allow.uid"`},
		{"allow not a table", tomlLines(`[server]`, `allow = 3`), `config.toml:2: key "server.allow": expected array of tables ([[server.allow]]), got integer`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml), "config.toml")
			checkConfigErr(t, err, tc.want)
		})
	}
}
