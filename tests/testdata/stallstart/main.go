// Command stallstart is a test plugin whose start never completes in a
// target whose hostname is "stall-starts": the stand-in for a start that
// hangs for reasons nsplug cannot prevent (a third-party plugin's own
// start-up waiting on something the target controls). Elsewhere it
// serves stallstart.ping.
package main

import (
	"context"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sdk"
)

type empty struct{}

func main() {
	var uts unix.Utsname
	if unix.Uname(&uts) == nil && unix.ByteSliceToString(uts.Nodename[:]) == "stall-starts" {
		time.Sleep(time.Hour) // killed at start_timeout
	}
	sdk.Serve(&sdk.Plugin{
		Name: "stallstart",
		Handlers: []sdk.Handler{
			sdk.Handle("stallstart.ping", "answers {}", func(context.Context, empty) (empty, error) { return empty{}, nil }),
		},
	})
}
