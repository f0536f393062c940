// Package nsexec joins a target process's namespaces before the Go runtime
// starts.
//
// Importing the package links a small C constructor (nsexec.c) into the
// binary. The constructor does nothing unless the process was started with a
// bootstrap (see Bootstrap): then it joins the target's namespaces, forks into
// its pid namespace when needed, takes the target's root credentials and
// returns into the Go runtime, which starts already inside. Every nsplug plugin
// carries it through the sdk, as runc's init carries its nsenter package.
//
// The host side builds a Bootstrap and applies it to an exec.Cmd; the
// in-namespace side reads what happened with Self.
//
// The constructor is C, so it is there only in a binary built with cgo.
// Built without (the nsplug front is: it starts faster without the C
// runtime), the package keeps its Go API, reports no bootstrap, and makes
// a process that was started with one exit at once with an error (see
// nocgo.go): such a binary can never serve in a target's namespaces.
package nsexec
