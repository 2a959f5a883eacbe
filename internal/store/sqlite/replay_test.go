package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
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
