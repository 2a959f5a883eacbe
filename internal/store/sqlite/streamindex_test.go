package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// streamOf reads userID's whole stream as "offset:message id" strings, with its top and
// the count of kept messages.
func streamOf(t *testing.T, s *sqlite.Store, userID string) (sqlite.StreamTop, int64, []string) {
	t.Helper()
	ctx := context.Background()
	top, ok := s.Top(userID)
	if !ok {
		return top, 0, nil
	}
	n, err := s.KeptCount(ctx, userID, top.Gen, 0, top.Offset)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	// Pages of 3, as a replay reads them.
	for at := int64(0); ; {
		page, err := s.StreamRange(ctx, userID, top.Gen, at, top.Offset, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, e := range page {
			got = append(got, fmt.Sprintf("%d:%s", e.Offset, e.MessageID))
			at = e.Offset
		}
	}
	return top, n, got
}

// TestReplayAfterARestartFromTheRebuiltIndex: the streams of several users, their
// messages interleaved in the queue, with gaps (a delivered message not kept, positions
// pruned past the window, rows deleted by the queue's retention), read the same after a
// restart, which rebuilds the index of positions in memory from the rows; the next
// messages follow on; SQLite holds no index of stream positions.
func TestReplayAfterARestartFromTheRebuiltIndex(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	s := openStreams(t, path, clk)
	users := []string{"ann", "bob", "cid"}
	var all []sqlite.QueuedMessage
	for i := range 30 {
		u := users[i%len(users)]
		if i%7 == 6 {
			u = "bob" // bob takes more than his turn: the users' offsets drift apart
		}
		m := sqlite.QueuedMessage{MessageID: fmt.Sprint("m", i), UserID: u, Body: fmt.Sprint("body ", i), EnqueuedAt: clk.Now()}
		if err := s.Enqueue(ctx, m); err != nil {
			t.Fatal(err)
		}
		clk.Add(time.Second)
	}
	q, err := s.PendingMessages(ctx, 0, 100)
	if err != nil || len(q) != 30 {
		t.Fatalf("queue %d %v", len(q), err)
	}
	all = q
	// Every message is delivered; every fourth is not kept (its position is gone).
	keep := make([]bool, len(all))
	outs := make([]events.Published, len(all))
	for i, m := range all {
		keep[i] = i%4 != 3
		outs[i] = events.NewMessageDelivered(m.MessageID, m.UserID, 1, clk.Now())
	}
	if _, err := s.CompleteKeeping(ctx, all[:20], outs[:20], keep[:20]); err != nil {
		t.Fatal(err)
	}
	// The last ten stay pending, m25 held by its Seq alone (as the held messages' expiry
	// names it) and completed without being kept.
	if _, err := s.Complete(ctx, []sqlite.QueuedMessage{{Seq: all[25].Seq, EnqueuedAt: all[25].EnqueuedAt}}, outs[25:26]); err != nil {
		t.Fatal(err)
	}
	// The window (a minute) passes for the first eight.
	clk.Set(t0.Add(68 * time.Second))
	if n, err := s.PruneStreams(ctx, clk.Now().Add(-time.Minute)); err != nil || n != 8 {
		t.Fatalf("pruned %d positions, want 8: %v", n, err)
	}
	want := map[string][]string{}
	tops := map[string]sqlite.StreamTop{}
	kept := map[string]int64{}
	for _, u := range users {
		tops[u], kept[u], want[u] = streamOf(t, s, u)
	}
	// What the streams hold, as the rows say: every message from the ninth, kept, by user.
	offsets := map[string]int64{}
	exp := map[string][]string{}
	for i, m := range all {
		offsets[m.UserID]++
		if m.Offset != offsets[m.UserID] {
			t.Fatalf("%s at offset %d, want %d", m.MessageID, m.Offset, offsets[m.UserID])
		}
		if i >= 8 && (i >= 20 || keep[i]) && i != 25 {
			exp[m.UserID] = append(exp[m.UserID], fmt.Sprintf("%d:%s", m.Offset, m.MessageID))
		}
	}
	for _, u := range users {
		if !reflect.DeepEqual(want[u], exp[u]) || kept[u] != int64(len(exp[u])) || tops[u].Offset != offsets[u] {
			t.Fatalf("stream of %s: %v (%d kept, top %d), want %v (top %d)", u, want[u], kept[u], tops[u].Offset, exp[u], offsets[u])
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openStreams(t, path, clk)
	defer func() { s.Close() }()
	for _, u := range users {
		top, n, got := streamOf(t, s, u)
		if top != tops[u] || n != kept[u] || !reflect.DeepEqual(got, want[u]) {
			t.Fatalf("stream of %s after a restart: %v (%d kept, top %+v), was %v (%d kept, top %+v)", u, got, n, top, want[u], kept[u], tops[u])
		}
	}
	// A range inside the gaps: ann's range from her first kept message on.
	first := want["ann"][0]
	var from int64
	fmt.Sscanf(first, "%d:", &from)
	if n, err := s.KeptCount(ctx, "ann", tops["ann"].Gen, from-1, tops["ann"].Offset); err != nil || n != int64(len(want["ann"])) {
		t.Fatalf("ann kept from %d: %d %v", from, n, err)
	}
	if err := s.Enqueue(ctx, sqlite.QueuedMessage{MessageID: "next", UserID: "cid", Body: "b", EnqueuedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	top, _, got := streamOf(t, s, "cid")
	if top.Gen != tops["cid"].Gen || top.Offset != tops["cid"].Offset+1 || got[len(got)-1] != fmt.Sprintf("%d:next", top.Offset) {
		t.Fatalf("the next message of cid: %v (top %+v)", got, top)
	}
	var indexes int
	if scanOn(t, path, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages' AND sql LIKE '%stream_offset%'`, nil, &indexes); indexes != 0 {
		t.Fatalf("%d indexes of stream positions", indexes)
	}
}

// TestPrunesRemoveTheIndexEntries: the index of positions in memory holds a message's
// position until a prune clears it from its row: PruneStreams past the window, or
// PruneMessages deleting the row (a queue retention shorter than the window); an outcome
// that keeps no body marks it gone (no longer replayed) and it stays until then. The
// stream floor rises with the prunes.
func TestPrunesRemoveTheIndexEntries(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	s := openStreams(t, path, clk)
	defer s.Close()
	for i := range 12 {
		m := sqlite.QueuedMessage{MessageID: fmt.Sprint("m", i), UserID: fmt.Sprint("u", i%2), Body: "b", EnqueuedAt: clk.Now()}
		if err := s.Enqueue(ctx, m); err != nil {
			t.Fatal(err)
		}
		clk.Add(time.Second)
	}
	if n := s.StreamIndexLen(); n != 12 {
		t.Fatalf("index holds %d positions, want 12", n)
	}
	q, err := s.PendingMessages(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	outs := make([]events.Published, len(q))
	for i, m := range q {
		outs[i] = events.NewMessageDelivered(m.MessageID, m.UserID, 1, clk.Now())
	}
	// The first four delivered and not kept, the next four kept, the last four pending.
	if _, err := s.CompleteKeeping(ctx, q[:8], outs[:8], []bool{false, false, false, false, true, true, true, true}); err != nil {
		t.Fatal(err)
	}
	top, _ := s.Top("u0")
	if n, _ := s.KeptCount(ctx, "u0", top.Gen, 0, top.Offset); n != 4 || s.StreamIndexLen() != 12 {
		t.Fatalf("u0 keeps %d of 6, the index %d positions: a gone position is not replayed, and stays until pruned", n, s.StreamIndexLen())
	}
	// The window passes for the first six (accepted at t0..t0+5s).
	clk.Set(t0.Add(66 * time.Second))
	if n, err := s.PruneStreams(ctx, clk.Now().Add(-time.Minute)); err != nil || n != 6 {
		t.Fatalf("pruned %d, want 6: %v", n, err)
	}
	if n := s.StreamIndexLen(); n != 6 {
		t.Fatalf("index holds %d positions after the prune, want 6", n)
	}
	if f := metaValue(t, path, "stream_floor"); f != fmt.Sprint(q[6].Seq-1) {
		t.Fatalf("stream floor %s, want %d", f, q[6].Seq-1)
	}
	// The queue's retention (30s here, shorter than the window) deletes the two delivered
	// rows left inside it (m6, m7): their positions go with them.
	if n, err := s.PruneMessages(ctx, 30*time.Second); err != nil || n < 2 {
		t.Fatalf("pruned %d messages: %v", n, err)
	}
	if n := s.StreamIndexLen(); n != 4 {
		t.Fatalf("index holds %d positions after the queue's prune, want 4", n)
	}
	top, _ = s.Top("u0")
	if got, err := s.StreamRange(ctx, "u0", top.Gen, 0, top.Offset, 10); err != nil || len(got) != 2 || got[0].MessageID != "m8" {
		t.Fatalf("u0 after the prunes: %+v %v", got, err)
	}
	// Past the window for all: the index is empty, the streams of users without
	// connections dropped, the floor at the newest row.
	clk.Add(time.Hour)
	if _, err := s.PruneStreams(ctx, clk.Now().Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if n := s.StreamIndexLen(); n != 0 {
		t.Fatalf("index holds %d positions past the window", n)
	}
	if _, ok := s.Top("u0"); ok {
		t.Fatal("u0's stream is kept")
	}
	if f := metaValue(t, path, "stream_floor"); f != fmt.Sprint(q[11].Seq) {
		t.Fatalf("stream floor %s, want %d", f, q[11].Seq)
	}
}

func metaValue(t *testing.T, path, key string) string {
	t.Helper()
	var v string
	scanOn(t, path, `SELECT value FROM meta WHERE key = ?`, []any{key}, &v)
	return v
}

// scanOn reads the one row query (with args) selects in the store file at path into dest.
func scanOn(t *testing.T, path, query string, args []any, dest ...any) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.QueryRow(query, args...).Scan(dest...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// TestAStoreWithTheIndexOfStreamPositionsMigrates: a store of the layout that indexed
// stream positions in SQLite (the index, no stream floor; some positions already pruned)
// opens with the index dropped, the floor recorded just below the oldest row holding a
// position, and its users' streams replayed as before.
func TestAStoreWithTheIndexOfStreamPositionsMigrates(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	s := openStreams(t, path, clk)
	for i := range 9 {
		m := sqlite.QueuedMessage{MessageID: fmt.Sprint("m", i), UserID: fmt.Sprint("u", i%3), Body: fmt.Sprint("body ", i), EnqueuedAt: clk.Now()}
		if err := s.Enqueue(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	q, err := s.PendingMessages(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The earlier layout: the index, no floor, the first three rows' positions pruned
	// (their checksums rewritten as its prune did).
	execOn(t, path, `DELETE FROM meta WHERE key = 'stream_floor'`,
		`CREATE INDEX messages_stream ON messages (user_id, stream_offset) WHERE stream_offset IS NOT NULL`,
		fmt.Sprintf(`UPDATE messages SET stream_offset = NULL, stream_gen = NULL,
			crc = wsp_message_crc(message_id, user_id, enqueued_at, NULL, NULL, body) WHERE seq <= %d`, q[2].Seq))

	s = openStreams(t, path, clk)
	defer s.Close()
	if f := metaValue(t, path, "stream_floor"); f != fmt.Sprint(q[2].Seq) {
		t.Fatalf("stream floor %s, want %d", f, q[2].Seq)
	}
	for u := range 3 {
		uid := fmt.Sprint("u", u)
		top, n, got := streamOf(t, s, uid)
		want := []string{fmt.Sprintf("2:m%d", u+3), fmt.Sprintf("3:m%d", u+6)}
		if top.Offset != 3 || n != 2 || !reflect.DeepEqual(got, want) {
			t.Fatalf("stream of %s: %v (%d kept, top %+v), want %v", uid, got, n, top, want)
		}
	}
	if got, err := s.PendingMessages(ctx, 0, 100); err != nil || len(got) != 9 {
		t.Fatalf("pending %d %v", len(got), err)
	}
	if err := s.Health(); err != nil {
		t.Fatal(err)
	}
	var indexes int
	if scanOn(t, path, `SELECT COUNT(*) FROM sqlite_master WHERE name = 'messages_stream'`, nil, &indexes); indexes != 0 {
		t.Fatal("the index of stream positions is still there")
	}
}
