package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// TestAGapInTheLogIsRefused: a start whose log past the view's checkpoint misses a record
// (a cut or damaged file) refuses to open, naming the first missing position, instead of
// folding the rest silently; the whole log replayed (no snapshot) is checked from its first
// position.
func TestAGapInTheLogIsRefused(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, cut string
		missing   int64
	}{
		{"a record past the checkpoint", `UPDATE checkpoints SET seq = 4; DELETE FROM log WHERE seq = 7`, 7},
		{"the first record past the checkpoint", `UPDATE checkpoints SET seq = 4; DELETE FROM log WHERE seq = 5`, 5},
		{"the log's head, with no snapshot", `DELETE FROM checkpoints; DELETE FROM log WHERE seq <= 2`, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := &clock{t: t0}
			path := filepath.Join(t.TempDir(), "db")
			s := open(t, path, clk, nil)
			for i := range 5 {
				uid, cid, at := fmt.Sprintf("u%d", i), fmt.Sprintf("c%d", i), t0.Add(time.Duration(i)*time.Second)
				mustAppend(t, s, events.Opened(uid, cid, at, "", ""), events.Closed(uid, cid, at.Add(time.Millisecond), events.ReasonClient))
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			db, err := sql.Open("sqlite", path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(tc.cut); err != nil {
				t.Fatal(err)
			}
			db.Close()

			r, err := sqlite.Open(ctx, path, sqlite.Options{Now: clk.Now})
			if err == nil {
				r.Close()
				t.Fatal("a log with a gap was opened")
			}
			if !errors.Is(err, sqlite.ErrLogGap) || !strings.Contains(err.Error(), fmt.Sprintf("position %d is missing", tc.missing)) {
				t.Fatalf("the refusal %q does not name position %d", err, tc.missing)
			}
		})
	}
}

// TestCompactedLogRebuildsFromTheSnapshot: the log records the snapshot holds and older
// than the cutoff are deleted; the users offline past their grace leave the memory image
// and are read from the snapshot (their last activity still answered); the log's positions
// go on after the compaction (a restart finds no gap), and a rebuild folds from the
// snapshot plus the log kept after it, to the same view.
func TestCompactedLogRebuildsFromTheSnapshot(t *testing.T) {
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	ctx := context.Background()
	s := open(t, path, clk, nil)
	for i := range 20 {
		uid, cid, at := fmt.Sprintf("u%d", i), fmt.Sprintf("c%d", i), t0.Add(time.Duration(i)*time.Second)
		mustAppend(t, s, events.Opened(uid, cid, at, "", ""), events.Closed(uid, cid, at.Add(time.Millisecond), events.ReasonClient))
	}
	mustAppend(t, s, events.Opened("stays", "s1", t0.Add(time.Minute), "", ""))
	clk.Set(t0.Add(time.Hour))
	graces, _ := s.PendingGraces(ctx)
	for _, g := range graces {
		if _, err := s.ExpireGrace(ctx, g.UserID, g.Since, clk.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil { // writes the snapshot
		t.Fatal(err)
	}
	s = open(t, path, clk, nil)
	if n := s.ImageUsers(); n != 1 {
		t.Fatalf("the image holds %d users after the start, want the one online", n)
	}
	want, err := s.Dump(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.CompactLog(ctx, t0.Add(30*time.Second)) // the records of u0..u9 and their grace decisions
	if err != nil || n < 20 {
		t.Fatalf("compacted %d records, %v; want at least the 20 of u0..u9", n, err)
	}
	if st, err := s.Users(ctx, []string{"u3"}); err != nil || st[0].Online() || !st[0].LastActivity.Equal(t0.Add(3*time.Second+time.Millisecond)) {
		t.Fatalf("u3 after the compaction: %+v, %v", st, err)
	}
	if n, err := s.CompactLog(ctx, clk.Now()); err != nil || n == 0 {
		t.Fatalf("compacted %d more records, %v", n, err)
	}
	log, _ := s.Log(ctx)
	if len(log) > 1 {
		t.Fatalf("the log kept %d events behind the checkpoint: %+v", len(log), log)
	}
	mustAppend(t, s, events.Opened("u3", "c3b", clk.Now(), "", ""))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, path, clk, nil) // positions go on: no gap
	defer s.Close()
	if st, _ := s.Users(ctx, []string{"u3"}); !st[0].Online() {
		t.Fatalf("u3's return is lost: %+v", st)
	}
	before, _ := s.Dump(ctx)
	p, err := s.Rebuild(ctx)
	if err != nil || p.From == 0 {
		t.Fatalf("rebuild: %+v, %v; want it from the snapshot", p, err)
	}
	after, _ := s.Dump(ctx)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("the rebuilt view differs:\nbefore %+v\nafter  %+v", before, after)
	}
	if len(after.Users) != len(want.Users) {
		t.Fatalf("users after the compaction and rebuild: %d, want %d", len(after.Users), len(want.Users))
	}
}
