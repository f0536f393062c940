// Package handlers is the handler side of nsplug's built-in plugins: the
// one place that knows them by name (Plugins) and the in-namespace entry
// point of a process started to serve them (Main, Serve). It links the
// built-ins, the lean part of the sdk (sdk/handler), wire's messages and
// the nsexec preamble, and nothing of the core, gRPC or go-plugin, so that
// a binary made of it alone (cmd/nsplug-handler) starts in a fraction of
// the time and memory of one that also holds the core (deps_test.go keeps
// it so). Package plugins/builtin registers the same plugins with the core.
package handlers

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/nsplug/nsplug/internal/inproc"
	"github.com/nsplug/nsplug/nsexec"
	"github.com/nsplug/nsplug/plugins/fs"
	"github.com/nsplug/nsplug/plugins/ids"
	"github.com/nsplug/nsplug/plugins/mount"
	"github.com/nsplug/nsplug/plugins/procfs"
	"github.com/nsplug/nsplug/plugins/sysctl"
	"github.com/nsplug/nsplug/sdk/handler"
	"github.com/nsplug/nsplug/wire"
)

// Plugins returns nsplug's built-in plugins, as written with the sdk.
func Plugins() []*handler.Plugin {
	return []*handler.Plugin{
		procfs.Plugin(),
		fs.Plugin(),
		ids.Plugin(),
		sysctl.Plugin(),
		mount.Plugin(),
	}
}

// Main serves the built-in plugins when this process was started as one
// (and then never returns); otherwise it returns at once.
func Main() { Serve(Plugins()...) }

// Serve serves the plugins wire.EnvBuiltin names, if this process was
// started by a core to be built-ins, and then never returns; otherwise
// it returns at once. Call it first thing in main (and in TestMain of
// tests whose dispatcher serves built-ins).
func Serve(plugins ...*handler.Plugin) {
	names, ok := os.LookupEnv(wire.EnvBuiltin)
	if !ok {
		return
	}
	if want := os.Getenv(wire.EnvBuiltinBuild); want != "" {
		if got := Identity(plugins...); got != want {
			fail(fmt.Sprintf("nsplug: the executable serving the built-ins is not of the core's build (its built-ins are %s, the core's %s): install the core and the handler binary beside it from one build, or remove the handler binary", got, want))
		}
		os.Unsetenv(wire.EnvBuiltinBuild)
	}
	var serve []any
	for _, name := range strings.Split(names, ",") {
		i := slices.IndexFunc(plugins, func(p *handler.Plugin) bool { return p.Name == name })
		if i < 0 {
			fail(fmt.Sprintf("nsplug: no built-in plugin %q in this binary", name))
		}
		serve = append(serve, plugins[i])
	}
	inproc.ServeShared(serve)
}

func fail(msg string) {
	nsexec.ReportFailure(msg)
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(1)
}

// Identity identifies a set of built-in plugins as a core describes them:
// a hash of the protocol version and of their names, fresh mounts and
// message types (name, version, description, the namespaces each changes).
// The core passes its own (core.Builtin.Build, wire.EnvBuiltinBuild) to
// every built-in process, and Serve refuses to serve under another: a
// handler binary of another build, whose built-ins are not the ones the
// core described and checked the configuration against, fails to start
// with an error saying so. It is of the built-ins' contract, not of their
// code: a pair of builds whose built-ins differ in code alone passes (and
// whether a build stamped VCS information does not matter: a test binary
// never does). It reads no executable: hashing 20 MiB would cost more than
// a start.
func Identity(plugins ...*handler.Plugin) string {
	h := sha256.New()
	var buf []byte
	field := func(s string) { // length-prefixed: fields cannot run into each other
		buf = append(strconv.AppendInt(buf[:0], int64(len(s)), 10), ':')
		h.Write(append(buf, s...))
	}
	field(strconv.Itoa(wire.ProtocolVersion))
	for _, p := range plugins {
		field(p.Name)
		field(strings.Join(p.FreshMounts, ","))
		for _, hd := range p.Handlers {
			d := hd.Describe()
			field(d.Name)
			field(strconv.FormatUint(uint64(d.Version), 10))
			field(d.Description)
			field(strings.Join(d.Changes, ","))
			field(strings.Join(d.MayChange, ","))
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}
