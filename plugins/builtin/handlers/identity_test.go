package handlers

import (
	"context"
	"testing"

	"github.com/nsplug/nsplug/sdk/handler"
)

// Identity tells apart any two sets of built-ins a core could describe
// differently, and only those.
func TestIdentity(t *testing.T) {
	type none struct{}
	fn := func(context.Context, none) (none, error) { return none{}, nil }
	plugin := func(name string, types ...handler.Handler) *handler.Plugin {
		return &handler.Plugin{Name: name, Handlers: types}
	}
	base := []*handler.Plugin{plugin("a", handler.Handle("a.x", "does x", fn))}
	if Identity(base...) != Identity(plugin("a", handler.Handle("a.x", "does x", fn))) {
		t.Error("the same set has two identities")
	}
	if Identity(Plugins()...) != Identity(Plugins()...) {
		t.Error("the built-ins have two identities")
	}
	withMounts := plugin("a", handler.Handle("a.x", "does x", fn))
	withMounts.FreshMounts = []string{"proc"}
	for name, other := range map[string][]*handler.Plugin{
		"another version":     {plugin("a", handler.Handle("a.x", "does x", fn).WithVersion(2))},
		"another type":        {plugin("a", handler.Handle("a.y", "does x", fn))},
		"another description": {plugin("a", handler.Handle("a.x", "does y", fn))},
		"a fresh mount":       {withMounts},
		"one more plugin":     append(base, plugin("b")),
		"none":                nil,
		"fields run together": {plugin("a", handler.Handle("a.xd", "oes x", fn))},
	} {
		if Identity(other...) == Identity(base...) {
			t.Errorf("%s: same identity", name)
		}
	}
}
