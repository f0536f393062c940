package server

import (
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/nsplug/nsplug/api/fast"
	apisvc "github.com/nsplug/nsplug/api/v1/service"
)

// Dial returns a client of the daemon at addr, "unix:///PATH" (the form
// of nsplug's --addr and NSPLUG_ADDR). Nothing connects until the first
// call; a daemon that is not there fails it with Unavailable
// (ECONNREFUSED or ENOENT through ErrorFromStatus). Close the connection
// when done. Call has a faster way in, fast.Dial (api/fast), which also
// hands back files.
func Dial(addr string) (apisvc.NsplugClient, *grpc.ClientConn, error) {
	if _, err := fast.SocketPath(addr); err != nil {
		return nil, nil, err
	}
	// The socket is local: no transport security to have, and who calls
	// is the kernel's to tell the daemon.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)))
	if err != nil {
		return nil, nil, fmt.Errorf("daemon address %q: %w", addr, err)
	}
	return apisvc.NewNsplugClient(conn), conn, nil
}
