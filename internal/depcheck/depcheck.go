// Package depcheck is for tests that keep a package from linking what it
// must not: the lean binaries (bin/nsplug, bin/nsplug-handler) and the
// packages they are made of pay, at every process start, the init and
// size of everything they link.
package depcheck

import (
	"os/exec"
	"strings"
	"testing"
)

// Heavy are the packages a lean binary must not link (a prefix when it ends
// in "/"): gRPC and protobuf's descriptor builder, go-plugin with net/rpc,
// gob and html/template, prometheus, x/net/trace (gRPC's).
var Heavy = []string{
	"google.golang.org/grpc", "google.golang.org/grpc/",
	"golang.org/x/net/trace",
	"google.golang.org/protobuf/reflect/protodesc",
	"github.com/hashicorp/go-plugin", "github.com/hashicorp/go-plugin/",
	"github.com/prometheus/",
	"net/rpc",
	"encoding/gob",
	"html/template",
}

// Forbid fails t for every package pkg links (go list -deps) that is one of
// forbidden.
func Forbid(t testing.TB, pkg string, forbidden ...string) {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps %s: implausible output %q", pkg, deps)
	}
	for _, dep := range deps {
		if IsOneOf(dep, forbidden) {
			t.Errorf("%s links %s", pkg, dep)
		}
	}
}

// IsOneOf says whether pkg is one of list (an entry ending in "/" is a
// prefix).
func IsOneOf(pkg string, list []string) bool {
	for _, f := range list {
		if pkg == f || strings.HasSuffix(f, "/") && strings.HasPrefix(pkg, f) {
			return true
		}
	}
	return false
}
