package handler

import (
	"runtime/debug"
	"testing"
)

// setGOGC applies what wire.EnvGOGC asks for, and nothing for an empty
// or bad value.
func TestSetGOGC(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)
	for _, c := range []struct {
		env  string
		want int
	}{{"25", 25}, {"off", -1}, {"", 100}, {"x", 100}, {"25%", 100}} {
		debug.SetGCPercent(100)
		setGOGC(c.env)()
		if got := debug.SetGCPercent(100); got != c.want {
			t.Errorf("setGOGC(%q): GC percent %d, want %d", c.env, got, c.want)
		}
	}
}
