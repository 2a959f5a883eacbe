package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
)

// TestTheWALIsCutBackAfterABurst: a burst grows the WAL past walKept; once it is all
// copied into the database, the writer's next commit writes it from its start again and
// cuts the file back to walKept, so the store's size on disk does not keep a burst's peak.
func TestTheWALIsCutBackAfterABurst(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s, err := Open(ctx, filepath.Join(t.TempDir(), "s.db"), Options{Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	agent := strings.Repeat("a", 400)
	for i := 0; s.walSize() <= 2*walKept; i++ {
		var evs []events.ConnectionEvent
		for j := range 500 {
			uid, cid := fmt.Sprintf("u%d-%d", i, j), fmt.Sprintf("c%d-%d", i, j)
			evs = append(evs, events.Opened(uid, cid, t0, "203.0.113.10", agent), events.Closed(uid, cid, t0, events.ReasonClient))
		}
		if _, err := s.Append(ctx, evs...); err != nil {
			t.Fatal(err)
		}
	}
	peak := s.walSize()
	// Everything committed is in the database: the burst's rows in the snapshot (or the
	// writer's next tick would write them after the copy), then the WAL copied.
	if err := s.writeAlone(ctx, s.snapshot); err != nil {
		t.Fatal(err)
	}
	s.checkpoint()
	if _, err := s.Append(ctx, events.Opened("after", "c-after", t0, "", "")); err != nil {
		t.Fatal(err)
	}
	if got := s.walSize(); got > walKept {
		t.Fatalf("the WAL is %d bytes after the burst (its peak %d), want at most %d", got, peak, walKept)
	}
}
