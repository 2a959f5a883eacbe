package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// TestFlippedQueueRowIsNeverRead: a queue row changed on disk (one byte of its body, or its
// stream offset) is neither handed out pending nor replayed: the reads fail with
// ErrDamaged and Health reports it. Rows changed by the store itself (an outcome that
// forgets the body, one that keeps it, a prune of stream positions) keep matching their
// checksums.
func TestFlippedQueueRowIsNeverRead(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	s := openStreams(t, path, clk)
	defer s.Close()
	msg := func(id string) sqlite.QueuedMessage {
		return sqlite.QueuedMessage{MessageID: id, UserID: "u", Body: "body of " + id, EnqueuedAt: clk.Now()}
	}
	if err := s.Enqueue(ctx, msg("a"), msg("b"), msg("c"), msg("d")); err != nil {
		t.Fatal(err)
	}
	q, err := s.PendingMessages(ctx, 0, 10)
	if err != nil || len(q) != 4 {
		t.Fatalf("queue %+v %v", q, err)
	}
	// a done and forgotten, b done and kept: both rewritten by the store.
	outcomes := []events.Published{events.NewMessageDelivered("a", "u", 1, t0), events.NewMessageDelivered("b", "u", 1, t0)}
	if _, err := s.CompleteKeeping(ctx, q[:2], outcomes, []bool{false, true}); err != nil {
		t.Fatal(err)
	}
	top, _ := s.Top("u")
	if got, err := s.StreamRange(ctx, "u", top.Gen, 1, top.Offset, 10); err != nil || len(got) != 3 || got[0].Pending {
		t.Fatalf("stream after the outcomes: %+v %v", got, err)
	}
	if err := s.Health(); err != nil {
		t.Fatalf("a row the store changed reads as damaged: %v", err)
	}

	execOn(t, path, `UPDATE messages SET body = replace(body, 'of c', 'of C') WHERE message_id = 'c'`)
	if got, err := s.PendingMessages(ctx, 0, 10); !errors.Is(err, sqlite.ErrDamaged) {
		t.Fatalf("pending with a flipped row: %+v %v", got, err)
	}
	if got, err := s.StreamRange(ctx, "u", top.Gen, 0, top.Offset, 10); !errors.Is(err, sqlite.ErrDamaged) {
		t.Fatalf("replay through a flipped row: %+v %v", got, err)
	}
	if err := s.Health(); !errors.Is(err, sqlite.ErrDamaged) {
		t.Fatalf("health after a flipped queue row: %v", err)
	}
	// A changed position is damage too.
	execOn(t, path, `UPDATE messages SET body = replace(body, 'of C', 'of c') WHERE message_id = 'c'`,
		`UPDATE messages SET stream_offset = 9 WHERE message_id = 'd'`)
	if got, err := s.StreamRange(ctx, "u", top.Gen, 0, 10, 10); !errors.Is(err, sqlite.ErrDamaged) {
		t.Fatalf("replay of a row with a changed offset: %+v %v", got, err)
	}
	execOn(t, path, `UPDATE messages SET stream_offset = 4 WHERE message_id = 'd'`)
	if got, err := s.StreamRange(ctx, "u", top.Gen, 0, top.Offset, 10); err != nil || len(got) != 3 {
		t.Fatalf("stream once restored: %+v %v", got, err)
	}

	// A prune of the positions rewrites the pending rows' checksums.
	clk.Add(time.Hour)
	if _, err := s.PruneStreams(ctx, clk.Now()); err != nil {
		t.Fatal(err)
	}
	if got, err := s.PendingMessages(ctx, 0, 10); err != nil || len(got) != 2 || got[0].Offset != 0 {
		t.Fatalf("pending after the prune: %+v %v", got, err)
	}
}

// TestAQueueOfTheLayoutWithoutChecksumsIsDelivered: a store whose queue rows have no
// checksum column and whose queue has the indexes of pending and done rows (an earlier
// version) opens with its pending messages readable, unchecked, and completes them;
// messages queued after carry a checksum, and the indexes are gone.
func TestAQueueOfTheLayoutWithoutChecksumsIsDelivered(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	s := openStreams(t, path, clk)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	execOn(t, path, `ALTER TABLE messages DROP COLUMN crc`,
		`CREATE INDEX messages_pending ON messages (seq) WHERE done_at IS NULL`,
		`CREATE INDEX messages_done ON messages (done_at) WHERE done_at IS NOT NULL`,
		`INSERT INTO messages (message_id, user_id, body, enqueued_at, stream_offset, stream_gen) VALUES
			('old-1', 'u', 'first', 1, 1, 7), ('old-2', 'u', 'second', 2, 2, 7)`)

	s = openStreams(t, path, clk)
	defer s.Close()
	q, err := s.PendingMessages(ctx, 0, 10)
	if err != nil || len(q) != 2 || q[0].Body != "first" || q[1].Offset != 2 {
		t.Fatalf("pending of the earlier layout: %+v %v", q, err)
	}
	if got, err := s.StreamRange(ctx, "u", 7, 0, 2, 10); err != nil || len(got) != 2 {
		t.Fatalf("replay of the earlier layout: %+v %v", got, err)
	}
	n, err := s.CompleteKeeping(ctx, q[:2],
		[]events.Published{events.NewMessageDelivered("old-1", "u", 1, t0), events.NewMessageDelivered("old-2", "u", 1, t0)}, []bool{false, true})
	if err != nil || n != 2 {
		t.Fatalf("complete the earlier layout's messages: %d %v", n, err)
	}
	if err := s.Enqueue(ctx, sqlite.QueuedMessage{MessageID: "new", UserID: "u", Body: "third", EnqueuedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	if q, err := s.PendingMessages(ctx, 0, 10); err != nil || len(q) != 1 || q[0].MessageID != "new" {
		t.Fatalf("pending after: %+v %v", q, err)
	}
	if got, err := s.StreamRange(ctx, "u", 7, 0, 3, 10); err != nil || len(got) != 2 || got[1].MessageID != "new" {
		t.Fatalf("stream after: %+v %v", got, err)
	}
	if err := s.Health(); err != nil {
		t.Fatal(err)
	}
	var indexes int
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE name IN ('messages_pending', 'messages_done')`).Scan(&indexes); err != nil || indexes != 0 {
		t.Fatalf("%d indexes of the queue's state left: %v", indexes, err)
	}
	execOn(t, path, `UPDATE messages SET body = 'thirD' WHERE message_id = 'new'`)
	if _, err := s.PendingMessages(ctx, 0, 10); !errors.Is(err, sqlite.ErrDamaged) {
		t.Fatalf("a flipped row queued after the migration is read: %v", err)
	}
}

// TestPruneMessagesKeepsWhatIsPending: the prune forgets the messages done before the
// cutoff (their ids may be queued again) and keeps those pending or done since; a start
// after it reads every pending message, from the queue floor the prune recorded.
func TestPruneMessagesKeepsWhatIsPending(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	s := openStreams(t, path, clk)
	msg := func(id string) sqlite.QueuedMessage {
		return sqlite.QueuedMessage{MessageID: id, UserID: "u", Body: "body of " + id, EnqueuedAt: clk.Now()}
	}
	done := func(m sqlite.QueuedMessage) {
		t.Helper()
		if n, err := s.Complete(ctx, []sqlite.QueuedMessage{m}, q0Outcome(m)); err != nil || n != 1 {
			t.Fatalf("complete %s: %d %v", m.MessageID, n, err)
		}
	}
	if err := s.Enqueue(ctx, msg("a"), msg("b"), msg("c"), msg("d")); err != nil {
		t.Fatal(err)
	}
	q, err := s.PendingMessages(ctx, 0, 10)
	if err != nil || len(q) != 4 {
		t.Fatalf("queue %+v %v", q, err)
	}
	done(q[0]) // a and b done before the cutoff
	done(q[1])
	clk.Add(2 * time.Hour)
	done(q[2]) // c done since: kept; d pending: kept
	if err := s.Enqueue(ctx, msg("e")); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PruneMessages(ctx, time.Hour); err != nil || n != 2 {
		t.Fatalf("pruned %d, want 2: %v", n, err)
	}
	// a was forgotten: it may be queued again; c was not: it is still a duplicate.
	if err := s.Enqueue(ctx, msg("a"), msg("c")); err != nil {
		t.Fatal(err)
	}
	ids := func(s *sqlite.Store) []string {
		t.Helper()
		q, err := s.PendingMessages(ctx, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range q {
			out = append(out, m.MessageID)
		}
		return out
	}
	want := []string{"d", "e", "a"}
	if got := ids(s); !reflect.DeepEqual(got, want) {
		t.Fatalf("pending after the prune: %v, want %v", got, want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStreams(t, path, clk)
	defer s.Close()
	if got := ids(s); !reflect.DeepEqual(got, want) {
		t.Fatalf("pending after a restart: %v, want %v", got, want)
	}
}

// TestOutcomesKeepTheQueueRowsChecksummed: an outcome rewrites its row's checksum from the
// message as the deliverer holds it (with or without a recovery window), from the row as
// stored when the message is given by its sequence number alone or its row changed since
// (positions pruned), and never makes a row changed on disk match again: every row the
// store rewrote matches its checksum, the damaged one still does not.
func TestOutcomesKeepTheQueueRowsChecksummed(t *testing.T) {
	for _, window := range []time.Duration{0, time.Minute} {
		t.Run(fmt.Sprint("window=", window), func(t *testing.T) {
			ctx := context.Background()
			clk := &clock{t: t0}
			path := filepath.Join(t.TempDir(), "db")
			var queued []sqlite.QueuedMessage
			s, err := sqlite.Open(ctx, path, sqlite.Options{Now: clk.Now, RecoveryWindow: window,
				OnQueued: func(m []sqlite.QueuedMessage) { queued = append(queued, m...) }})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			var msgs []sqlite.QueuedMessage
			for _, id := range []string{"fresh", "by-seq", "pruned", "damaged", "twice"} {
				msgs = append(msgs, sqlite.QueuedMessage{MessageID: id, UserID: "u", Body: "body of " + id, EnqueuedAt: clk.Now()})
			}
			if err := s.Enqueue(ctx, msgs...); err != nil {
				t.Fatal(err)
			}
			if len(queued) != len(msgs) || (window > 0 && queued[0].Offset != 1) {
				t.Fatalf("queued %+v", queued)
			}
			complete := func(m sqlite.QueuedMessage, want int) {
				t.Helper()
				if n, err := s.Complete(ctx, []sqlite.QueuedMessage{m}, q0Outcome(m)); err != nil || n != want {
					t.Fatalf("complete %s: %d %v, want %d", m.MessageID, n, err, want)
				}
			}
			complete(queued[0], 1)
			complete(sqlite.QueuedMessage{Seq: queued[1].Seq}, 1)
			clk.Add(time.Hour)
			if _, err := s.PruneStreams(ctx, clk.Now()); err != nil {
				t.Fatal(err)
			}
			complete(queued[2], 1) // its copy still has the positions the prune forgot
			execOn(t, path, `UPDATE messages SET enqueued_at = enqueued_at + 1 WHERE message_id = 'damaged'`)
			complete(queued[3], 1)
			complete(queued[4], 1)
			complete(queued[4], 0)

			db, err := sql.Open("sqlite", path)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			var bad []string
			rows, err := db.Query(`SELECT message_id FROM messages WHERE done_at IS NULL OR body <> ''
				OR crc IS NOT wsp_message_crc(message_id, user_id, enqueued_at, stream_offset, stream_gen, body) ORDER BY seq`)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			for rows.Next() {
				var id string
				if err := rows.Scan(&id); err != nil {
					t.Fatal(err)
				}
				bad = append(bad, id)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(bad, []string{"damaged"}) {
				t.Fatalf("rows not done or not matching their checksums: %v, want only the damaged one", bad)
			}
		})
	}
}
