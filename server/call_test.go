package server

import (
	"strings"
	"syscall"
	"testing"

	"github.com/nsplug/nsplug/wire"
)

// A user has at most max calls in flight, counted over everything they
// call; one ending makes room; other users and root are counted apart.
func TestUserCallsBoundEachUser(t *testing.T) {
	var u userCalls
	user, other := Caller{UID: 1000, GID: 1000}, Caller{UID: 2000, GID: 2000}
	var ends []func()
	for i := 0; i < 2; i++ {
		end, err := u.begin(user, 2)
		if err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
		ends = append(ends, end)
	}
	_, err := u.begin(user, 2)
	if e := wire.AsError(err); e == nil || e.Errno != syscall.EAGAIN || !strings.Contains(e.Message, "uid 1000 has 2 calls in flight, the most a user may (server.max_calls_per_user)") {
		t.Fatalf("third call: %v, want EAGAIN naming the bound", err)
	}
	if end, err := u.begin(other, 2); err != nil {
		t.Errorf("another user: %v", err)
	} else {
		end()
	}
	for i := 0; i < 10; i++ {
		if _, err := u.begin(Caller{}, 2); err != nil {
			t.Fatalf("root, call %d: %v", i+1, err)
		}
	}
	ends[0]()
	end, err := u.begin(user, 2)
	if err != nil {
		t.Fatalf("after one ended: %v", err)
	}
	end()
	ends[1]()
	if len(u.byUID) != 0 {
		t.Errorf("counts left: %v", u.byUID)
	}
}

// All users but root together have at most MaxUserCalls calls in flight:
// a user's subordinate uids are uids of their own.
func TestUserCallsBoundAllUsers(t *testing.T) {
	var u userCalls
	var ends []func()
	for uid := uint32(100000); uid < 100000+MaxUserCalls; uid++ {
		end, err := u.begin(Caller{UID: uid, GID: uid}, 1)
		if err != nil {
			t.Fatalf("uid %d: %v", uid, err)
		}
		ends = append(ends, end)
	}
	_, err := u.begin(Caller{UID: 5, GID: 5}, 1)
	if e := wire.AsError(err); e == nil || e.Errno != syscall.EAGAIN || !strings.Contains(e.Message, "server.MaxUserCalls") {
		t.Fatalf("one more uid's call: %v, want EAGAIN naming the bound of all", err)
	}
	if _, err := u.begin(Caller{}, 1); err != nil {
		t.Errorf("root past the bound of users: %v", err)
	}
	ends[0]()
	ends[0]() // ending twice uncounts once
	if _, err := u.begin(Caller{UID: 5, GID: 5}, 1); err != nil {
		t.Errorf("after one ended: %v", err)
	}
	if _, err := u.begin(Caller{UID: 6, GID: 6}, 1); err == nil {
		t.Error("a second call fit in the room one call made")
	}
}
