package core

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"
)

func newAdmission(perTarget int) *admission {
	return &admission{perTarget: perTarget, targets: make(map[string]*targetStarts)}
}

func errnoIs(err error, errno syscall.Errno) bool {
	var ce *Error
	return errors.As(err, &ce) && ce.Errno == errno
}

// A target gets perTarget slots; the next caller waits until one is
// given back, or gives up with its context. Other targets are unaffected.
func TestAdmissionBoundsStartsPerTarget(t *testing.T) {
	a := newAdmission(2)
	ctx := context.Background()
	s1, err1 := a.take(ctx, "A")
	s2, err2 := a.take(ctx, "A")
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := a.take(short, "A"); !errnoIs(err, syscall.ETIMEDOUT) {
		t.Fatalf("third slot of A: %v, want ETIMEDOUT", err)
	}
	if b, err := a.take(ctx, "B"); err != nil {
		t.Fatalf("B while A is full: %v", err)
	} else {
		a.give(b, &startResult{})
	}
	got := make(chan *targetStarts)
	go func() {
		s, err := a.take(ctx, "A")
		if err != nil {
			t.Error(err)
		}
		got <- s
	}()
	a.give(s1, &startResult{})
	a.give(<-got, &startResult{})
	a.give(s2, &startResult{})
	if n := len(a.targets); n != 0 {
		t.Errorf("%d targets remembered after every slot came back without failures", n)
	}
}

// backoffAfter consecutive failures make the next starts fail at once
// with EAGAIN; neutral outcomes do not count; a success resets.
func TestAdmissionBacksOffAfterFailures(t *testing.T) {
	a := newAdmission(4)
	ctx := context.Background()
	fail := &startResult{err: errorf(syscall.EIO, "start timed out")}
	for i := range backoffAfter - 1 {
		s, err := a.take(ctx, "A")
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		a.give(s, fail)
	}
	s, _ := a.take(ctx, "A")
	a.give(s, nil) // the caller gave up: not the target's failure
	s, err := a.take(ctx, "A")
	if err != nil {
		t.Fatalf("after %d failures and a neutral start: %v", backoffAfter-1, err)
	}
	a.give(s, fail)
	_, err = a.take(ctx, "A")
	if !errnoIs(err, syscall.EAGAIN) {
		t.Fatalf("after %d failures: %v, want EAGAIN", backoffAfter, err)
	}
	var ce *Error
	errors.As(err, &ce)
	if want := "its last 3 starts failed (the last: start timed out)"; !strings.Contains(ce.Message, want) {
		t.Errorf("backoff error %q does not say %q", ce.Message, want)
	}
	// The backoff ends: the next start is let through, and a success
	// forgets the failures.
	a.mu.Lock()
	a.targets["A"].until = time.Now().Add(-time.Millisecond)
	a.mu.Unlock()
	s, err = a.take(ctx, "A")
	if err != nil {
		t.Fatalf("after the backoff: %v", err)
	}
	a.give(s, &startResult{})
	if n := len(a.targets); n != 0 {
		t.Errorf("a success left %d targets remembered", n)
	}
}
