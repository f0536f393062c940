// Package ids is the built-in plugin that translates user and group names
// to ids and back as a target sees them: ids.user and ids.group look
// entries up in the target's own /etc/passwd and /etc/group.
//
// It parses those files itself and never asks NSS (getpwnam and friends
// through cgo, or os/user, which may use them): NSS loads the libraries the
// target's /etc/nsswitch.conf names, and a process in a target's mount
// namespace would load the target's code with the handler's privileges
// (docker cp, CVE-2019-14271). Like glibc's "files" source, the first
// matching line wins.
//
// The files are the target's, read with handler.Env.ReadFile: the handler's
// root is the target's root, so symbolic links in the target resolve
// inside it (inside the allowed root the path lies in) and are followed;
// /proc magic links are not (RESOLVE_NO_MAGICLINKS), nor is anything but a
// regular file read (a FIFO would block, a device could have side effects).
// Files are bounded (MaxFileBytes, MaxLineBytes); blank, comment ("#"),
// NIS compat ("+"/"-") and malformed lines are skipped.
//
// It is written with the public sdk only, as a third-party plugin would be.
package ids

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sdk/handler"
)

// Bounds on the files read.
const (
	MaxFileBytes = 4 << 20
	MaxLineBytes = 1 << 20
)

// Default file locations, as the target sees them.
const (
	DefaultPasswdFile = "/etc/passwd"
	DefaultGroupFile  = "/etc/group"
)

// Options are the plugin's [plugin.options].
type Options struct {
	// PasswdFile and GroupFile are the files read, absolute paths in the
	// target (for targets keeping their databases elsewhere).
	PasswdFile string `json:"passwd_file"`
	GroupFile  string `json:"group_file"`
}

// Plugin returns the ids plugin.
func Plugin() *handler.Plugin {
	return &handler.Plugin{
		Name: "ids",
		Configure: handler.TypedOptions(Options{PasswdFile: DefaultPasswdFile, GroupFile: DefaultGroupFile}, func(o *Options) error {
			for _, f := range []struct{ key, path string }{{"passwd_file", o.PasswdFile}, {"group_file", o.GroupFile}} {
				if err := handler.CheckPathSyntax(f.path); err != nil {
					return handler.OptionErrorf(f.key, "%s", handler.AsError(err).Message)
				}
			}
			return nil
		}),
		Handlers: []handler.Handler{
			handler.Handle("ids.user", "look a user up by name or uid in the target's /etc/passwd", lookupUser),
			handler.Handle("ids.group", "look a group up by name or gid in the target's /etc/group", lookupGroup),
		},
	}
}

// Query names an entry by name or by id: exactly one of the two.
type Query struct {
	Name *handler.Name `json:"name"`
	ID   *int64        `json:"id"`
}

// User is an /etc/passwd entry. Its text fields are the file's bytes
// (handler.Name: {"base64": "..."} when they are not UTF-8).
type User struct {
	Name  handler.Name `json:"name"`
	ID    uint32       `json:"id"`
	GID   uint32       `json:"gid"`
	Gecos handler.Name `json:"gecos"`
	Home  handler.Name `json:"home"`
	Shell handler.Name `json:"shell"`
}

// Group is an /etc/group entry.
type Group struct {
	Name    handler.Name   `json:"name"`
	ID      uint32         `json:"id"`
	Members []handler.Name `json:"members"`
}

// options are the options Configure validated (never an error now that
// they are checked at load).
func options(ctx context.Context) (*handler.Env, Options, error) {
	return handler.EnvFrom(ctx), handler.OptionsFrom[Options](ctx), nil
}

// check validates a query: exactly one of name and id, the name a valid
// field (no ':' or newline could ever match), the id in uid_t's range.
func (q Query) check(kind string) error {
	switch {
	case q.Name != nil && q.ID != nil:
		return handler.Errorf(unix.EINVAL, "give the %s's name or its id, not both", kind)
	case q.Name == nil && q.ID == nil:
		return handler.Errorf(unix.EINVAL, "give the %s's name or its id", kind)
	case q.Name != nil && (*q.Name == "" || strings.ContainsAny(string(*q.Name), ":\n\x00")):
		return handler.Errorf(unix.EINVAL, "%s name %q is not a valid name", kind, *q.Name)
	case q.ID != nil && (*q.ID < 0 || *q.ID > 1<<32-2):
		return handler.Errorf(unix.EINVAL, "%s id %d is out of range (0 to %d)", kind, *q.ID, int64(1<<32-2))
	}
	return nil
}

func (q Query) String() string {
	if q.Name != nil {
		return fmt.Sprintf("name %q", *q.Name)
	}
	return fmt.Sprintf("id %d", *q.ID)
}

func (q Query) matches(name string, id uint32) bool {
	if q.Name != nil {
		return name == string(*q.Name)
	}
	return int64(id) == *q.ID
}

func lookupUser(ctx context.Context, q Query) (User, error) {
	if err := q.check("user"); err != nil {
		return User{}, err
	}
	env, opts, err := options(ctx)
	if err != nil {
		return User{}, err
	}
	var found *User
	err = scan(env, opts.PasswdFile, func(f []string) bool {
		// name:password:uid:gid:gecos:home:shell
		if len(f) != 7 {
			return false
		}
		uid, ok1 := parseID(f[2])
		gid, ok2 := parseID(f[3])
		if !ok1 || !ok2 || !q.matches(f[0], uid) {
			return false
		}
		found = &User{Name: handler.Name(f[0]), ID: uid, GID: gid, Gecos: handler.Name(f[4]), Home: handler.Name(f[5]), Shell: handler.Name(f[6])}
		return true
	})
	if err != nil {
		return User{}, err
	}
	if found == nil {
		return User{}, handler.Errorf(unix.ENOENT, "no user with %s in %s", q, opts.PasswdFile)
	}
	return *found, nil
}

func lookupGroup(ctx context.Context, q Query) (Group, error) {
	if err := q.check("group"); err != nil {
		return Group{}, err
	}
	env, opts, err := options(ctx)
	if err != nil {
		return Group{}, err
	}
	var found *Group
	err = scan(env, opts.GroupFile, func(f []string) bool {
		// name:password:gid:member,member,...
		if len(f) != 4 {
			return false
		}
		gid, ok := parseID(f[2])
		if !ok || !q.matches(f[0], gid) {
			return false
		}
		g := &Group{Name: handler.Name(f[0]), ID: gid, Members: []handler.Name{}}
		for _, m := range strings.Split(f[3], ",") {
			if m = strings.TrimSpace(m); m != "" {
				g.Members = append(g.Members, handler.Name(m))
			}
		}
		found = g
		return true
	})
	if err != nil {
		return Group{}, err
	}
	if found == nil {
		return Group{}, handler.Errorf(unix.ENOENT, "no group with %s in %s", q, opts.GroupFile)
	}
	return *found, nil
}

// parseID parses a decimal uid or gid; (uid_t)-1 is not an id.
func parseID(s string) (uint32, bool) {
	if s == "" || s[0] == '+' || s[0] == '-' {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 1<<32-1 {
		return 0, false
	}
	return uint32(n), true
}

// scan calls match with the ':'-separated fields of each usable line of
// the file at path until it returns true. Blank lines, comments, NIS
// compat lines and lines without a name are skipped here; match rejects
// lines of the wrong shape.
func scan(env *handler.Env, path string, match func(fields []string) bool) error {
	data, err := readDB(env, path)
	if err != nil {
		return err
	}
	lineNo := 0
	for len(data) > 0 {
		lineNo++
		line := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			data = nil
		}
		if len(line) > MaxLineBytes {
			return handler.Errorf(unix.EFBIG, "%s: line %d is longer than %d bytes", path, lineNo, MaxLineBytes)
		}
		s := string(line)
		if strings.TrimSpace(s) == "" || s[0] == '#' || s[0] == '+' || s[0] == '-' {
			continue
		}
		f := strings.Split(s, ":")
		if f[0] == "" {
			continue
		}
		if match(f) {
			return nil
		}
	}
	return nil
}

// readDB reads a whole database file, which must be a regular file of at
// most MaxFileBytes: handler.Env.ReadFile looks at it (O_PATH) before opening
// it, so a FIFO or device planted there is never opened.
func readDB(env *handler.Env, path string) ([]byte, error) {
	return env.ReadFile(path, MaxFileBytes)
}
