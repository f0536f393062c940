// Package fs is the built-in plugin for file metadata as a target sees
// it: extended attributes (fs.getxattr, fs.setxattr, fs.listxattr,
// fs.removexattr) and ownership (fs.chown, a batch). It is what sysbox-fs
// does with its xattr and chownSyscall nsenter events, with the kernel's
// errno kept on every failure.
//
// It is written with the public sdk only (its lean part, sdk/handler, which
// a built-in imports so that its process links no go-plugin), as a
// third-party plugin would be.
//
// Whose privileges apply is a configuration choice, not a plugin choice:
// with the target's user namespace joined (the default) a request acts as
// the target's root, so trusted.* attributes are out of reach in a
// rootless target; a plugin configured with namespaces that leave out
// "user" (or a request narrowing Namespaces) acts with the core's
// credentials in the target's mount namespace, as sysbox-fs does.
//
// Paths are resolved by the plugin (see resolve): ordinary symbolic links
// are followed inside the target's root unless a request says nofollow,
// and /proc magic links are never followed (ELOOP), because the handler
// may be more privileged than the target's root.
package fs

import (
	"github.com/nsplug/nsplug/sdk/handler"
)

// Plugin returns the fs plugin.
func Plugin() *handler.Plugin {
	return &handler.Plugin{
		Name: "fs",
		Handlers: []handler.Handler{
			handler.Handle("fs.getxattr", "read one extended attribute of a path", getxattr),
			handler.Handle("fs.setxattr", "set one extended attribute of a path (flags: create, replace)", setxattr).Changes("mnt"),
			handler.Handle("fs.listxattr", "list the extended attribute names of a path", listxattr),
			handler.Handle("fs.removexattr", "remove one extended attribute of a path", removexattr).Changes("mnt"),
			handler.Handle("fs.chown", "change owner and group of a batch of paths (-1 leaves one unchanged)", chown).Changes("mnt"),
			// Opening for writing, creating or truncating changes files.
			handler.Handle("fs.open", "open a file (openat2 flags and resolve flags) and hand the descriptor back", open).MayChange("mnt"),
		},
	}
}

// Empty is the response of requests that return nothing.
type Empty struct{}
