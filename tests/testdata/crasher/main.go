// Command crasher is a test plugin whose process exits of itself:
// crasher.exit exits in the middle of its request, and crasher.later
// answers, then exits a moment later, while its instance is idle.
package main

import (
	"context"
	"os"
	"time"

	"github.com/nsplug/nsplug/sdk"
)

type empty struct{}

func main() {
	sdk.Serve(&sdk.Plugin{
		Name: "crasher",
		Handlers: []sdk.Handler{
			sdk.Handle("crasher.exit", "exit the process during the request", func(context.Context, empty) (empty, error) {
				os.Exit(3)
				return empty{}, nil
			}),
			sdk.Handle("crasher.later", "answer, then exit 100ms later", func(context.Context, empty) (empty, error) {
				time.AfterFunc(100*time.Millisecond, func() { os.Exit(4) })
				return empty{}, nil
			}),
		},
	})
}
