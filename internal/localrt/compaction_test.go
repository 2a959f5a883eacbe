package localrt_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/wspresence/wspresence/internal/localrt"
)

// TestRoundsOfVisitorsLeaveNeitherImageNorStoreGrowing: two rounds of distinct users that
// each connect once and leave, every retention at one second and a restart after each
// round (visits in batches, each left to pass its retentions). With everyone offline the memory image holds no one (wspresence_image_users), the
// log, the outbox and the tombstones are pruned, the store grows over the second round by
// its new users' rows only (the pages the first round freed are reused), and a first-round
// user's last activity is still answered by GET /user/online.
//
// WSPRESENCE_VISITS sets the users of a round, all visiting at once (160 in four batches by
// default; docs/benchmarks.md has 20,000).
func TestRoundsOfVisitorsLeaveNeitherImageNorStoreGrowing(t *testing.T) {
	users, batches := 160, 4
	if n, err := strconv.Atoi(os.Getenv("WSPRESENCE_VISITS")); err == nil && n > 0 {
		users, batches = n, 1 // all at once, as a burst of visitors comes
	}
	dir := t.TempDir()
	tweak := func(c *localrt.Config) {
		c.OfflineGrace = 100 * time.Millisecond
		c.LogRetention, c.OutboxRetention, c.TombstoneRetention = time.Second, time.Second, time.Second
	}
	ctx := context.Background()
	var sizes []int64
	var firstActivity time.Time
	for round := 1; round <= 2; round++ {
		ts := startServer(t, dir, tweak)
		// The visits come in batches, each left to pass its retentions: the store's peak is
		// then what one batch writes, the same in both rounds.
		for batch := 0; batch < users; batch += users / batches {
			for i := batch; i < batch+users/batches; i++ {
				c := ts.dial(fmt.Sprintf("round%d-user-%04d", round, i))
				c.close(t)
			}
			waitWithin(t, time.Minute, "everyone offline and out of the image, the log, outbox and tombstones pruned", func() bool {
				m := ts.metrics()
				if m["wspresence_online_users"] != 0 || m["wspresence_image_users"] > 0 {
					return false
				}
				st := ts.srv.Store()
				log, err := st.Log(ctx)
				if err != nil || len(log) > 1 {
					return false
				}
				oldest, newest, err := st.PublishedRange(ctx)
				if err != nil || oldest <= newest {
					return false
				}
				v, err := st.Dump(ctx)
				return err == nil && len(v.Connections) == 0 && len(v.Users) == (round-1)*users+batch+users/batches
			})
		}
		if round == 1 {
			list, _ := ts.online("userIds=round1-user-0007")
			if len(list) != 1 || list[0].IsOnline || list[0].LastActivity.IsZero() {
				t.Fatalf("round 1: the user's status %+v, want offline with a last activity", list)
			}
			firstActivity = list[0].LastActivity
		}
		ts.stop()

		// The restart reads only the active users into the image.
		ts = startServer(t, dir, tweak)
		if n := ts.metrics()["wspresence_image_users"]; n > 0 {
			t.Fatalf("round %d: after the restart the image holds %v users, want none (everyone is offline)", round, n)
		}
		list, _ := ts.online("userIds=round1-user-0007")
		if len(list) != 1 || list[0].IsOnline || !list[0].LastActivity.Equal(firstActivity) {
			t.Fatalf("round %d: a round-1 user's status after the restart %+v, want offline, last active %s", round, list, firstActivity)
		}
		ts.stop()
		sizes = append(sizes, storeSize(t, dir))
	}
	perUser := float64(sizes[1]-sizes[0]) / float64(users)
	t.Logf("%d users a round: store after round 1: %d bytes, after round 2: %d bytes (%.2f times; %.0f bytes per new user)",
		users, sizes[0], sizes[1], float64(sizes[1])/float64(sizes[0]), perUser)
	// What a visit leaves is its user's row (about 100 bytes: the last activity stays
	// answerable), not its log records, events and connection rows (about 1.4 KB).
	if perUser > 200 {
		t.Fatalf("the store grew from %d to %d bytes over the second round of %d visits: %.0f bytes per new user, want at most 200 (its row)",
			sizes[0], sizes[1], users, perUser)
	}
}

// storeSize is the size of the store's file and its write-ahead log in dir.
func storeSize(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	for _, f := range []string{localrt.StoreFile, localrt.StoreFile + "-wal"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err == nil {
			n += st.Size()
		}
	}
	return n
}
