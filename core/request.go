package core

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"syscall"

	"github.com/nsplug/nsplug/nsexec/boot"
	"github.com/nsplug/nsplug/wire"
)

// Target names a target process: its PID, and, to survive pid reuse, the
// start time of the process meant (see Request.StartTime, which it
// mirrors). Prepare takes it.
type Target struct {
	PID       int
	StartTime *uint64 // nil: whatever process has PID now
	// Authorize, when set, is Request.Authorize for Prepare: called
	// once, for the pinned process, before any instance starts.
	Authorize func(TargetInfo) error
	// Account, when set, is Request.Account for Prepare.
	Account *Account
}

// Request is one piece of work to do inside a target's namespaces.
type Request struct {
	PID int // the target process, as the core sees it
	// StartTime, when set, names the target for good: the request is for
	// the process of PID that started then (see StartTime), and fails
	// with ESRCH if PID now belongs to another process, as it does once
	// the process meant has died and the kernel reused its pid. Without
	// it, a PID taken earlier reaches whatever process has it now.
	StartTime *uint64
	Type      string          // message type, e.g. "procfs.read"
	Payload   json.RawMessage // a JSON object; empty means {}
	// Namespaces narrows the namespaces joined ("net", "mnt", ...). Nil
	// means the plugin's configured set, itself by default every
	// namespace of the target that differs from the core's own. A
	// namespace the target shares with the core is never joined.
	Namespaces []string
	// Credentials, when set, are those of the process the request acts
	// for; the handler runs with exactly them, so the kernel checks its
	// permissions as the caller's. Nil: root of the target's user
	// namespace (or the target's own ids where that maps no root).
	Credentials *Credentials
	// Authorize, when set, decides on the process the request is pinned
	// to, once its start time is checked and before any instance is
	// used or started: a daemon's check of its caller against the target
	// actually pinned, not against whatever PID named when it looked. Its
	// error ends the request: an *Error as it is, any other as EACCES.
	// It must not block.
	Authorize func(TargetInfo) error
	// Account, when set, is who the plugin processes this request
	// starts are charged to (see Account); nil charges nobody.
	Account *Account
}

// An Account is who plugin processes are charged to, for a program that
// starts them for callers it does not trust alike: nsplug serve charges
// each uid other than root to its own, so that one user cannot fill
// max_instances (and the node's process table) with handlers for their
// own targets, each credential, working directory or namespace set a new
// instance, and evict everyone else's warm ones.
//
// An account holds at most MaxInstances instances, running or starting,
// oneshot ones included. A start beyond that ends the account's least
// recently used idle instance to make room, or fails with EAGAIN when
// none is idle. An instance is charged to the account whose request
// started it, whoever it serves later.
type Account struct {
	Name         string // names it in errors: "uid 1000"
	MaxInstances int    // at least 1
	// Setting names where MaxInstances comes from, for the error
	// ("server.max_instances_per_user"); empty: none named.
	Setting string
}

func (a *Account) validate() error {
	if a != nil && (a.Name == "" || a.MaxInstances < 1) {
		return errorf(syscall.EINVAL, "account %q: want a name and MaxInstances of at least 1, got %d", a.Name, a.MaxInstances)
	}
	return nil
}

// name is the account's key in the pool's charges; "" for none.
func (a *Account) name() string {
	if a == nil {
		return ""
	}
	return a.Name
}

// Credentials are who a request acts for, as the target sees them.
type Credentials struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"` // supplementary groups
	// Capabilities, when set, are the capability sets to hold; otherwise
	// uid 0 holds all and any other uid none.
	Capabilities *CapabilitySets `json:"capabilities,omitempty"`
	// Root and Cwd are paths in the target's mount namespace; empty means
	// the target's root.
	Root string `json:"root,omitempty"`
	Cwd  string `json:"cwd,omitempty"`
}

// CapabilitySets are capability bit masks (bit n is capability n, as in
// /proc/PID/status).
type CapabilitySets struct {
	Effective   uint64 `json:"effective"`
	Permitted   uint64 `json:"permitted"`
	Inheritable uint64 `json:"inheritable"`
}

// clone is a deep copy, for a start that outlives the request (the
// caller may reuse its Credentials).
func (c *Credentials) clone() *Credentials {
	if c == nil {
		return nil
	}
	cc := *c
	cc.Groups = slices.Clone(c.Groups)
	if c.Capabilities != nil {
		caps := *c.Capabilities
		cc.Capabilities = &caps
	}
	return &cc
}

// key identifies the credentials in an instance key.
func (c *Credentials) key() string {
	if c == nil {
		return ""
	}
	k := fmt.Sprintf("|cred:%d:%d:%v:%q:%q", c.UID, c.GID, c.Groups, c.Root, c.Cwd)
	if c.Capabilities != nil {
		k += fmt.Sprintf(":%x:%x:%x", c.Capabilities.Effective, c.Capabilities.Permitted, c.Capabilities.Inheritable)
	}
	return k
}

func (c *Credentials) validate() error {
	if c == nil {
		return nil
	}
	if len(c.Groups) > boot.MaxGroups {
		return errorf(syscall.EINVAL, "credentials: %d supplementary groups (at most %d)", len(c.Groups), boot.MaxGroups)
	}
	for _, p := range []string{c.Root, c.Cwd} {
		if p == "" {
			continue
		}
		if err := wire.CheckPathSyntax(p); err != nil {
			return errorf(syscall.EINVAL, "credentials: root/cwd: %v", err)
		}
	}
	if c.Capabilities != nil {
		cs := c.Capabilities
		if cs.Effective&^cs.Permitted != 0 {
			return errorf(syscall.EINVAL, "credentials: effective capabilities %#x are not all permitted (%#x)", cs.Effective, cs.Permitted)
		}
	}
	return nil
}

// Response is a handler's answer: a JSON object and, for handlers that
// hand back open files (fs.open, say), their descriptors in this process,
// close-on-exec. The caller owns and must close Files.
type Response struct {
	Payload json.RawMessage
	Files   []*os.File
}
