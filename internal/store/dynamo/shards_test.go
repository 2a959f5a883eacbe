package dynamo_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/store/dynamo"
)

// applyAll folds evs with a few writers at once.
func applyAll(t *testing.T, st *dynamo.Store, evs []events.ConnectionEvent) {
	t.Helper()
	var wg sync.WaitGroup
	work := make(chan events.ConnectionEvent)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range work {
				if _, err := st.Apply(context.Background(), e); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	for _, e := range evs {
		work <- e
	}
	close(work)
	wg.Wait()
}

// TestOnlineListAcrossShards: 1,500 online users spread over the online index's shards,
// listed 200 at a time while users go offline between pages (ahead of the cursor and
// behind it): every user online throughout is listed exactly once, in id order, and no
// user is listed after going offline.
func TestOnlineListAcrossShards(t *testing.T) {
	r := newRig(t)
	r.store.OnlineShards = 7
	ctx := context.Background()
	const users = 1500
	var opens []events.ConnectionEvent
	for i := range users {
		opens = append(opens, events.Opened(fmt.Sprintf("user-%05d", i), fmt.Sprintf("c%d=", i), ts(i%60), "", ""))
	}
	applyAll(t, r.store, opens)
	offline := map[string]bool{}
	seen := map[string]int{}
	after, pages := "", 0
	for {
		page, err := r.store.OnlineUsers(ctx, after, 200)
		if err != nil {
			t.Fatal(err)
		}
		for i, u := range page {
			seen[u.UserID]++
			if offline[u.UserID] {
				t.Fatalf("%s listed after going offline", u.UserID)
			}
			if u.Connections != 1 || u.LastActivity.IsZero() {
				t.Fatalf("listed %+v", u)
			}
			if (i > 0 && page[i-1].UserID >= u.UserID) || u.UserID <= after {
				t.Fatalf("page out of order after %q: %v", after, page)
			}
		}
		if len(page) < 200 {
			break
		}
		after = page[len(page)-1].UserID
		pages++
		// Between pages, one user behind the cursor and three ahead of it go offline.
		var closes []events.ConnectionEvent
		for _, k := range []int{pages*200 - 5, pages*200 + 3, pages*200 + 77, pages*200 + 150} {
			if k < users {
				id := fmt.Sprintf("user-%05d", k)
				offline[id] = true
				closes = append(closes, events.Closed(id, fmt.Sprintf("c%d=", k), ts(100), events.ReasonClient))
			}
		}
		applyAll(t, r.store, closes)
	}
	if pages < 5 {
		t.Fatalf("%d pages: the list was not paged", pages)
	}
	for i := range users {
		id := fmt.Sprintf("user-%05d", i)
		if n := seen[id]; n > 1 || (n == 0 && !offline[id]) {
			t.Fatalf("%s listed %d times (offline: %v)", id, n, offline[id])
		}
	}
}

// TestNoIndexKeyTakesMoreThanItsShare: over 1,000 users connecting and disconnecting
// (and, for the repair index, each flagged for a lost grace timer), the writes to each
// index key (counted from the items written, as DynamoDB writes an
// index entry when an item enters it, leaves it or changes its key or projection) are
// spread so that no key of the online index takes more than 1.5/N of them, nor any key of
// the repair index more than 1.5/16.
func TestNoIndexKeyTakesMoreThanItsShare(t *testing.T) {
	r := newRig(t)
	const shards = 10
	r.store.OnlineShards = shards
	var opens, closes []events.ConnectionEvent
	for i := range 1000 {
		u := fmt.Sprintf("u%d", i)
		opens = append(opens, events.Opened(u, fmt.Sprintf("k%d=", i), ts(i%100), "", ""))
		closes = append(closes, events.Closed(u, fmt.Sprintf("k%d=", i), ts(200+i%100), events.ReasonClient))
	}
	applyAll(t, r.store, opens)
	applyAll(t, r.store, closes)
	// Only failures write the repair index: flag every user's grace period as if its
	// timer could not be started.
	for _, e := range closes {
		if err := r.store.FlagGrace(context.Background(), e.UserID); err != nil {
			t.Fatal(err)
		}
	}
	online, repair := map[string]int{}, map[string]int{}
	prev := map[string]map[string]lambdaevents.DynamoDBAttributeValue{}
	for _, rec := range r.view.Next() {
		img := rec.Change.NewImage
		user := img["pk"].String()
		old := prev[user]
		prev[user] = img
		countIndexWrite(online, old, img, "online", "live", "lastActivity")
		countIndexWrite(repair, old, img, "rs", "due")
	}
	check := func(name string, counts map[string]int, n int) {
		total, most := 0, 0
		for _, c := range counts {
			total += c
			most = max(most, c)
		}
		if total == 0 || len(counts) > n {
			t.Fatalf("%s index: %d writes over %d keys", name, total, len(counts))
		}
		if share := float64(most) / float64(total); share > 1.5/float64(n) {
			t.Fatalf("%s index: a key took %.1f%% of %d writes, more than 1.5/%d (%v)", name, 100*share, total, n, counts)
		}
		t.Logf("%s index: %d writes over %d keys, the busiest %.1f%% (1/N = %.1f%%)", name, total, len(counts), 100*float64(most)/float64(total), 100/float64(n))
	}
	check("online", online, shards)
	check("repair", repair, dynamo.RepairShards)
}

// countIndexWrite adds the index writes of one item write to counts, by index key: the
// entry the item leaves (old key) and the one it enters or rewrites (new key).
func countIndexWrite(counts map[string]int, old, cur map[string]lambdaevents.DynamoDBAttributeValue, key string, projected ...string) {
	val := func(img map[string]lambdaevents.DynamoDBAttributeValue, name string) string {
		v, ok := img[name]
		if !ok {
			return ""
		}
		switch v.DataType() {
		case lambdaevents.DataTypeString:
			return v.String()
		case lambdaevents.DataTypeNumber:
			return v.Number()
		case lambdaevents.DataTypeStringSet:
			return fmt.Sprint(v.StringSet())
		}
		return "?"
	}
	oldKey, newKey := val(old, key), val(cur, key)
	changed := oldKey != newKey
	for _, p := range projected {
		changed = changed || val(old, p) != val(cur, p)
	}
	if !changed {
		return
	}
	if oldKey != "" && oldKey != newKey {
		counts[oldKey]++ // the old entry is deleted
	}
	if newKey != "" {
		counts[newKey]++
	}
}
