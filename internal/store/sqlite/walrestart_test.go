package sqlite

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// walHeader reads the WAL's checkpoint sequence number (bumped each time the WAL is written
// from its start again) and the file's size.
func walHeader(t *testing.T, path string) (seq uint32, size int64) {
	t.Helper()
	b, err := os.ReadFile(path + "-wal")
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 32 {
		t.Fatalf("the WAL holds %d bytes, no header", len(b))
	}
	return binary.BigEndian.Uint32(b[12:16]), int64(len(b))
}

// holdSnapshot opens a reader of the store file at path and reads in a transaction it
// keeps open until release: its snapshot holds the WAL's later frames back from
// checkpoints.
func holdSnapshot(t *testing.T, path string) (release func()) {
	t.Helper()
	reader, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reader.Close() })
	tx, err := reader.Begin()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRow(`SELECT COUNT(*) FROM log`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestWALRestartsAfterACheckpointLeftATail: a checkpoint of the checkpointer that leaves
// frames behind (a reader held them here; under load, the commits that land while it
// copies) is finished by the writer after its next commit, and the commit after that
// writes the WAL from its start again: the WAL stops growing without the truncating
// checkpoint between commits (its limit is out of reach here).
func TestWALRestartsAfterACheckpointLeftATail(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "s.db")
	s, err := Open(ctx, path, Options{WALLimit: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	n := 0
	enqueue := func(count int) {
		t.Helper()
		for range count {
			n++
			if err := s.Enqueue(ctx, QueuedMessage{MessageID: fmt.Sprintf("m%d", n), UserID: fmt.Sprintf("u%d", n), Body: "hello", EnqueuedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}
	}
	enqueue(20)
	release := holdSnapshot(t, path)
	enqueue(20) // past the reader's snapshot: the checkpoint cannot copy these yet
	s.checkpoint()
	if !s.walTail.Load() {
		t.Fatal("a checkpoint held back by a reader leaves no tail for the writer")
	}
	release()
	enqueue(1) // its commit is appended; the writer then copies the tail
	seq, size := walHeader(t, path)
	enqueue(1) // written from the WAL's start
	seq2, size2 := walHeader(t, path)
	if seq2 == seq {
		t.Fatalf("the WAL was not written from its start again after the checkpoint's tail was copied (checkpoint sequence %d, %d then %d bytes)", seq, size, size2)
	}
	if size2 > size {
		t.Fatalf("the WAL grew from %d to %d bytes after it was restarted", size, size2)
	}
}
