package sqlite_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// copyOf writes a consistent copy of the store's file as it is on disk now (what a crash
// at this moment leaves: every commit, no final snapshot) and returns its path.
func copyOf(t *testing.T, path string) string {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	dst := filepath.Join(t.TempDir(), "copy")
	if _, err := db.Exec(`VACUUM INTO ?`, dst); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestStartReplaysOnlyTheTailPastTheSnapshot: the view is snapshotted every SnapshotEvents
// records, so a start after a crash replays only the records past the last snapshot, and
// the view it builds is the one the crashed process held.
func TestStartReplaysOnlyTheTailPastTheSnapshot(t *testing.T) {
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	ctx := context.Background()
	s, err := sqlite.Open(ctx, path, sqlite.Options{Grace: 5 * time.Second, Now: clk.Now, SnapshotEvents: 10, SnapshotInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 25 {
		uid, cid, at := fmt.Sprintf("u%d", i%4), fmt.Sprintf("c%d", i/2), t0.Add(time.Duration(i)*time.Second)
		e := events.Opened(uid, cid, at, "", "")
		if i%2 == 1 {
			e = events.Closed(fmt.Sprintf("u%d", (i-1)%4), cid, at, events.ReasonClient)
		}
		mustAppend(t, s, e)
	}
	if eff, err := s.ExpireGrace(ctx, "u2", t0.Add(23*time.Second), t0.Add(time.Minute)); err != nil || len(eff.Publish) != 1 {
		t.Fatalf("u2's grace timer decided %v, %v", eff.Publish, err)
	}
	want, _ := s.Dump(ctx)
	wantGraces, _ := s.PendingGraces(ctx)

	crashed := copyOf(t, path)
	r, err := sqlite.Open(ctx, crashed, sqlite.Options{Grace: 5 * time.Second, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// 26 records (25 events, one grace decision that decided), snapshots at 10 and 20.
	if got := r.Recovered().Events; got != 6 {
		t.Fatalf("the start replayed %d records, want the 6 past the last snapshot", got)
	}
	got, _ := r.Dump(ctx)
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("view after the crash:\nwant %+v\ngot  %+v", want, got)
	}
	if graces, _ := r.PendingGraces(ctx); !reflect.DeepEqual(graces, wantGraces) {
		t.Fatalf("pending graces after the crash %+v, want %+v", graces, wantGraces)
	}
	if before, after := detailTypes(t, s), detailTypes(t, r); !reflect.DeepEqual(before, after) {
		t.Fatalf("the replay published again: %v -> %v", before, after)
	}
}

// TestAStoreOfTheEarlierLayoutIsMigrated: a file written by the version whose log was the
// events table (a key index, columns) opens with its log moved, in order, into the lean
// log table and its view folded from it.
func TestAStoreOfTheEarlierLayoutIsMigrated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
		INSERT INTO meta VALUES ('view_version', '2');
		CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, type TEXT NOT NULL,
			user_id TEXT NOT NULL, connection_id TEXT NOT NULL, at INTEGER NOT NULL, data TEXT NOT NULL);
		CREATE TABLE view_users (user_id TEXT PRIMARY KEY, live INTEGER NOT NULL, last_activity INTEGER, announced TEXT NOT NULL,
			offline_since INTEGER, online INTEGER NOT NULL, grace_pending INTEGER NOT NULL) WITHOUT ROWID;`); err != nil {
		t.Fatal(err)
	}
	old := []events.ConnectionEvent{events.Opened("a", "a1", t0, "", ""), events.Opened("b", "b1", t0, "", ""),
		events.Closed("b", "b1", t0.Add(time.Second), events.ReasonClient)}
	for _, e := range old {
		data, _ := json.Marshal(e)
		if _, err := db.Exec(`INSERT INTO events (key, type, user_id, connection_id, at, data) VALUES (?, ?, ?, ?, ?, ?)`,
			e.Key(), string(e.Type), e.UserID, e.ConnectionID, e.At.UnixNano(), string(data)); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	clk := &clock{t: t0.Add(2 * time.Second)}
	s := open(t, path, clk, nil)
	defer s.Close()
	ctx := context.Background()
	if got := s.Recovered().Events; got != 3 {
		t.Fatalf("folded %d records of the earlier log, want 3", got)
	}
	log, err := s.Log(ctx)
	if err != nil || !reflect.DeepEqual(log, old) {
		t.Fatalf("log after the migration = %+v, %v; want %+v", log, err, old)
	}
	users, _ := s.Users(ctx, []string{"a", "b"})
	if users[0].Connections != 1 || users[1].Connections != 0 || !users[1].LastActivity.Equal(t0.Add(time.Second)) {
		t.Fatalf("view after the migration: %+v", users)
	}
	// The migrated log keeps its idempotency: its events are not appended again.
	if n := mustAppend(t, s, old...); n != 0 {
		t.Fatalf("appended %d of the migrated events again", n)
	}
}

// TestAnActivityNoNewerThanLastSeenIsNotAppended: an activity that changes nothing (not
// newer than what the connection was last seen at) is the same fact again.
func TestAnActivityNoNewerThanLastSeenIsNotAppended(t *testing.T) {
	clk := &clock{t: t0}
	s := open(t, filepath.Join(t.TempDir(), "db"), clk, nil)
	defer s.Close()
	mustAppend(t, s, events.Opened("u", "c", t0, "", ""))
	a := events.Activity("u", "c", t0.Add(time.Second))
	if n := mustAppend(t, s, a, a, events.Activity("u", "c", t0.Add(time.Second/2))); n != 1 {
		t.Fatalf("appended %d activities, want the first only", n)
	}
	if n := mustAppend(t, s, events.Activity("u", "c", t0.Add(2*time.Second))); n != 1 {
		t.Fatalf("a newer activity was not appended (%d)", n)
	}
	users, _ := s.Users(context.Background(), []string{"u"})
	if !users[0].LastActivity.Equal(t0.Add(2 * time.Second)) {
		t.Fatalf("last activity %v", users[0].LastActivity)
	}
}

// TestDamagedSnapshotIsNotServed: a byte flipped in a snapshot row (a closed connection
// made live again, its user online) is caught by the row's checksum at the next start:
// the view is folded from the log instead, the user is offline, and the snapshot is
// rewritten whole.
func TestDamagedSnapshotIsNotServed(t *testing.T) {
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	ctx := context.Background()
	s, err := sqlite.Open(ctx, path, sqlite.Options{Grace: 5 * time.Second, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s, events.Opened("f", "f1", t0, "", ""), events.Opened("g", "g1", t0, "", ""))
	mustAppend(t, s, events.Closed("f", "f1", t0.Add(time.Second), events.ReasonClient))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`UPDATE view_connections SET closed_at = NULL, reason = NULL WHERE connection_id = 'f1'`,
		`UPDATE view_users SET live = 1 WHERE user_id = 'f'`} {
		if res, err := db.Exec(q); err != nil {
			t.Fatal(err)
		} else if n, _ := res.RowsAffected(); n != 1 {
			t.Fatalf("%s changed %d rows", q, n)
		}
	}
	db.Close()

	again, err := sqlite.Open(ctx, path, sqlite.Options{Grace: 5 * time.Second, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	st, err := again.Users(ctx, []string{"f", "g"})
	if err != nil || st[0].Online() || !st[1].Online() {
		t.Fatalf("after the start: %+v %v, want f offline (the log), g online", st, err)
	}
	if live, _ := again.LiveConnections(ctx, "f"); len(live) != 0 {
		t.Fatalf("f's damaged connection is served live: %v", live)
	}
}
