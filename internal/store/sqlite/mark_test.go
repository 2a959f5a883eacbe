package sqlite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
)

// markMatchesStore fails the test unless the mark file read from disk holds the store's
// positions.
func markMatchesStore(t *testing.T, s *Store, after string) {
	t.Helper()
	ctx := context.Background()
	mark, ok, err := readMark(s.path + MarkSuffix)
	if err != nil || !ok {
		t.Fatalf("after %s: the mark file reads %v, %v", after, ok, err)
	}
	have, err := storePositions(ctx, s.r)
	if err != nil {
		t.Fatal(err)
	}
	if mark != have {
		t.Fatalf("after %s: the mark file says %+v, the store holds %+v", after, mark, have)
	}
}

// TestMarkFollowsEachCommit: after each commit that moves the log, the outbox or the queue,
// the mark file read from disk (what a start after a kill reads) holds the store's newest
// positions, whether the record was copied into the file's mapping or written to it.
func TestMarkFollowsEachCommit(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "s.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	markMatchesStore(t, s, "the open")
	now := time.Now()
	for i := range 5 {
		if _, err := s.Append(ctx, events.Opened("u", fmt.Sprint("c", i), now, "127.0.0.1", "test")); err != nil {
			t.Fatal(err)
		}
		markMatchesStore(t, s, fmt.Sprint("append ", i))
		if err := s.Enqueue(ctx, QueuedMessage{MessageID: fmt.Sprint("m", i), UserID: "u", Body: "x", EnqueuedAt: now}); err != nil {
			t.Fatal(err)
		}
		markMatchesStore(t, s, fmt.Sprint("enqueue ", i))
		msgs, err := s.PendingMessages(ctx, 0, 10)
		if err != nil || len(msgs) != 1 {
			t.Fatalf("pending: %v %v", msgs, err)
		}
		if _, err := s.Complete(ctx, msgs, []events.Published{events.NewMessageDelivered(msgs[0].MessageID, "u", 1, now)}); err != nil {
			t.Fatal(err)
		}
		markMatchesStore(t, s, fmt.Sprint("outcome ", i))
	}
	if (runtime.GOOS == "linux" || runtime.GOOS == "darwin") && s.mark.mem == nil {
		t.Errorf("the mark file is not mapped: the records above were written by WriteAt")
	}
}

// TestMarkWrittenAfterItsFileWasCut: a mark file cut short behind the store's back (its
// mapping would fault) is written again by the next commit, whole, and the store goes on.
func TestMarkWrittenAfterItsFileWasCut(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "s.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := os.Truncate(s.path+MarkSuffix, 0); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range 3 {
		if err := s.Enqueue(ctx, QueuedMessage{MessageID: fmt.Sprint("m", i), UserID: "u", Body: "x", EnqueuedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	markMatchesStore(t, s, "three enqueues after the file was cut")
	if s.mark.mem != nil {
		t.Errorf("the mapping of a file cut short is still used")
	}
}

// TestMarkIsTheFurtherWholeRecord: the mark is the further of the file's whole records (a
// record torn by a kill or a power loss is skipped); a file of one record, the earlier
// layout, is read; a file with no whole record is unreadable.
func TestMarkIsTheFurtherWholeRecord(t *testing.T) {
	rec := func(p positions) []byte {
		var r [markSize]byte
		p.appendRecord(&r)
		return r[:]
	}
	torn := func(p positions) []byte {
		r := rec(p)
		copy(r[30:], "0000")
		return r
	}
	older, newer := positions{Log: 10, Published: 4, Messages: 7}, positions{Log: 10, Published: 5, Messages: 9}
	for _, c := range []struct {
		name string
		file []byte
		want positions
		err  error
	}{
		{"newer first", append(rec(newer), rec(older)...), newer, nil},
		{"newer second", append(rec(older), rec(newer)...), newer, nil},
		{"newer torn", append(rec(older), torn(newer)...), older, nil},
		{"older torn", append(torn(older), rec(newer)...), newer, nil},
		{"both torn", append(torn(older), torn(newer)...), positions{}, errMarkUnreadable},
		{"one record", rec(newer), newer, nil},
		{"cut", rec(newer)[:markSize-1], positions{}, errMarkUnreadable},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "m")
			if err := os.WriteFile(path, c.file, 0o600); err != nil {
				t.Fatal(err)
			}
			p, ok, err := readMark(path)
			if !errors.Is(err, c.err) || (c.err == nil && (!ok || p != c.want)) {
				t.Fatalf("readMark: %+v %v %v, want %+v %v", p, ok, err, c.want, c.err)
			}
		})
	}
}

// TestMarkRecordIsTheEarlierEncoding: a record is byte for byte what the earlier layout's
// formatting wrote, so a file of one record stays readable both ways.
func TestMarkRecordIsTheEarlierEncoding(t *testing.T) {
	for _, p := range []positions{{}, {Log: 1, Published: 2, Messages: 3}, {Log: 1 << 62, Published: 1<<63 - 1, Messages: 123456789}} {
		body := fmt.Sprintf("wspresence-mark 1 log=%d published=%d messages=%d", p.Log, p.Published, p.Messages)
		line := fmt.Sprintf("%s crc=%08x", body, crc32.ChecksumIEEE([]byte(body)))
		want := []byte(line + strings.Repeat(" ", markSize-1-len(line)) + "\n")
		var got [markSize]byte
		p.appendRecord(&got)
		if !bytes.Equal(got[:], want) {
			t.Fatalf("%+v: record %q, want %q", p, got[:], want)
		}
	}
}
