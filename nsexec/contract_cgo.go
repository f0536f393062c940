//go:build cgo

package nsexec

// #include "nsexec.h"
import "C"

import "github.com/nsplug/nsplug/nsexec/boot"

// Package boot's copies of nsexec.h's definitions, checked at compile
// time: a map literal may not repeat a constant key, so each of these fails
// to compile when the comparison is false.
var (
	_ = map[bool]int{false: 0, C.NSEXEC_PIDFD == boot.PidFD: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_SOCKDIR_FD == boot.SockDirFD: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_STATUS_FD == boot.StatusFD: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_FRAMES_FD == boot.FramesFD: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_FRESH_PROC == boot.FreshProc: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_FRESH_SYS == boot.FreshSys: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_FRESH_CGROUP == boot.FreshCgroup: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_MAX_GROUPS == boot.MaxGroups: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_ENV == boot.EnvName: 1}
	_ = map[bool]int{false: 0, C.NSEXEC_ROOT_ENV == boot.EnvRoot: 1}
)
