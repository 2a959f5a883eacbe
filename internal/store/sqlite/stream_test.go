package sqlite_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

func openStreams(t *testing.T, path string, clk *clock) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), path, sqlite.Options{Now: clk.Now, RecoveryWindow: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestStreamPositions: every message accepted for a user takes the next offset of that
// user's stream (a duplicate takes none); positions, bodies and the store's epoch survive
// a reopen; a renewed epoch changes every stream's; the prune forgets positions past the
// window and drops a stream that kept nothing, whose next message starts another
// generation at offset 1.
func TestStreamPositions(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	s := openStreams(t, path, clk)
	msg := func(id, user string) sqlite.QueuedMessage {
		return sqlite.QueuedMessage{MessageID: id, UserID: user, Body: "body of " + id, EnqueuedAt: clk.Now()}
	}
	if err := s.Enqueue(ctx, msg("a", "u"), msg("b", "u"), msg("b", "v"), msg("a", "u")); err != nil {
		t.Fatal(err)
	}
	if err := s.Enqueue(ctx, msg("c", "u")); err != nil {
		t.Fatal(err)
	}
	q, err := s.PendingMessages(ctx, 0, 10)
	if err != nil || len(q) != 4 {
		t.Fatalf("queue %+v %v", q, err)
	}
	want := map[string]int64{"a/u": 1, "b/u": 2, "b/v": 1, "c/u": 3}
	for _, m := range q {
		if m.Offset != want[m.MessageID+"/"+m.UserID] || m.Gen == 0 {
			t.Fatalf("%s for %s at offset %d (gen %d)", m.MessageID, m.UserID, m.Offset, m.Gen)
		}
	}
	top, ok := s.Top("u")
	if !ok || top.Offset != 3 {
		t.Fatalf("top of u %+v %v", top, ok)
	}
	// A delivered message kept for recovery keeps its body and position; one not kept
	// (b for v) loses both, and a replay through it is impossible.
	var bv sqlite.QueuedMessage
	for _, m := range q {
		if m.UserID == "v" {
			bv = m
		}
	}
	if _, err := s.CompleteKeeping(ctx, []sqlite.QueuedMessage{q[0], bv}, append(q0Outcome(q[0]), q0Outcome(bv)...), []bool{true, false}); err != nil {
		t.Fatal(err)
	}
	vTop, _ := s.Top("v")
	if n, err := s.KeptCount(ctx, "v", vTop.Gen, 0, 1); err != nil || n != 0 {
		t.Fatalf("a message not kept counts %d (%v)", n, err)
	}
	got, err := s.StreamRange(ctx, "u", top.Gen, 0, 3, 10)
	if err != nil || len(got) != 3 || got[0].Body != "body of a" || got[0].Pending || !got[1].Pending || got[2].Offset != 3 {
		t.Fatalf("stream of u %+v %v", got, err)
	}
	if got, _ := s.StreamRange(ctx, "u", top.Gen, 1, 2, 10); len(got) != 1 || got[0].MessageID != "b" {
		t.Fatalf("range (1, 2] %+v", got)
	}
	if n, err := s.KeptCount(ctx, "u", top.Gen, 0, 3); err != nil || n != 3 {
		t.Fatalf("kept in (0, 3]: %d %v", n, err)
	}
	epoch := s.Epoch()
	before := s.StreamEpoch(top.Gen)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStreams(t, path, clk)
	defer func() { s.Close() }()
	if s.Epoch() != epoch || s.StreamEpoch(top.Gen) != before {
		t.Fatalf("epoch %s after a reopen, was %s", s.Epoch(), epoch)
	}
	if again, ok := s.Top("u"); !ok || again != top {
		t.Fatalf("top of u after a reopen %+v, was %+v", again, top)
	}
	if again, ok := s.Top("v"); !ok || again != vTop {
		t.Fatalf("top of v after a reopen %+v, was %+v: a position not kept still counts", again, vTop)
	}
	if err := s.RenewEpoch(ctx); err != nil || s.Epoch() == epoch || s.StreamEpoch(top.Gen) == before {
		t.Fatalf("renewed epoch %s (was %s): %v", s.Epoch(), epoch, err)
	}

	clk.Add(2 * time.Minute)
	if n, err := s.PruneStreams(ctx, clk.Now().Add(-time.Minute)); err != nil || n != 4 {
		t.Fatalf("pruned %d positions, want 4: %v", n, err)
	}
	if got, _ := s.StreamRange(ctx, "u", top.Gen, 0, 3, 10); len(got) != 0 {
		t.Fatalf("positions kept past the window: %+v", got)
	}
	if _, ok := s.Top("u"); ok {
		t.Fatal("a stream that kept nothing, of a user with no connection, is dropped")
	}
	// The pending message keeps its body to be delivered.
	if q, _ := s.PendingMessages(ctx, 0, 10); len(q) != 2 || q[0].Body != "body of b" || q[0].Offset != 0 {
		t.Fatalf("pending after the prune %+v", q)
	}
	if err := s.Enqueue(ctx, msg("d", "u")); err != nil {
		t.Fatal(err)
	}
	next, ok := s.Top("u")
	if !ok || next.Offset != 1 || next.Gen == top.Gen {
		t.Fatalf("the next stream %+v, after %+v", next, top)
	}
	// A stream opened for a recovering connection is the one its next message takes.
	opened := s.OpenStream("w")
	if err := s.Enqueue(ctx, msg("e", "w")); err != nil {
		t.Fatal(err)
	}
	if w, _ := s.Top("w"); w.Gen != opened.Gen || w.Offset != 1 {
		t.Fatalf("stream of w %+v, opened %+v", w, opened)
	}
}

func q0Outcome(m sqlite.QueuedMessage) []events.Published {
	return []events.Published{events.NewMessageDelivered(m.MessageID, m.UserID, 1, t0)}
}

// TestPruneStreamsInChunks: a prune forgets every position past the window however many,
// a chunk of rows a transaction, and keeps those inside it.
func TestPruneStreamsInChunks(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	s := openStreams(t, filepath.Join(t.TempDir(), "db"), clk)
	defer s.Close()
	var msgs []sqlite.QueuedMessage
	for i := range 1200 {
		msgs = append(msgs, sqlite.QueuedMessage{MessageID: fmt.Sprint("m", i), UserID: "u", Body: "b", EnqueuedAt: clk.Now()})
	}
	if err := s.Enqueue(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Minute)
	if err := s.Enqueue(ctx, sqlite.QueuedMessage{MessageID: "recent", UserID: "u", Body: "b", EnqueuedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PruneStreams(ctx, clk.Now().Add(-time.Second)); err != nil || n != 1200 {
		t.Fatalf("pruned %d, want 1200: %v", n, err)
	}
	top, ok := s.Top("u")
	if !ok || top.Offset != 1201 {
		t.Fatalf("top %+v %v: a stream with a kept message stays", top, ok)
	}
	if got, err := s.StreamRange(ctx, "u", top.Gen, 0, top.Offset, 2000); err != nil || len(got) != 1 || got[0].MessageID != "recent" {
		t.Fatalf("kept after the prune: %d %v", len(got), err)
	}
}
