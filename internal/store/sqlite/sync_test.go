package sqlite

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
)

// TestOnlyOutcomeCommitsSkipTheSync: a commit that records message outcomes and nothing
// else is not synced by itself (synchronous NORMAL); every other commit keeps the store's
// mode (FULL), and so syncs the outcomes committed before it.
func TestOnlyOutcomeCommitsSkipTheSync(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "s.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mode := func() int {
		t.Helper()
		var m int
		if err := s.wc.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	const normal, full = 1, 2
	now := time.Now()
	if err := s.Enqueue(ctx, QueuedMessage{MessageID: "m1", UserID: "u", Body: "x", EnqueuedAt: now}); err != nil {
		t.Fatal(err)
	}
	if m := mode(); m != full {
		t.Fatalf("after an enqueue: synchronous %d, want %d (FULL)", m, full)
	}
	msgs, err := s.PendingMessages(ctx, 0, 10)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("pending: %v %v", msgs, err)
	}
	n, err := s.Complete(ctx, msgs[:1], []events.Published{events.NewMessageDelivered("m1", "u", 1, now)})
	if err != nil || n != 1 {
		t.Fatalf("complete: %d %v", n, err)
	}
	if m := mode(); m != normal {
		t.Fatalf("after a commit of outcomes only: synchronous %d, want %d (NORMAL)", m, normal)
	}
	if _, err := s.Append(ctx, events.Opened("u", "c1", now, "127.0.0.1", "test")); err != nil {
		t.Fatal(err)
	}
	if m := mode(); m != full {
		t.Fatalf("after an append: synchronous %d, want %d (FULL)", m, full)
	}
	if pending, _ := s.PendingMessages(ctx, 0, 10); len(pending) != 0 {
		t.Fatalf("a completed message is pending: %v", pending)
	}
}
