package core

import (
	"context"
	"testing"
	"time"
)

func TestDeadlineCtxEndsWithoutATimerUntilAsked(t *testing.T) {
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	at := time.Now().Add(50 * time.Millisecond)
	c, release := withDeadlineAt(parent, at)
	defer release()

	if d, ok := c.Deadline(); !ok || !d.Equal(at) {
		t.Fatalf("Deadline() = %v, %v; want %v, true", d, ok, at)
	}
	if err := c.Err(); err != nil {
		t.Fatalf("Err() before the deadline = %v", err)
	}
	ms, cancelled := pollTimeout(c)
	if ms < 1 || ms > 50 {
		t.Errorf("pollTimeout = %d ms; want 1..50", ms)
	}
	if cancelled != parent {
		t.Errorf("pollTimeout's context is not the parent")
	}
	if c.timed.Load() != nil {
		t.Fatal("a timer was made before anyone asked for Done")
	}
	time.Sleep(time.Until(at))
	if err := c.Err(); err != context.DeadlineExceeded {
		t.Fatalf("Err() after the deadline = %v; want DeadlineExceeded", err)
	}
	if ms, _ := pollTimeout(c); ms != 0 {
		t.Errorf("pollTimeout after the deadline = %d; want 0", ms)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done did not close after the deadline")
	}
}

func TestDeadlineCtxFollowsItsParent(t *testing.T) {
	parent, cancel := context.WithCancel(context.Background())
	c, release := withDeadlineAt(parent, time.Now().Add(time.Hour))
	defer release()
	done := c.Done() // a timer now
	if ms, cc := pollTimeout(c); ms != -1 || cc != context.Context(c) {
		t.Errorf("pollTimeout once Done was asked = %d, %v; want -1 and the context itself", ms, cc)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Done did not close when the parent was cancelled")
	}
	if err := c.Err(); err != context.Canceled {
		t.Fatalf("Err() = %v; want Canceled", err)
	}

	early, cancelEarly := context.WithTimeout(context.Background(), time.Minute)
	defer cancelEarly()
	c2, release2 := withDeadlineAt(early, time.Now().Add(time.Hour))
	defer release2()
	want, _ := early.Deadline()
	if d, _ := c2.Deadline(); !d.Equal(want) {
		t.Errorf("Deadline() = %v; want the parent's earlier %v", d, want)
	}
}
