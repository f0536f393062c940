package sdk

import (
	"context"
	"encoding/json"
	"syscall"

	"github.com/nsplug/nsplug/sdk/handler"
)

// The author's API is package sdk/handler's, re-exported here so that a
// plugin imports one package: sdk adds only Serve (go-plugin's control
// plane, for Describe). Types are aliases, so values cross freely between
// the two; each function is handler's, documented there.

type (
	// Plugin describes a plugin: see handler.Plugin.
	Plugin = handler.Plugin
	// Handler serves one message type: see handler.Handler.
	Handler = handler.Handler
	// TypedHandler is a Handler over request and response structs: see
	// handler.TypedHandler.
	TypedHandler[Req, Resp any] = handler.TypedHandler[Req, Resp]
	// Env is what a handler knows of its request: see handler.Env.
	Env = handler.Env
	// Error is an error with an errno: see handler.Error.
	Error = handler.Error
	// OptionError is an invalid option: see handler.OptionError.
	OptionError = handler.OptionError
	// Name is a path or other name the kernel treats as bytes: see
	// handler.Name.
	Name = handler.Name
)

const (
	// MaxMessageBytes bounds one message: see handler.MaxMessageBytes.
	MaxMessageBytes = handler.MaxMessageBytes
	// MaxFiles bounds the files of one response: see handler.MaxFiles.
	MaxFiles = handler.MaxFiles
	// MaxNesting bounds a payload's nesting: see handler.MaxNesting.
	MaxNesting = handler.MaxNesting
)

// Handle makes the handler of message type name from fn: see handler.Handle.
func Handle[Req, Resp any](name, description string, fn func(ctx context.Context, req Req) (Resp, error)) *TypedHandler[Req, Resp] {
	return handler.Handle(name, description, fn)
}

// DecodeStrict decodes a JSON payload strictly: see handler.DecodeStrict.
func DecodeStrict(payload []byte, v any) error { return handler.DecodeStrict(payload, v) }

// EnvFrom returns the Env of a handler's context: see handler.EnvFrom.
func EnvFrom(ctx context.Context) *Env { return handler.EnvFrom(ctx) }

// WithEnv returns ctx carrying env: see handler.WithEnv.
func WithEnv(ctx context.Context, env *Env) context.Context { return handler.WithEnv(ctx, env) }

// CheckPathSyntax checks a path's syntax: see handler.CheckPathSyntax.
func CheckPathSyntax(p string) error { return handler.CheckPathSyntax(p) }

// Errorf returns an Error with errno: see handler.Errorf.
func Errorf(errno syscall.Errno, format string, args ...any) *Error {
	return handler.Errorf(errno, format, args...)
}

// AsError converts err to an Error: see handler.AsError.
func AsError(err error) *Error { return handler.AsError(err) }

// ErrnoName names an errno: see handler.ErrnoName.
func ErrnoName(e syscall.Errno) string { return handler.ErrnoName(e) }

// OptionErrorf returns the OptionError of key: see handler.OptionErrorf.
func OptionErrorf(key, format string, args ...any) *OptionError {
	return handler.OptionErrorf(key, format, args...)
}

// TypedOptions returns a Plugin.Configure hook for options of type T: see
// handler.TypedOptions.
func TypedOptions[T any](defaults T, check func(*T) error) func(json.RawMessage) (any, error) {
	return handler.TypedOptions(defaults, check)
}

// OptionsFrom returns the plugin's options: see handler.OptionsFrom.
func OptionsFrom[T any](ctx context.Context) T { return handler.OptionsFrom[T](ctx) }
