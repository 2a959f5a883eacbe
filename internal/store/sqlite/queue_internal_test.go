package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"
)

// enqueueTogether has the writer take reqs, each an Enqueue of its own, in one group
// commit: the writer is held until every one is queued for it.
func enqueueTogether(t *testing.T, s *Store, reqs [][]QueuedMessage) {
	t.Helper()
	ctx := context.Background()
	release, running := make(chan struct{}), make(chan struct{})
	go func() {
		_ = s.writeAlone(ctx, func(context.Context) error {
			close(running)
			<-release
			return nil
		})
	}()
	<-running
	var wg sync.WaitGroup
	for _, msgs := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Enqueue(ctx, msgs...); err != nil {
				t.Error(err)
			}
		}()
	}
	for len(s.reqs) < len(reqs) {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
}

// TestQueueRowsOfAGroupCommitInOneInsert: the messages of every request a group commit
// holds are written by one INSERT, at consecutive queue positions and consecutive offsets
// of each user's stream; when one of them is queued already (in the queue, or twice in
// the commit), the others are still queued once each, at positions without gaps, and the
// duplicates are not.
func TestQueueRowsOfAGroupCommitInOneInsert(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	var queued []QueuedMessage
	var commits int
	s, err := Open(ctx, filepath.Join(t.TempDir(), "db"), Options{RecoveryWindow: time.Minute,
		OnCommit: func(int) { commits++ },
		OnQueued: func(m []QueuedMessage) {
			mu.Lock()
			queued = append(queued, m...)
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	msg := func(id, user string) QueuedMessage {
		return QueuedMessage{MessageID: id, UserID: user, Body: "body of " + id, EnqueuedAt: time.Now()}
	}
	if err := s.Enqueue(ctx, msg("first", "u")); err != nil {
		t.Fatal(err)
	}
	var reqs [][]QueuedMessage
	for i := range 10 {
		reqs = append(reqs, []QueuedMessage{msg(fmt.Sprint("m", i), fmt.Sprint("u", i%2))})
	}
	reqs[3] = append(reqs[3], msg("m3b", "u1"), msg("m3c", "u"))
	inserts, before := s.queueInserts, commits
	enqueueTogether(t, s, reqs)
	if commits-before != 1 || s.queueInserts-inserts != 1 {
		t.Fatalf("12 messages of 10 requests in %d commits and %d INSERTs, want 1 and 1", commits-before, s.queueInserts-inserts)
	}
	check := func(want int) {
		t.Helper()
		mu.Lock()
		defer mu.Unlock()
		if len(queued) != want {
			t.Fatalf("%d messages queued, want %d: %+v", len(queued), want, queued)
		}
		sort.Slice(queued, func(i, j int) bool { return queued[i].Seq < queued[j].Seq })
		offsets := map[string]int64{}
		ids := map[string]bool{}
		for i, m := range queued {
			if m.Seq != int64(i+1) {
				t.Fatalf("message %d at queue position %d, want %d", i, m.Seq, i+1)
			}
			if offsets[m.UserID]++; m.Offset != offsets[m.UserID] {
				t.Fatalf("%s at offset %d of %s's stream, want %d", m.MessageID, m.Offset, m.UserID, offsets[m.UserID])
			}
			if ids[m.MessageID+"/"+m.UserID] {
				t.Fatalf("%s queued twice for %s", m.MessageID, m.UserID)
			}
			ids[m.MessageID+"/"+m.UserID] = true
		}
		pending, err := s.PendingMessages(ctx, 0, 100)
		if err != nil || len(pending) != want {
			t.Fatalf("%d pending (%v), want %d", len(pending), err, want)
		}
	}
	check(13)
	reqs = [][]QueuedMessage{{msg("n1", "u")}, {msg("first", "u")}, {msg("n2", "u"), msg("n2", "u")}, {msg("n3", "u0")}, {msg("n3", "u0")}, {msg("m1", "u0")}}
	enqueueTogether(t, s, reqs)
	check(17)
	if err := s.Enqueue(ctx, msg("last", "u")); err != nil {
		t.Fatal(err)
	}
	check(18)
}

// TestOnlyAConstraintIsADuplicate: the queue's INSERT is retried a row at a time only when
// SQLite refused a row for a constraint; any other error (here a missing table) fails the
// batch, wrapped or not.
func TestOnlyAConstraintIsADuplicate(t *testing.T) {
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "c.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT UNIQUE)`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO t (a, b) VALUES (1, 'x')`); err != nil {
		t.Fatal(err)
	}
	_, dupKey := db.Exec(`INSERT INTO t (a, b) VALUES (1, 'y')`)
	_, dupUnique := db.Exec(`INSERT INTO t (a, b) VALUES (2, 'y'), (3, 'x')`)
	_, missing := db.Exec(`INSERT INTO nowhere (a) VALUES (1)`)
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"primary key", dupKey, true},
		{"unique index, multi-row", dupUnique, true},
		{"wrapped", fmt.Errorf("enqueue: %w", dupUnique), true},
		{"missing table", missing, false},
		{"nil", nil, false},
	} {
		if got := isConstraint(tc.err); got != tc.want {
			t.Errorf("%s: isConstraint(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
