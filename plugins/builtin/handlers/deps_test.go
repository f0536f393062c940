package handlers_test

import (
	"testing"

	"github.com/nsplug/nsplug/internal/depcheck"
)

// What serves the built-ins in every target links none of the core's
// heavy dependencies: their package init (protobuf descriptors of gRPC's
// services, prometheus's procfs, gob's type registry, html/template) would
// run, and their memory be held, in every handler process.
func TestHandlerSideIsLean(t *testing.T) {
	for _, pkg := range []string{
		"github.com/nsplug/nsplug/wire",
		"github.com/nsplug/nsplug/sdk/handler",
		"github.com/nsplug/nsplug/plugins/builtin/handlers",
		"github.com/nsplug/nsplug/cmd/nsplug-handler",
	} {
		depcheck.Forbid(t, pkg, append(depcheck.Heavy,
			"github.com/nsplug/nsplug/core",
			"github.com/nsplug/nsplug/wire/control",
			"github.com/nsplug/nsplug/sdk")...) // the package: sdk/handler is its lean part
	}
}
