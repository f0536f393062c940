// Package core is nsplug's dispatcher: the host side, embeddable in any Go
// daemon. It runs requests inside other processes' namespaces through
// plugins, and owns every process it starts for that.
//
// A Dispatcher is built from a config.Config (TOML, see package config:
// config.Load) and the built-in plugins of the binary (Options.Builtins). For each request it
//
//   - pins the target with a pidfd (a dead or recycled PID is never
//     entered; Request.StartTime, and Target.StartTime for Prepare,
//     refuse a PID reused before the request)
//     and reads which of its namespaces differ from the core's; a daemon's
//     Request.Authorize hook then decides on the process actually pinned;
//   - finds the plugin serving the message type and a warm instance of it
//     for exactly those namespaces and credentials, or starts one: the
//     plugin's sealed executable is exec'd on the host and the nsexec
//     preamble moves it into the target's namespaces before its Go
//     runtime starts (runner.go, instance.go);
//   - sends the request on the instance's frame channel (frames.go, the
//     data plane; go-plugin's gRPC is only the control plane: handshake,
//     Describe, shutdown, for a third-party plugin at load, through
//     core/goplugin), with the request's deadline and a cancel frame
//     when it passes; and returns the JSON answer, the files the handler
//     handed back and errors that keep their errno (*Error), decoded in
//     one place (instance.call) whatever the mode.
//
// Instances are kept per (plugin, namespaces, credentials) in a pool
// (pool.go) with an idle timeout and a global cap; in oneshot mode each
// request gets an instance of its own, started without go-plugin, that
// serves it through the same call and is then ended (oneshot.go). Close kills and reaps all of
// them. A binary that serves built-ins (Options.Builtins, see Builtin)
// must serve them first thing in main (plugins/builtin.Main): the core
// starts them by re-executing it, unless the lean HandlerExecutable of the
// same built-ins is installed next to it (or Options.Executable names
// one).
//
// A daemon that authorizes its own clients can take itself off the path
// of their requests: OpenChannel hands a client a direct channel to the
// warm instance serving a type for a target, which the serving process
// holds to its grant and the core watches and revokes (channel.go).
//
// A third-party plugin (a [[plugin]] with a path) is described at load
// through go-plugin, which this package does not link: a binary that
// loads them imports core/goplugin for its effect (nsplug's CLI and
// package server do). Without it the core serves built-ins only, and such
// a plugin fails to load naming that package.
//
// The host side is this package; the contract is package wire (wire/README.md
// specifies it); the in-namespace side is nsexec and sdk. The core imports
// wire, never the sdk.
package core
