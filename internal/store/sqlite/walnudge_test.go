package sqlite

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
)

// TestTheWriterAsksForACheckpointEachTimeTheWALGrowsByANudge: the writer asks the
// checkpointer for a checkpoint once per walNudge the WAL grows by, not at every commit
// while it is large, and again once a WAL written from its start grows anew.
func TestTheWriterAsksForACheckpointEachTimeTheWALGrowsByANudge(t *testing.T) {
	s := &Store{}
	for _, c := range []struct {
		size int64
		want bool
	}{
		{walKept, false},
		{walNudge - 1, false},
		{walNudge + 1, true},
		{walNudge + walKept, false}, // grown, but not by another walNudge
		{2*walNudge + 1, true},
		{5*walNudge + 1, true}, // one commit past several: one request
		{5*walNudge + 2, false},
		{walKept, false}, // written from its start again and cut
		{walNudge, true},
	} {
		if got := s.walGrew(c.size); got != c.want {
			t.Fatalf("a WAL of %d bytes asks for a checkpoint: %v, want %v", c.size, got, c.want)
		}
	}
}

// TestAPruneWaitsForTheIntegrityCheck: while an integrity check reads the whole file (its
// snapshot keeps the checkpoints from copying the WAL), a prune deletes nothing; once the
// check ends it deletes what it found.
func TestAPruneWaitsForTheIntegrityCheck(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s, err := Open(ctx, filepath.Join(t.TempDir(), "s.db"), Options{Now: func() time.Time { return t0.Add(time.Hour) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Append(ctx, events.Opened("u1", "c1", t0, "", ""), events.Closed("u1", "c1", t0.Add(time.Second), events.ReasonClient),
		events.Opened("u2", "c2", t0.Add(2*time.Second), "", "")); err != nil {
		t.Fatal(err)
	}
	if err := s.writeAlone(ctx, s.snapshot); err != nil {
		t.Fatal(err)
	}
	checked := make(chan struct{})
	s.checking.Store(&checked)
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := s.CompactLog(ctx, t0.Add(time.Minute))
		done <- result{n, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("the log was compacted (%d records, %v) during an integrity check", r.n, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	var kept int
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM log`).Scan(&kept); err != nil || kept != 3 {
		t.Fatalf("%d log records during the check (%v), want the 3 appended", kept, err)
	}
	s.checking.Store(nil)
	close(checked)
	if r := <-done; r.err != nil || r.n != 2 {
		t.Fatalf("compacted %d records after the check, %v; want the 2 behind the checkpoint", r.n, r.err)
	}
}
