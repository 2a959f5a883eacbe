package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
)

// TestAUserRowHoldsLittleMoreThanItsIdAndLastActivity: what the view keeps of a user who
// visited once and left (its row, and the pages of the active users' index it takes),
// measured with SQLite's dbstat over the table and its index, is at most 24 bytes past the
// floor of a row that holds its id and its last activity (the id's bytes and 8).
func TestAUserRowHoldsLittleMoreThanItsIdAndLastActivity(t *testing.T) {
	const users = 5000
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	s := open(t, path, clk, nil)
	idBytes := 0
	for i := 0; i < users; i += 500 {
		var evs []events.ConnectionEvent
		for j := i; j < i+500; j++ {
			uid, cid, at := fmt.Sprintf("visitor-%06d", j), fmt.Sprintf("c%d", j), t0.Add(time.Duration(j)*time.Millisecond)
			idBytes += len(uid)
			evs = append(evs, events.Opened(uid, cid, at, "", ""), events.Closed(uid, cid, at.Add(time.Millisecond), events.ReasonClient))
		}
		mustAppend(t, s, evs...)
	}
	expireGraces(t, s, clk, t0.Add(time.Hour))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var table, index, payload int64
	if err := db.QueryRow(`SELECT COALESCE(SUM(pgsize), 0), COALESCE(SUM(payload), 0) FROM dbstat WHERE name = 'view_users'`).Scan(&table, &payload); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name = 'view_users_active'`).Scan(&index); err != nil {
		t.Fatal(err)
	}
	perUser := float64(table+index) / users
	floor := float64(idBytes)/users + 8
	t.Logf("%d users offline: view_users %d bytes in pages (%d of row payload), view_users_active %d: %.1f bytes per user (%.1f of payload), floor %.1f",
		users, table, payload, index, perUser, float64(payload)/users, floor)
	if perUser > floor+24 {
		t.Fatalf("a user's row takes %.1f bytes, want at most %.1f (its id and last activity, %.1f, and 24)", perUser, floor+24, floor)
	}
}

// TestPruneUsersForgetsOnlyUsersOfflinePastTheCutoff: PruneUsers deletes the rows of the
// users announced offline whose last activity is before the cutoff, and keeps the users
// online, in their grace period, or active since; a forgotten user is answered as one
// never seen, and its next visit starts a new row.
func TestPruneUsersForgetsOnlyUsersOfflinePastTheCutoff(t *testing.T) {
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	ctx := context.Background()
	s := open(t, path, clk, nil)
	defer func() { s.Close() }()
	const old = 1200 // more than two chunks
	var evs []events.ConnectionEvent
	for i := range old {
		uid, cid, at := fmt.Sprintf("old-%04d", i), fmt.Sprintf("oc%d", i), t0.Add(time.Duration(i)*time.Millisecond)
		evs = append(evs, events.Opened(uid, cid, at, "", ""), events.Closed(uid, cid, at.Add(time.Millisecond), events.ReasonClient))
	}
	mustAppend(t, s, evs...)
	mustAppend(t, s, events.Opened("online", "on1", t0, "", ""))
	expireGraces(t, s, clk, t0.Add(time.Hour))
	at := clk.Now()
	mustAppend(t, s, events.Opened("recent", "r1", at, "", ""), events.Closed("recent", "r1", at, events.ReasonClient),
		events.Opened("grace", "g1", t0, "", ""), events.Closed("grace", "g1", t0.Add(time.Second), events.ReasonClient),
		events.Opened("old-0007", "oc7b", at, "", ""), events.Closed("old-0007", "oc7b", at, events.ReasonClient))
	if err := s.Close(); err != nil { // the snapshot holds every row
		t.Fatal(err)
	}
	s = open(t, path, clk, nil)
	n, err := s.PruneUsers(ctx, at)
	if err != nil || n != old-1 {
		t.Fatalf("pruned %d users, %v; want the %d offline since before the cutoff", n, err, old-1)
	}
	st, err := s.Users(ctx, []string{"old-0003", "old-0007", "online", "grace", "recent"})
	if err != nil {
		t.Fatal(err)
	}
	if st[0].Online() || !st[0].LastActivity.IsZero() {
		t.Fatalf("a pruned user: %+v, want it answered as never seen", st[0])
	}
	for _, u := range st[1:] {
		if u.LastActivity.IsZero() {
			t.Fatalf("%s was pruned: %+v", u.UserID, st)
		}
	}
	v, _ := s.Dump(ctx)
	if len(v.Users) != 4 {
		t.Fatalf("the view holds %d users after the prune, want 4", len(v.Users))
	}
	if n, err := s.PruneUsers(ctx, at); err != nil || n != 0 {
		t.Fatalf("a second pass pruned %d, %v", n, err)
	}
	mustAppend(t, s, events.Opened("old-0003", "oc3b", at.Add(time.Second), "", ""))
	if st, _ := s.Users(ctx, []string{"old-0003"}); !st[0].Online() || !st[0].LastActivity.Equal(at.Add(time.Second)) {
		t.Fatalf("a pruned user's return: %+v", st)
	}
}
