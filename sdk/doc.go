// Package sdk is what a plugin author imports to write an nsplug handler
// plugin.
//
// A plugin is a small Go program: it registers one typed handler per message
// type and calls Serve. The nsplug core starts it on the host; before the Go
// runtime starts, the nsexec preamble (linked in by importing this package)
// moves the process into the target's namespaces. By the time a handler runs,
// the process sees the target's filesystem, pid numbering, network and
// hostname, with the target's root credentials, and holds no host file
// descriptor, host cwd or host root.
//
//	func main() {
//		sdk.Serve(&sdk.Plugin{
//			Name: "hello",
//			Handlers: []sdk.Handler{
//				sdk.Handle("hello.greet", "Say hello from inside the target", greet),
//			},
//		})
//	}
//
//	func greet(ctx context.Context, req GreetRequest) (GreetResponse, error) { ... }
//
// Requests and responses are JSON objects decoded into and encoded from the
// handler's types, strictly (DecodeStrict): unknown, case-folded and
// duplicate fields are rejected with EINVAL. Paths and other names the
// kernel treats as bytes are Name: a plain JSON string when they are UTF-8,
// {"base64": "..."} when not. A handler error keeps its errno (see Error and Errorf): the caller of the core gets
// ENOENT, EACCES, ... intact.
//
// What a handler may assume about the target: nothing. Its root may be an
// empty tmpfs with no libc, no /proc and no /sys. Use Env.Proc and Env.Sys
// (fresh mounts the core makes on request) instead of /proc paths, never
// resolve users through NSS or cgo, and validate every path with
// Env.CheckPath.
//
// A handler logs through Env.Log (the core's log, under the plugin's name,
// with the request id and target pid), reads the plugin's options with
// OptionsFrom (checked once, at load, by Plugin.Configure; see
// TypedOptions), and returns when its context is done: request_timeout
// and the caller's cancellation end it, and the instance is then killed.
// One message is at most MaxMessageBytes.
//
// Package sdk/sdktest tests plugins: handlers in-process (sdktest.Call),
// and the built executable through the real core against a throwaway
// target (sdktest.NewHarness). sdk/README.md is the author's guide, with
// what a plugin written in another language must do.
//
// The contract between the core and a plugin is package wire
// (wire/README.md); the sdk implements the plugin's side of it, and a
// plugin author needs nothing of it.
//
// Everything here but Serve is package sdk/handler's, re-exported (the
// types are aliases): handler is the sdk without go-plugin and gRPC, for
// code that only ever serves the frame channel (nsplug's built-ins, in the
// lean bin/nsplug-handler). A plugin of its own imports sdk: Serve answers
// the core's Describe over go-plugin.
package sdk
