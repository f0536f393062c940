package core

import (
	"fmt"
	"os"
	"testing"
)

// The command name is the process's to choose: a name with spaces and
// parentheses must not shift the fields after it.
func TestParseStartTime(t *testing.T) {
	tail := " S 1 2 3 0 -1 4194560 10 0 0 0 1 2 0 0 20 0 1 0 %s 1000 50 18446744073709551615"
	for _, comm := range []string{"sleep", "a b", "x) 1 2 (y", ") ) )", "(", "", "12345678901234)"} {
		line := fmt.Sprintf("4242 (%s)"+tail+"\n", comm, "987654")
		got, err := parseStartTime([]byte(line))
		if err != nil || got != 987654 {
			t.Errorf("comm %q: %d, %v", comm, got, err)
		}
	}
	for _, bad := range []string{"", "4242 sleep S 1", "4242 (sleep) S 1 2 3", fmt.Sprintf("4242 (x)"+tail, "12x")} {
		if got, err := parseStartTime([]byte(bad)); err == nil {
			t.Errorf("%q: %d, no error", bad, got)
		}
	}
}

// The parser reads this very process's start time as the kernel writes it.
func TestStartTimeOfSelf(t *testing.T) {
	st, err := StartTime(os.Getpid())
	if err != nil || st == 0 {
		t.Fatalf("StartTime(self) = %d, %v", st, err)
	}
	if parent, err := StartTime(os.Getppid()); err != nil || parent > st {
		t.Errorf("parent started at %d (%v), after this process (%d)", parent, err, st)
	}
}
