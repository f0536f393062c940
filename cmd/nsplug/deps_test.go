package main

import (
	"testing"

	"github.com/nsplug/nsplug/internal/depcheck"
)

// The front is what an operator's every `nsplug call` starts: it links
// nothing whose package init and size it would pay at every start and
// never use, and none of nsplugd's parts.
func TestFrontIsLean(t *testing.T) {
	depcheck.Forbid(t, "github.com/nsplug/nsplug/cmd/nsplug", append(depcheck.Heavy,
		"github.com/nsplug/nsplug/core/goplugin",
		"github.com/nsplug/nsplug/server",
		"github.com/nsplug/nsplug/api/v1/service",
		"github.com/nsplug/nsplug/wire/control")...)
}
