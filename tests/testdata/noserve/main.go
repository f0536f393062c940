// Command noserve is a test plugin that gets its start wrong the two ways
// a new author does, chosen at build time:
//
//	go build -ldflags "-X main.mistake=print" ./tests/testdata/noserve  # prints, then calls sdk.Serve
//	go build -ldflags "-X main.mistake=exit" ./tests/testdata/noserve   # returns from main without sdk.Serve
//
// The core's start error is to say which.
package main

import (
	"context"
	"fmt"

	"github.com/nsplug/nsplug/sdk"
)

var mistake = "print"

func main() {
	p := &sdk.Plugin{Name: "noserve", Handlers: []sdk.Handler{
		sdk.Handle("noserve.ping", "answer", func(context.Context, struct{}) (struct{}, error) { return struct{}{}, nil }),
	}}
	switch mistake {
	case "print":
		fmt.Println("hello from main")
		sdk.Serve(p)
	case "exit":
		// Set up, and forget sdk.Serve.
	}
}
