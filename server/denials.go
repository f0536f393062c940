package server

import (
	"cmp"
	"encoding/json"
	"slices"
	"sync"
	"time"
)

// Denials are audited within a budget. A uid that no rule names can still
// connect (the socket's mode decides that, and 0o666 is documented as
// safe), and each of its calls is denied in tens of microseconds: measured
// before the budget, one such user wrote 19 MB of audit lines a second,
// enough to fill a node's disk in minutes, after which every call that
// changes state fails closed. So each uid other than root gets
// Server.AuditDenialsPerMinutePerUser lines of its own a minute, and all of
// them together Server.AuditDenialsPerMinute (a user with a range of
// subordinate uids has many uids); the denials past that are counted, and
// a minute after the first of them, or when the log closes, one line of op
// "denials_not_logged" says how many there were and whose. The denials
// metric counts every denial.

// denialBudget is an AuditLog's: it outlives reloads with its file.
type denialBudget struct {
	mu      sync.Mutex
	users   map[uint32]*bucket
	all     bucket
	skipped map[uint32]int // denials without a line since since
	others  int            // of those, the ones of uids past maxTrackedUsers
	since   time.Time
	timer   *time.Timer // writes the summary; nil when nothing is skipped
}

// bucket holds up to perMinute tokens, refilled at perMinute a minute.
type bucket struct {
	tokens float64
	at     time.Time // of the last refill; zero: full
}

func (b *bucket) refill(now time.Time, perMinute int) {
	full := float64(perMinute)
	if b.at.IsZero() {
		b.tokens = full
	} else {
		b.tokens = min(full, b.tokens+now.Sub(b.at).Minutes()*full)
	}
	b.at = now
}

// maxTrackedUsers bounds the buckets kept; past it, the full ones go.
const maxTrackedUsers = 4096

// take reports whether uid's denial gets a line of its own; a 0 bound is
// no bound. When it does not, the denial is counted, and summarize is
// scheduled to run a minute after the first one counted.
func (d *denialBudget) take(uid uint32, now time.Time, perUser, total int, summarize func()) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.users == nil {
		d.users = make(map[uint32]*bucket)
	}
	u := d.users[uid]
	if u == nil {
		if len(d.users) >= maxTrackedUsers {
			d.pruneLocked(now, perUser)
		}
		u = &bucket{}
		if len(d.users) < maxTrackedUsers {
			d.users[uid] = u
		} // else a bucket of its own for this denial: the bound of all holds
	}
	if perUser > 0 {
		u.refill(now, perUser)
	}
	if total > 0 {
		d.all.refill(now, total)
	}
	if (perUser <= 0 || u.tokens >= 1) && (total <= 0 || d.all.tokens >= 1) {
		if perUser > 0 {
			u.tokens--
		}
		if total > 0 {
			d.all.tokens--
		}
		return true
	}
	if d.skipped == nil {
		d.skipped = make(map[uint32]int)
	}
	if len(d.skipped) == 0 && d.others == 0 {
		d.since = now
		d.timer = time.AfterFunc(time.Minute, summarize)
	}
	if _, ok := d.skipped[uid]; ok || len(d.skipped) < maxTrackedUsers {
		d.skipped[uid]++
	} else {
		d.others++
	}
	return false
}

// pruneLocked forgets the uids whose budgets are full again.
func (d *denialBudget) pruneLocked(now time.Time, perUser int) {
	for uid, b := range d.users {
		if b.refill(now, perUser); b.tokens >= float64(perUser) {
			delete(d.users, uid)
		}
	}
}

// DenialsSummary is the JSON object of an audit line of op
// "denials_not_logged": the denials of callers past their budget since
// Since, which have no line of their own.
type DenialsSummary struct {
	Time  string `json:"time"` // RFC 3339, UTC
	Op    string `json:"op"`   // "denials_not_logged"
	Since string `json:"since"`
	// Count is the denials in all; Callers, the uids they came from.
	Count   int `json:"count"`
	Callers int `json:"callers"`
	// OtherCallers: some of Count came from uids past the first
	// maxTrackedUsers (4096), which Callers does not count.
	OtherCallers bool `json:"other_callers,omitempty"`
	// ByUID has the uids with the most of them (up to MaxSummaryUIDs),
	// most first.
	ByUID []UIDCount `json:"by_uid"`
}

// UIDCount is one caller's count in a DenialsSummary.
type UIDCount struct {
	UID   uint32 `json:"uid"`
	Count int    `json:"count"`
}

// MaxSummaryUIDs bounds DenialsSummary.ByUID.
const MaxSummaryUIDs = 16

// summary takes the skipped counts and returns their line, or nil when
// there are none.
func (d *denialBudget) summary(now time.Time) []byte {
	d.mu.Lock()
	skipped, others, since := d.skipped, d.others, d.since
	d.skipped, d.others = nil, 0
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	d.mu.Unlock()
	if len(skipped) == 0 && others == 0 {
		return nil
	}
	s := DenialsSummary{Time: now.UTC().Format(time.RFC3339Nano), Op: "denials_not_logged", Since: since.UTC().Format(time.RFC3339Nano),
		Callers: len(skipped), Count: others, OtherCallers: others > 0}
	for uid, n := range skipped {
		s.Count += n
		s.ByUID = append(s.ByUID, UIDCount{UID: uid, Count: n})
	}
	slices.SortFunc(s.ByUID, func(a, b UIDCount) int {
		return cmp.Or(cmp.Compare(b.Count, a.Count), cmp.Compare(a.UID, b.UID))
	})
	s.ByUID = s.ByUID[:min(len(s.ByUID), MaxSummaryUIDs)]
	line, _ := json.Marshal(s)
	return append(line, '\n')
}
