package sqlite_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// deliver enqueues a message of id for user u and records its outcome, and returns its
// queue position.
func deliver(t *testing.T, s *sqlite.Store, clk *clock, id string) int64 {
	t.Helper()
	ctx := context.Background()
	var queued []sqlite.QueuedMessage
	if err := s.Enqueue(ctx, sqlite.QueuedMessage{MessageID: id, UserID: "u", Body: "b", EnqueuedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	q, err := s.PendingMessages(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range q {
		if m.MessageID == id {
			queued = append(queued, m)
		}
	}
	if len(queued) != 1 {
		t.Fatalf("%s queued %d times", id, len(queued))
	}
	if n, err := s.Complete(ctx, queued, []events.Published{events.NewMessageDelivered(id, "u", 1, clk.Now())}); err != nil || n != 1 {
		t.Fatalf("complete %s: %d %v", id, n, err)
	}
	return queued[0].Seq
}

// TestPositionsAreNeverHandedOutTwice: with every outbox row pruned and the queue pruned to
// its newest row, the next message and the next event take positions above every one
// handed out before, before and after a restart, and /events' range says none is kept.
func TestPositionsAreNeverHandedOutTwice(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	s := openStreams(t, path, clk)
	var queue int64
	for i := range 5 {
		queue = deliver(t, s, clk, fmt.Sprint("m", i))
	}
	outbox, err := s.LastPublishedSeq(ctx)
	if err != nil || outbox != 5 {
		t.Fatalf("outbox at %d: %v", outbox, err)
	}
	pruneAll := func(s *sqlite.Store) {
		t.Helper()
		clk.Add(time.Hour)
		if _, err := s.PrunePublished(ctx, clk.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.PruneMessages(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
		if _, err := s.PruneStreams(ctx, clk.Now()); err != nil {
			t.Fatal(err)
		}
		oldest, newest, err := s.PublishedRange(ctx)
		if err != nil || newest != outbox || oldest != outbox+1 {
			t.Fatalf("outbox range (%d, %d) after pruning everything, want (%d, %d): %v", oldest, newest, outbox+1, outbox, err)
		}
	}
	pruneAll(s)
	if got := deliver(t, s, clk, "after-prune"); got <= queue {
		t.Fatalf("queue position %d handed out again (newest was %d)", got, queue)
	} else {
		queue = got
	}
	if got, err := s.LastPublishedSeq(ctx); err != nil || got != outbox+1 {
		t.Fatalf("outbox position %d after the prune, want %d: %v", got, outbox+1, err)
	}
	outbox++
	pruneAll(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStreams(t, path, clk)
	defer s.Close()
	if _, newest, err := s.PublishedRange(ctx); err != nil || newest != outbox {
		t.Fatalf("newest outbox position %d after a restart, want %d: %v", newest, outbox, err)
	}
	if got := deliver(t, s, clk, "after-restart"); got <= queue {
		t.Fatalf("queue position %d handed out again after a restart (newest was %d)", got, queue)
	}
	recs, err := s.PublishedSince(ctx, 0, 10)
	if err != nil || len(recs) != 1 || recs[0].Seq != outbox+1 {
		t.Fatalf("outbox after a restart: %+v %v, want one row at %d", recs, err, outbox+1)
	}
	for _, table := range []string{"messages", "published"} {
		if q := tableSQL(t, path, table); strings.Contains(strings.ToUpper(q), "AUTOINCREMENT") {
			t.Fatalf("%s is AUTOINCREMENT: %s", table, q)
		}
	}
}

func tableSQL(t *testing.T, path, name string) string {
	t.Helper()
	var q string
	scanOn(t, path, `SELECT sql FROM sqlite_master WHERE name = ?`, []any{name}, &q)
	return q
}

// TestAStoreOfTheAutoincrementLayoutIsRebuilt: a store whose queue and outbox were declared
// AUTOINCREMENT (an earlier layout), its outbox pruned empty and its queue's sequence past
// its newest row, opens with both tables rebuilt without it, their rows, constraints and
// indexes kept, and hands out positions above every one its sequences had handed out.
func TestAStoreOfTheAutoincrementLayoutIsRebuilt(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	s := openStreams(t, path, clk)
	for i := range 3 {
		deliver(t, s, clk, fmt.Sprint("m", i))
	}
	if err := s.Enqueue(ctx, sqlite.QueuedMessage{MessageID: "pending", UserID: "u", Body: "kept", EnqueuedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	execOn(t, path,
		`CREATE TABLE old_published (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, detail_type TEXT NOT NULL, envelope TEXT NOT NULL, crc INTEGER)`,
		`INSERT INTO old_published SELECT seq, event_id, detail_type, envelope, crc FROM published`,
		`DROP TABLE published`, `ALTER TABLE old_published RENAME TO published`,
		`CREATE UNIQUE INDEX published_event ON published (event_id)`,
		`CREATE TABLE old_messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, message_id TEXT NOT NULL, user_id TEXT NOT NULL, body TEXT NOT NULL,
			enqueued_at INTEGER NOT NULL, done_at INTEGER, stream_offset INTEGER, stream_gen INTEGER, crc INTEGER, UNIQUE (message_id, user_id))`,
		`INSERT INTO old_messages SELECT seq, message_id, user_id, body, enqueued_at, done_at, stream_offset, stream_gen, crc FROM messages`,
		`DROP TABLE messages`, `ALTER TABLE old_messages RENAME TO messages`,
		`DELETE FROM published`,
		`UPDATE sqlite_sequence SET seq = 40 WHERE name = 'published'`,
		`UPDATE sqlite_sequence SET seq = 50 WHERE name = 'messages'`)

	s = openStreams(t, path, clk)
	defer s.Close()
	for _, table := range []string{"messages", "published"} {
		if q := tableSQL(t, path, table); strings.Contains(strings.ToUpper(q), "AUTOINCREMENT") {
			t.Fatalf("%s is still AUTOINCREMENT: %s", table, q)
		}
	}
	if q := tableSQL(t, path, "published_event"); !strings.Contains(q, "UNIQUE") {
		t.Fatalf("the outbox's index: %s", q)
	}
	if oldest, newest, err := s.PublishedRange(ctx); err != nil || oldest != 41 || newest != 40 {
		t.Fatalf("outbox range (%d, %d), want (41, 40): %v", oldest, newest, err)
	}
	q, err := s.PendingMessages(ctx, 0, 10)
	if err != nil || len(q) != 1 || q[0].MessageID != "pending" || q[0].Body != "kept" {
		t.Fatalf("pending after the rebuild: %+v %v", q, err)
	}
	top, _ := s.Top("u")
	if got, err := s.StreamRange(ctx, "u", top.Gen, 0, top.Offset, 10); err != nil || len(got) != 1 || got[0].MessageID != "pending" {
		t.Fatalf("stream after the rebuild: %+v %v", got, err)
	}
	// A message id already queued is not queued again.
	if err := s.Enqueue(ctx, sqlite.QueuedMessage{MessageID: "m1", UserID: "u", Body: "again", EnqueuedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if q, _ := s.PendingMessages(ctx, 0, 10); len(q) != 1 {
		t.Fatalf("a delivered message id was queued again: %+v", q)
	}
	if got := deliver(t, s, clk, "next"); got != 51 {
		t.Fatalf("next queue position %d, want 51", got)
	}
	recs, err := s.PublishedSince(ctx, 0, 10)
	if err != nil || len(recs) != 1 || recs[0].Seq != 41 {
		t.Fatalf("outbox after the rebuild: %+v %v, want one row at 41", recs, err)
	}
	if err := s.Health(); err != nil {
		t.Fatal(err)
	}
}
