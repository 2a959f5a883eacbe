package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
)

// TestAPrunesChunkFollowsItsBacklog: a prune's chunk doubles while chunks come full and
// quick, up to its largest, halves after a slow one, down to its smallest, and stays put
// when a chunk was not full (the backlog is gone).
func TestAPrunesChunkFollowsItsBacklog(t *testing.T) {
	p := newPace()
	quick, slow := time.Microsecond, 2*pruneTarget
	p.next(int64(p.chunk), quick)
	if p.chunk != 2*pruneChunk {
		t.Fatalf("after a full quick chunk: %d rows, want %d", p.chunk, 2*pruneChunk)
	}
	for range 64 {
		p.next(int64(p.chunk), quick)
	}
	if p.chunk != pruneChunkMax {
		t.Fatalf("after many full quick chunks: %d rows, want the largest, %d", p.chunk, pruneChunkMax)
	}
	p.next(int64(p.chunk), slow)
	if p.chunk != pruneChunkMax/2 {
		t.Fatalf("after a slow chunk: %d rows, want %d", p.chunk, pruneChunkMax/2)
	}
	p.next(1, quick)
	if p.chunk != pruneChunkMax/2 {
		t.Fatalf("after a chunk that was not full: %d rows, want it unchanged, %d", p.chunk, pruneChunkMax/2)
	}
	for range 64 {
		p.next(0, slow)
	}
	if p.chunk != pruneChunk {
		t.Fatalf("after many slow chunks: %d rows, want the smallest, %d", p.chunk, pruneChunk)
	}
}

// TestOnePassRemovesABacklogOfManyChunks: a backlog of closed connections, log records and
// outbox rows of many chunks (half the largest chunk is six chunks from the first one, more
// when the writer is slow) is removed by one pass of each prune, which
// deletes it all and nothing the retention keeps, and leaves the writer's mode for the next
// group commit as the store's (a prune's chunks are not synced by themselves).
func TestOnePassRemovesABacklogOfManyChunks(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	s, err := Open(ctx, filepath.Join(t.TempDir(), "s.db"), Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n, kept = pruneChunkMax / 2, 10
	for i := 0; i < n+kept; i += 500 {
		var evs []events.ConnectionEvent
		for j := i; j < min(i+500, n+kept); j++ {
			at := t0.Add(time.Duration(j) * time.Millisecond)
			if j >= n {
				at = t0.Add(time.Hour + time.Duration(j)*time.Millisecond)
			}
			uid, cid := fmt.Sprintf("u%06d", j), fmt.Sprintf("c%06d", j)
			evs = append(evs, events.Opened(uid, cid, at, "", ""), events.Closed(uid, cid, at.Add(time.Microsecond), events.ReasonClient))
		}
		if _, err := s.Append(ctx, evs...); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.writeAlone(ctx, s.snapshot); err != nil { // the log behind the checkpoint may go
		t.Fatal(err)
	}
	count := func(table string) (c int64) {
		t.Helper()
		if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM `+table).Scan(&c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	cutoff := t0.Add(time.Hour)
	logBefore, outboxBefore := count("log"), count("published")
	if got, err := s.CompactLog(ctx, cutoff); err != nil || got != logBefore-2*kept {
		t.Fatalf("compacted %d of %d log records, %v; want all but the %d kept", got, logBefore, err, 2*kept)
	}
	if got, err := s.PruneTombstones(ctx, cutoff); err != nil || got != n {
		t.Fatalf("pruned %d closed connections, %v; want %d", got, err, n)
	}
	if got := count("view_connections"); got != kept {
		t.Fatalf("%d connections kept, want %d", got, kept)
	}
	if got, err := s.PrunePublished(ctx, cutoff); err != nil || got < n || count("published") != outboxBefore-got || count("published") < kept {
		t.Fatalf("pruned %d of %d outbox rows, %v, %d kept", got, outboxBefore, err, count("published"))
	}
	if _, err := s.Append(ctx, events.Opened("last", "c-last", cutoff.Add(time.Hour), "", "")); err != nil {
		t.Fatal(err)
	}
	var mode int
	if err := s.wc.QueryRowContext(ctx, `PRAGMA synchronous`).Scan(&mode); err != nil || mode != 2 {
		t.Fatalf("the writer's mode after a prune and a commit: %d, %v; want FULL (2)", mode, err)
	}
}
