package sqlite

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestOnQueuedGetsEachCommitsMessagesInOneSlice: each commit hands OnQueued exactly the
// messages it made durable, none of an earlier commit's, in a slice the writer reuses
// from one commit to the next rather than one allocated per commit.
func TestOnQueuedGetsEachCommitsMessagesInOneSlice(t *testing.T) {
	ctx := context.Background()
	var got [][]string
	var first *QueuedMessage
	reused := true
	s, err := Open(ctx, filepath.Join(t.TempDir(), "s.db"), Options{
		OnQueued: func(ms []QueuedMessage) {
			var ids []string
			for _, m := range ms {
				ids = append(ids, m.MessageID)
			}
			got = append(got, ids)
			if first == nil {
				first = &ms[:1][0]
			} else if &ms[0] != first {
				reused = false
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	msg := func(id string) QueuedMessage {
		return QueuedMessage{MessageID: id, UserID: "u-" + id, Body: "x", EnqueuedAt: time.Now()}
	}
	// One caller at a time: each Enqueue is a commit of its own.
	for _, ids := range [][]string{{"a", "b"}, {"c"}, {"d", "e"}} {
		var msgs []QueuedMessage
		for _, id := range ids {
			msgs = append(msgs, msg(id))
		}
		if err := s.Enqueue(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
	}
	want := [][]string{{"a", "b"}, {"c"}, {"d", "e"}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Fatalf("OnQueued got %v, want %v", got, want)
	}
	if !reused {
		t.Fatal("a commit handed OnQueued a slice of its own: the writer's slice was not reused")
	}
}
