package sqlite

import (
	"context"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
)

// TestOnlyOutcomeCommitsSkipTheSync: a commit that records message outcomes and nothing
// else is not synced by itself (synchronous NORMAL); every other commit keeps the store's
// mode (FULL), and so syncs the outcomes committed before it. OnSynced reports each synced
// commit, with its COMMIT's time, and no other.
func TestOnlyOutcomeCommitsSkipTheSync(t *testing.T) {
	ctx := context.Background()
	var syncedMu sync.Mutex
	var synced []time.Duration
	s, err := Open(ctx, filepath.Join(t.TempDir(), "s.db"), Options{OnSynced: func(d time.Duration) {
		syncedMu.Lock()
		synced = append(synced, d)
		syncedMu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	syncs := func() int { syncedMu.Lock(); defer syncedMu.Unlock(); return len(synced) }
	atOpen := syncs()
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
	if n := syncs(); n != atOpen+1 {
		t.Fatalf("after an enqueue: %d synced commits reported, want %d", n, atOpen+1)
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
	if n := syncs(); n != atOpen+1 {
		t.Fatalf("after a commit of outcomes only: %d synced commits reported, want %d (none more)", n, atOpen+1)
	}
	if _, err := s.Append(ctx, events.Opened("u", "c1", now, "127.0.0.1", "test")); err != nil {
		t.Fatal(err)
	}
	if m := mode(); m != full {
		t.Fatalf("after an append: synchronous %d, want %d (FULL)", m, full)
	}
	if n := syncs(); n != atOpen+2 {
		t.Fatalf("after an append: %d synced commits reported, want %d", n, atOpen+2)
	}
	syncedMu.Lock()
	for _, d := range synced {
		if d <= 0 {
			t.Errorf("a synced commit reported as taking %s", d)
		}
	}
	syncedMu.Unlock()
	if pending, _ := s.PendingMessages(ctx, 0, 10); len(pending) != 0 {
		t.Fatalf("a completed message is pending: %v", pending)
	}
}

// TestOutcomesCommitAfterTheWritesGroupedWithThem: a group commit that holds message
// outcomes beside a message to enqueue commits the message first, synced, and answers it,
// then the outcomes in a commit of their own, not synced by itself: the enqueue's caller
// does not wait for the outcomes' rows.
func TestOutcomesCommitAfterTheWritesGroupedWithThem(t *testing.T) {
	ctx := context.Background()
	type commit struct {
		requests int
		mode     string
		// answered says whether the enqueue had its answer when the commit ended.
		answered bool
	}
	var (
		mu      sync.Mutex
		commits []commit
		st      *Store
		watched chan error
	)
	s, err := Open(ctx, filepath.Join(t.TempDir(), "s.db"), Options{OnCommit: func(n int) {
		mu.Lock()
		defer mu.Unlock()
		commits = append(commits, commit{n, st.syncMode, len(watched) > 0})
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st = s
	now := time.Now()
	if err := s.Enqueue(ctx, QueuedMessage{MessageID: "m1", UserID: "u", Body: "x", EnqueuedAt: now}); err != nil {
		t.Fatal(err)
	}
	pending, err := s.PendingMessages(ctx, 0, 10)
	if err != nil || len(pending) != 1 {
		t.Fatalf("pending: %v %v", pending, err)
	}
	outcome := &writeReq{completes: pending, outcomes: []events.Published{events.NewMessageDelivered("m1", "u", 1, now)}, done: make(chan error, 1)}
	enqueue := &writeReq{messages: []QueuedMessage{{MessageID: "m2", UserID: "u", Body: "y", EnqueuedAt: now}}, done: make(chan error, 1)}
	mu.Lock()
	commits, watched = nil, enqueue.done
	mu.Unlock()
	if err := s.writeAlone(ctx, func(context.Context) error {
		s.run([]*writeReq{outcome, enqueue}) // one group, the outcomes first
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := <-enqueue.done; err != nil {
		t.Fatal(err)
	}
	if err := <-outcome.done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []commit{{1, "full", false}, {1, "normal", true}}; !slices.Equal(commits, want) {
		t.Fatalf("commits %v, want %v: the enqueue alone and synced, answered, then the outcome alone", commits, want)
	}
	if left, _ := s.PendingMessages(ctx, 0, 10); len(left) != 1 || left[0].MessageID != "m2" {
		t.Fatalf("pending after the group: %v, want m2 only", left)
	}
}

// TestNoSyncedCommitsInModeNormal: a store in the mode "normal" syncs no commit by itself,
// and OnSynced reports none.
func TestNoSyncedCommitsInModeNormal(t *testing.T) {
	ctx := context.Background()
	var synced atomic.Int64
	s, err := Open(ctx, filepath.Join(t.TempDir(), "s.db"), Options{Sync: "normal", OnSynced: func(time.Duration) { synced.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now()
	if err := s.Enqueue(ctx, QueuedMessage{MessageID: "m1", UserID: "u", Body: "x", EnqueuedAt: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, events.Opened("u", "c1", now, "127.0.0.1", "test")); err != nil {
		t.Fatal(err)
	}
	if n := synced.Load(); n != 0 {
		t.Fatalf("%d synced commits reported in the mode normal, want none", n)
	}
}
