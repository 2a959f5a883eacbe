package localrt_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/localrt"
)

// TestOutcomesOfABurstAreRecordedInBoundedCommits: the outcomes of many messages decided
// at once are recorded in commits of their own (never in the message's commit, which
// answered the POST), each holding at most a bounded batch, so that no outcome commit
// holds the writer for a whole burst; every message's outcome is recorded once.
func TestOutcomesOfABurstAreRecordedInBoundedCommits(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) { c.RecoveryWindow = 0 })
	sub := ts.subscribe("")
	const n = 100
	users := make([]string, n)
	for i := range users {
		users[i] = fmt.Sprintf("%q", fmt.Sprintf("away-%d", i))
	}
	before := ts.metrics()
	// One message to n users: n queue rows, each with an outcome of its own.
	ts.send(`{"UserIds":[` + strings.Join(users, ",") + `],"Body":"b"}`)
	waitFor(t, "every outcome", func() bool {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		k := 0
		for _, env := range sub.got {
			if env.DetailType == events.DetailMessageUndeliverable {
				k++
			}
		}
		return k >= n
	})
	for i := range n {
		if got := sub.of(events.DetailMessageUndeliverable, fmt.Sprintf("away-%d", i)); len(got) != 1 {
			t.Fatalf("away-%d has %d MessageUndeliverable, want 1", i, len(got))
		}
	}
	after := ts.metrics()
	commits := after["wspresence_store_commit_batch_size_count"] - before["wspresence_store_commit_batch_size_count"]
	requests := after["wspresence_store_commit_batch_size_sum"] - before["wspresence_store_commit_batch_size_sum"]
	// One commit for the request's 100 messages, then the outcomes: at most 64 a commit.
	if commits < 3 || requests < 3 {
		t.Fatalf("the enqueue and %d outcomes took %v commits of %v requests, want the enqueue's and at least two of outcomes", n, commits, requests)
	}
}
