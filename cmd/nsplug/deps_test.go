package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The front is what an operator's every `nsplug call` starts: it links
// nothing whose package init and size it would pay at every start and
// never use (gRPC, go-plugin with net/rpc and gob, prometheus), and no
// core/goplugin or server, which are nsplugd's.
func TestFrontIsLean(t *testing.T) {
	heavy := []string{ // packages; a prefix when it ends in "/"
		"google.golang.org/grpc",
		"google.golang.org/protobuf/reflect/protodesc",
		"github.com/hashicorp/go-plugin",
		"github.com/prometheus/",
		"net/rpc",
		"encoding/gob",
		"html/template",
		"github.com/nsplug/nsplug/core/goplugin",
		"github.com/nsplug/nsplug/server",
		"github.com/nsplug/nsplug/api/v1/service",
		"github.com/nsplug/nsplug/wire/control",
	}
	out, err := exec.Command("go", "list", "-deps", "github.com/nsplug/nsplug/cmd/nsplug").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 20 {
		t.Fatalf("go list -deps: implausible output %q", deps)
	}
	for _, dep := range deps {
		for _, h := range heavy {
			if dep == h || strings.HasSuffix(h, "/") && strings.HasPrefix(dep, h) {
				t.Errorf("bin/nsplug links %s", dep)
			}
		}
	}
}
