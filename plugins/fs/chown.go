package fs

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/nsplug/nsplug/sdk/handler"
)

// MaxChownEntries bounds one fs.chown batch.
const MaxChownEntries = 4096

// ChownRequest is a batch of ownership changes, applied in order.
type ChownRequest struct {
	Entries []ChownEntry `json:"entries"`
}

// ChownEntry changes the owner and group of one path. UID and GID are
// required; -1 leaves that id unchanged. They are ids as the handler sees
// them: the target's when its user namespace is joined.
type ChownEntry struct {
	Path     handler.Name `json:"path"`
	UID      *int64       `json:"uid"`
	GID      *int64       `json:"gid"`
	Nofollow bool         `json:"nofollow"`
}

// checkID accepts -1 and the ids a kernel can hold (0 to 2^32-2; 2^32-1
// is (uid_t)-1 itself).
func checkID(i int, what string, id *int64) error {
	switch {
	case id == nil:
		return handler.Errorf(unix.EINVAL, "entry %d: %s is required (-1 leaves it unchanged)", i, what)
	case *id < -1 || *id > 1<<32-2:
		return handler.Errorf(unix.EINVAL, "entry %d: %s %d is out of range (-1 to %d)", i, what, *id, int64(1<<32-2))
	}
	return nil
}

// chown validates every entry before changing anything, then applies them
// in order and stops at the first failure: entries before it stay
// applied (there is no rollback), the error names the failing entry's
// index and path and keeps the kernel's errno.
func chown(ctx context.Context, req ChownRequest) (Empty, error) {
	env := handler.EnvFrom(ctx)
	if len(req.Entries) > MaxChownEntries {
		return Empty{}, handler.Errorf(unix.E2BIG, "%d entries; at most %d per request", len(req.Entries), MaxChownEntries)
	}
	for i, e := range req.Entries {
		if _, err := env.CheckPath(string(e.Path)); err != nil {
			se := handler.AsError(err)
			return Empty{}, handler.Errorf(se.Errno, "entry %d: %s", i, se.Message)
		}
		if err := checkID(i, "uid", e.UID); err != nil {
			return Empty{}, err
		}
		if err := checkID(i, "gid", e.GID); err != nil {
			return Empty{}, err
		}
	}
	for i, e := range req.Entries {
		if err := chownOne(env, e); err != nil {
			se := handler.AsError(err)
			applied := ""
			if i > 0 {
				applied = fmt.Sprintf("; entries 0 to %d were applied", i-1)
			}
			return Empty{}, handler.Errorf(se.Errno, "entry %d: %s%s", i, se.Message, applied)
		}
	}
	return Empty{}, nil
}

func chownOne(env *handler.Env, e ChownEntry) error {
	n, err := resolve(env, string(e.Path), e.Nofollow)
	if err != nil {
		return err
	}
	defer n.close()
	if err := unix.Fchownat(n.dir, n.name, int(*e.UID), int(*e.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fail("chown", n, "", err)
	}
	return nil
}
