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
	ctx := context.Background()
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
	clk.Set(t0.Add(time.Hour))
	graces, _ := s.PendingGraces(ctx)
	for _, g := range graces {
		if _, err := s.ExpireGrace(ctx, g.UserID, g.Since, clk.Now()); err != nil {
			t.Fatal(err)
		}
	}
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
