package core

import (
	"testing"

	"github.com/nsplug/nsplug/sdk"
)

func TestConfigPluginLoadingKeys(t *testing.T) {
	c, err := ParseConfig([]byte("max_plugin_bytes = 1024\nfail_on_plugin_error = true\n"), "n.toml")
	if err != nil || c.MaxPluginBytes != 1024 || !c.FailOnPluginError {
		t.Fatalf("ParseConfig: %+v, %v", c, err)
	}
	_, err = ParseConfig([]byte("log_level = \"info\"\nmax_plugin_bytes = \"1M\"\nfail_on_plugin_error = 1\n"), "n.toml")
	checkConfigErr(t, err, `n.toml:2: key "max_plugin_bytes": expected integer, got string`,
		`n.toml:3: key "fail_on_plugin_error": expected boolean, got integer`)
	_, err = ParseConfig([]byte("\nmax_plugin_bytes = 0\n"), "n.toml")
	checkConfigErr(t, err, `n.toml:2: key "max_plugin_bytes": must be at least 1, got 0`)
}

// An option error a plugin reports is placed at its line: the key's, an
// array element's, else the options table's.
func TestConfigOptionErrorLines(t *testing.T) {
	c, err := ParseConfig([]byte(tomlLines(
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
		if got := c.optionError("b", &sdk.OptionError{Key: tc.key, Msg: "m"}).Error(); got != tc.want {
			t.Errorf("key %q: %s, want %s", tc.key, got, tc.want)
		}
	}
}
