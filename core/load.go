package core

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/nsplug/nsplug/config"
	"github.com/nsplug/nsplug/core/internal/describe"
	"github.com/nsplug/nsplug/internal/safefile"
	"github.com/nsplug/nsplug/nsexec/boot"
	"github.com/nsplug/nsplug/wire"
)

// loader loads the configured plugins one by one for New. A plugin that
// fails to load does not stop the others (see Dispatcher.recordFailure).
type loader struct {
	d        *Dispatcher
	cfg      *config.Config
	builtins map[string]*Builtin
	self     string            // the executable serving the built-ins (Options.Executable, or builtinExecutable's)
	selfExe  *sealedExecutable // its sealed copy, made once for all of them
	selfErr  error
}

// load seals a plugin's executable, checks its options, learns what it
// serves and registers its types.
func (l *loader) load(e *pluginEntry, pc *config.Plugin) error {
	e.builtin = pc.Path == ""
	if err := l.d.setUp(l.cfg, pc, e); err != nil {
		return err
	}
	var served *wire.DescribeResponse
	var err error
	if e.builtin {
		served, err = l.describeBuiltin(e, pc)
	} else if describe.Registered() == nil {
		return l.keyError(pc, "path", errNoDescriber) // before sealing: nothing to seal it for
	} else {
		// Without sha256 the file's content is whoever can write it:
		// as root, only root's (or this user's) may run in every target.
		// (A missing file or one of another kind is sealExecutable's to
		// report.)
		var unsafe *safefile.UnsafeError
		if pc.SHA256 == "" && os.Geteuid() == 0 && errors.As(safefile.Check(pc.Path, true), &unsafe) {
			return l.keyError(pc, "path", fmt.Errorf("refusing %s: %v; whoever can write it would run code as root in every target: make it and its directories root's and writable by no one else, or pin its content with sha256", pc.Path, unsafe))
		}
		if e.exe, err = sealExecutable(pc.Name, pc.Path, strings.ToLower(pc.SHA256), l.cfg.MaxPluginBytes); err != nil {
			key := "path"
			if errors.As(err, new(checksumError)) {
				key = "sha256"
			}
			return l.keyError(pc, key, err)
		}
		e.sha256 = e.exe.sha256
		served, err = l.d.describeExternal(e)
	}
	if err != nil {
		if oe, ok := wire.ParseOptionError(err); ok {
			return l.cfg.OptionError(pc.Name, oe.Key, oe.Msg) // names the plugin
		}
		return err
	}
	for _, m := range served.FreshMounts {
		e.freshProc = e.freshProc || m == "proc"
		e.freshSys = e.freshSys || m == "sys"
		e.freshCgroup = e.freshCgroup || m == "cgroup"
	}
	if err := l.d.register(e, pc.Types, served.Types); err != nil {
		if errors.As(err, new(unservedTypeError)) {
			return l.keyError(pc, "types", err)
		}
		return err
	}
	return nil
}

// keyError places a load failure at the key of pc's entry it is about
// (the entry already names the plugin).
func (l *loader) keyError(pc *config.Plugin, key string, err error) error {
	return l.cfg.PluginKeyError(pc.Name, key, strings.TrimPrefix(err.Error(), "plugin "+pc.Name+": "))
}

// describeBuiltin describes a built-in in this process, running its
// Configure hook on the configured options as its instances will.
func (l *loader) describeBuiltin(e *pluginEntry, pc *config.Plugin) (*wire.DescribeResponse, error) {
	b := l.builtins[pc.Name]
	if b == nil {
		return nil, l.keyError(pc, "name", fmt.Errorf("no path given and no built-in plugin of that name (built-ins: %s)", strings.Join(sortedKeys(l.builtins), ", ")))
	}
	if l.selfExe == nil && l.selfErr == nil {
		if l.self == "" {
			l.self, l.selfErr = l.builtinExecutable()
		}
		if l.selfErr == nil {
			l.selfExe, l.selfErr = l.openSelf()
		}
	}
	if l.selfErr != nil {
		return nil, l.selfErr
	}
	e.exe, e.path = l.selfExe, l.self // its sha256: e.exe.sum(), when asked
	var pcfg wire.PluginConfig
	if err := json.Unmarshal(e.pluginConfig, &pcfg); err != nil {
		return nil, fmt.Errorf("plugin %s: %w", e.name, err)
	}
	return b.Describe(&pcfg)
}

// builtinExecutable finds the executable that serves the built-ins when
// Options.Executable names none: the lean HandlerExecutable next to this
// process's executable, when it is there and the built-ins have a Build to
// check it against (a handler of another build then fails to start,
// saying so); else this process's executable, re-executed. A handler
// there that others could have replaced is refused, not skipped.
//
// A binary built without cgo has no nsexec preamble and cannot be
// re-executed to serve: it needs the handler executable beside it.
func (l *loader) builtinExecutable() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return self, err
	}
	lean := ""
	if l.d.build != "" {
		if lean, err = handlerNextTo(self); err != nil {
			return self, err
		}
	}
	if lean == "" {
		if !boot.PreambleLinked() {
			return self, fmt.Errorf("built-ins: no %s beside %s, and %s cannot serve them itself (it was built without cgo, so without the nsexec preamble): install %s from the same build beside it", HandlerExecutable, self, filepath.Base(self), HandlerExecutable)
		}
		return self, nil
	}
	l.d.log.Debug("built-ins start from the handler executable", "path", lean)
	return lean, nil
}

// openSelf opens the executable serving the built-ins, once for all of
// them: through a detached read-only overlay, or, where the kernel or the
// core's privileges allow none, as a sealed copy (see sealedExecutable).
// The overlay's second lower layer is runtime_dir, root's alone: the
// executable's directory above it decides what its name finds, and
// overlayExecutable checks that it found the file at l.self.
func (l *loader) openSelf() (*sealedExecutable, error) {
	exe, err := overlayExecutable("builtin", l.self, l.d.runDir.root, l.cfg.MaxPluginBytes)
	if err == nil {
		return exe, nil
	}
	l.d.log.Debug("built-ins start from a sealed copy of the executable", "reason", err)
	return sealExecutable("builtin", l.self, "", l.cfg.MaxPluginBytes)
}

// knownTypes are the types a plugin would serve, as far as they are known
// without loading it: those the configuration lists, or a built-in's.
func (l *loader) knownTypes(pc *config.Plugin) []string {
	if len(pc.Types) > 0 || pc.Path != "" || l.builtins[pc.Name] == nil {
		return pc.Types
	}
	return l.builtins[pc.Name].Types
}

// recordFailure marks e as failed to load: it serves nothing, and a
// request of one of its types (see knownTypes) fails naming err. It is
// logged once, at level: not an error of the dispatcher, which serves the
// other plugins as configured (fail_on_plugin_error would make it one).
func (d *Dispatcher) recordFailure(e *pluginEntry, types []string, err error, level hclog.Level) {
	e.err, e.types = err, nil
	for n, owner := range d.types {
		if owner == e {
			delete(d.types, n)
		}
	}
	for _, n := range types {
		if d.failed[n] == nil {
			d.failed[n] = e
		}
	}
	if e.exe != nil && !e.builtin {
		e.exe.close() // its memory is of no use now
		e.exe = nil
	}
	// A built-in's is shared with the others (Close closes it), and
	// keeps what Plugins shows of it.
	d.log.Log(level, "plugin failed to load: its types are refused, the other plugins serve", "plugin", e.name, "error", e.reason())
}

// reason is why e failed to load, on one line, without the plugin's name
// for a prefix (every message that shows it names the plugin).
func (e *pluginEntry) reason() string {
	msg := strings.TrimPrefix(e.err.Error(), "plugin "+e.name+": ")
	return strings.Join(strings.Fields(strings.ReplaceAll(msg, ":\n", ": ")), " ")
}

// unknownType is the error for a request of a type no loaded plugin
// serves: ENOPKG when the type is configured for a plugin that failed to
// load, else EOPNOTSUPP, mentioning any plugin that failed (it might
// have served the type).
func (d *Dispatcher) unknownType(typ string) error {
	if e := d.failed[typ]; e != nil {
		return errorf(syscall.ENOPKG, "message type %q: plugin %s failed to load: %s", typ, e.name, e.reason())
	}
	msg := fmt.Sprintf("unknown message type %q (known: %s)", typ, strings.Join(sortedKeys(d.types), ", "))
	typesKnown := make(map[*pluginEntry]bool)
	for _, e := range d.failed {
		typesKnown[e] = true
	}
	var failed []string
	for _, e := range d.plugins {
		switch {
		case e.err == nil || typesKnown[e]:
		case strings.HasPrefix(typ, e.name+"."):
			// Types are named after their plugin, by convention.
			return errorf(syscall.EOPNOTSUPP, "%s; plugin %s, which may serve it, failed to load: %s", msg, e.name, e.reason())
		default:
			failed = append(failed, e.name)
		}
	}
	if len(failed) > 0 {
		msg += fmt.Sprintf("; plugins that failed to load, and may serve it: %s (nsplug plugins shows why)", strings.Join(failed, ", "))
	}
	return errorf(syscall.EOPNOTSUPP, "%s", msg)
}
