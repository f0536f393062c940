package config

import (
	_ "embed"
	"errors"
	"fmt"
	"os"

	"github.com/nsplug/nsplug/internal/safefile"
)

// defaultTOML is the default configuration, and the only statement of the
// defaults. default_gen.go holds it as the same strict decoder and
// Validate make it (decodedDefault), so that a process does not pay for
// decoding it at every start (~0.7 ms in a fresh process here: the first
// use of the TOML decoder's reflection); TestGeneratedDefaultIsDefaultTOML
// fails when the two differ and rewrites the file with -update-default.
//
//go:embed default.toml
var defaultTOML []byte

// Default returns the default configuration: the embedded
// config/default.toml, decoded with the same strict decoder as Load, with
// every setting filled in and no [[plugin]] entries, which means that every
// built-in plugin runs with the defaults. Each call returns a new copy.
func Default() *Config {
	c := decodedDefault.clone()
	c.src = nil // changes made in Go are not in default.toml
	return c
}

// Load reads, decodes and validates the TOML configuration file at path.
// Error messages refer to the file as path.
//
// Loaded by root, the file, and every directory above it, must be root's
// (or this process's user's) and writable by no one else (safefile.Check):
// whoever could write it would decide what nsplug runs as root and whom
// it serves.
func Load(path string) (*Config, error) {
	var unsafe *safefile.UnsafeError
	if os.Geteuid() == 0 && errors.As(safefile.Check(path, true), &unsafe) {
		return nil, fmt.Errorf("config: refusing %s: %v; whoever can write it decides what nsplug runs as root and who may call it", path, unsafe)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(data, path)
}

// Parse decodes and validates a TOML configuration. Keys it does not set
// keep their Default values. name identifies the source in error messages,
// which look like
//
//	config.toml:12: unknown key "plugin.mdoe" in plugin #2 "netstat"
//	config.toml:7: key "defaults.idle_timeout": invalid duration "3x"
//
// All problems found are reported, joined with errors.Join; decoding
// problems (syntax, unknown keys, wrong types) are reported before, and
// instead of, validation problems.
func Parse(data []byte, name string) (*Config, error) {
	c := Default()
	if err := decode(c, data, name); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}
