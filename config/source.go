package config

import (
	"errors"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/BurntSushi/toml"
)

// source describes the TOML text a Config was decoded from.
type source struct {
	name string
	// lines maps the canonical path (see key) of every key, table,
	// array-of-tables entry and array element in the text to the line
	// (from 1) where it is defined; see scanLines.
	lines map[string]int
	// plugins holds the names of the [[plugin]] entries as decoded, so that
	// Validate can tell whether Config.Plugins still matches the file.
	plugins []string
}

// line returns the line of the canonical path canon, or 0 if unknown.
func (s *source) line(canon string, p *pluginRef) int {
	if s == nil || canon == "" || (p != nil && p.stale) {
		return 0
	}
	return s.lines[canon]
}

// keyError formats a problem with the value of key k. The line is that of the
// canonical path at if given and known, else of k, else of k's [[plugin]]
// entry.
func (s *source) keyError(k key, at, msg string) error {
	line := s.line(at, k.plugin)
	if line == 0 {
		line = s.line(k.canon, k.plugin)
	}
	if line == 0 && k.plugin != nil {
		line = s.line(k.plugin.canon, k.plugin)
	}
	return errors.New(s.prefix(line) + "key " + strconv.Quote(k.String()) + k.plugin.String() + ": " + msg)
}

func (s *source) unknownKey(k key) error {
	return errors.New(s.prefix(s.line(k.canon, k.plugin)) + "unknown key " + strconv.Quote(k.String()) + k.plugin.String())
}

func (s *source) prefix(line int) string {
	switch {
	case s == nil || s.name == "":
		return ""
	case line > 0:
		return s.name + ":" + strconv.Itoa(line) + ": "
	default:
		return s.name + ": "
	}
}

// key names a configuration key in two ways: dotted, the TOML key as
// written in its table (e.g. plugin.mode), for messages; and canon, which
// also contains array indexes, for line lookups: each key segment as a Go
// quoted string, each index as [i], e.g. "plugin"[1]"mode".
type key struct {
	dotted []string
	canon  string
	plugin *pluginRef
}

func (k key) child(name string) key {
	return key{
		dotted: append(slices.Clip(k.dotted), name),
		canon:  k.canon + strconv.Quote(name),
		plugin: k.plugin,
	}
}

func (k key) elem(i int) key {
	k.canon += "[" + strconv.Itoa(i) + "]"
	return k
}

func (k key) String() string { return toml.Key(k.dotted).String() }

// pluginRef identifies the [[plugin]] entry a key belongs to.
type pluginRef struct {
	index int    // from 0
	name  string // may be empty
	canon string // canonical path of the entry
	stale bool   // Config.Plugins no longer matches the file: no lines
}

func (p *pluginRef) String() string {
	switch {
	case p == nil:
		return ""
	case p.name == "":
		return " in plugin #" + strconv.Itoa(p.index+1)
	default:
		return " in plugin #" + strconv.Itoa(p.index+1) + " " + strconv.Quote(p.name)
	}
}

// pluginKey is the key of entry i of c.Plugins, named name.
func (c *Config) pluginKey(i int, name string) key {
	pk := key{}.child("plugin").elem(i)
	pk.plugin = &pluginRef{index: i, name: name, canon: pk.canon}
	if c.src != nil && (i >= len(c.src.plugins) || c.src.plugins[i] != name) {
		pk.plugin.stale = true
	}
	return pk
}

// OptionError places an error that plugin's Configure hook reported about
// its options (wire.OptionError: optionKey like "a.b[2].c", or "" for the
// options as a whole) in the configuration: it names the key and the plugin
// and, for a parsed Config, the file and the line of the deepest part of
// the key that is in the file (else of the options table, else of the
// plugin's entry). Options are the plugin's to check, so this is the one
// configuration error that is found when the plugin loads, not by Validate.
func (c *Config) OptionError(plugin, optionKey, msg string) error {
	k := key{}.child("plugin").child("options")
	index := slices.IndexFunc(c.Plugins, func(p Plugin) bool { return p.Name == plugin })
	if index < 0 {
		// No [[plugin]] entry: the option cannot be in the file.
		name := "plugin.options"
		if optionKey != "" {
			name += "." + optionKey
		}
		return errors.New(c.src.prefix(0) + "key " + strconv.Quote(name) + " of plugin " + strconv.Quote(plugin) + " (no [[plugin]] entry): " + msg)
	}
	k = c.pluginKey(index, plugin).child("options")
	at := k.canon
	for _, seg := range optionKeySegment().FindAllString(optionKey, -1) {
		if n, err := strconv.Atoi(strings.Trim(seg, "[]")); err == nil && strings.HasPrefix(seg, "[") {
			k = k.elem(n)
		} else {
			k = k.child(seg)
		}
		if c.src.line(k.canon, k.plugin) > 0 {
			at = k.canon
		}
	}
	return c.src.keyError(k, at, msg)
}

// PluginKeyError places an error found only when plugin is loaded (its
// path cannot be run, its sha256 does not match, a type it is said to
// serve it does not) at pluginKey of its [[plugin]] entry ("path",
// "sha256", "types", "name"): it names the key and the plugin and, for a
// parsed Config, the file and the line. A plugin without an entry (a
// built-in with defaults) gets msg as it is.
func (c *Config) PluginKeyError(plugin, pluginKey, msg string) error {
	index := slices.IndexFunc(c.Plugins, func(p Plugin) bool { return p.Name == plugin })
	if index < 0 {
		return errors.New(msg)
	}
	k := c.pluginKey(index, plugin).child(pluginKey)
	return c.src.keyError(k, k.canon, msg)
}

// optionKeySegment splits an option key, "a.b[2].c", into "a", "b", "[2]"
// and "c". Compiled on first use (an error path), not at init.
var optionKeySegment = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`\[\d+\]|[^.\[]+`) })
