// Package handler is the sdk without its control plane: plugins, typed
// handlers, Env, errors, names, options and the frame channel's server, but
// not go-plugin or gRPC. Package sdk re-exports all of it (its types are
// aliases of these) and adds sdk.Serve, which answers the core's Describe
// over go-plugin; read the author's documentation there.
//
// It exists so that what only serves requests can be lean: every process
// the core starts to serve (pooled or oneshot) serves the frame channel
// alone, and nsplug's built-ins, which the core describes in its own
// process, never need go-plugin at all. The built-ins import this package,
// and bin/nsplug-handler, which serves them, links no gRPC, go-plugin,
// net/rpc or gob (plugins/builtin/handlers, deps_test.go): package init
// and start cost a fraction of the full binary's, in every instance.
package handler
