package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWALIndexBoundsTheWALFile: after every commit, while the WAL grows past walKept and
// past walNudge and is written from its start again after checkpoints, the end the
// wal-index gives is within the WAL file, the larger of it and walKept is at least the
// file's size, and both count as many walNudge steps: the writer's bound (boundWAL) asks
// for the same checkpoints as the file's size did, without reading it.
func TestWALIndexBoundsTheWALFile(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "s.db"), Options{WALLimit: 1 << 40, Sync: "normal"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	body := strings.Repeat("x", 48<<10)
	var maxSize int64
	restarts, steps := 0, map[int64]bool{}
	for i := range 400 {
		if err := s.Enqueue(ctx, QueuedMessage{MessageID: fmt.Sprintf("m%d", i), UserID: fmt.Sprintf("u%d", i), Body: body, EnqueuedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
		var end, size int64
		var ok bool
		// On the writer's goroutine, between two commits, as boundWAL reads them.
		if err := s.writeAlone(ctx, func(context.Context) error {
			end, ok = s.walIdx.end(s.path)
			size = s.walSize()
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if !ok {
			t.Fatalf("commit %d: the wal-index could not be read", i)
		}
		bound := max(end, walKept)
		if end > size || size > bound {
			t.Fatalf("commit %d: the WAL file holds %d bytes, the wal-index ends its frames at %d: not a bound (%d)", i, size, end, bound)
		}
		if size/walNudge != bound/walNudge {
			t.Fatalf("commit %d: the file's %d bytes are %d steps of walNudge, the bound's %d are %d", i, size, size/walNudge, bound, bound/walNudge)
		}
		if size < maxSize {
			restarts++
		}
		maxSize = max(maxSize, size)
		steps[size/walNudge] = true
		// A checkpoint now and then: the writer finishes it and writes the WAL from its
		// start again, cut to walKept.
		if i%150 == 149 {
			s.checkpoint()
			s.walTail.Store(true)
		}
	}
	if maxSize <= walNudge || restarts == 0 || len(steps) < 2 {
		t.Fatalf("the WAL grew to %d bytes and was cut %d times: the test did not cover a walNudge step and a restart", maxSize, restarts)
	}
}
