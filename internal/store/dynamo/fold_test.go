package dynamo_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"sort"
	"sync"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	awseventbridge "github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/bus/eventbridge"
	"github.com/wspresence/wspresence/internal/lambda/grace"
	"github.com/wspresence/wspresence/internal/lambda/publisher"
	"github.com/wspresence/wspresence/internal/presence"
	"github.com/wspresence/wspresence/internal/store/dynamo"
	"pgregory.net/rapid"
)

// TestFoldMatchesTheCore drives the DynamoDB store with random logs delivered as the event
// table's stream may deliver them: in random batches and orders, with records delivered
// twice, then redelivered again in concurrent batches, with the grace timers run twice.
// Whatever the interleaving, the view and the transitions published through the outbox
// (ids included, in order per user) are those of presence.State.Apply folding the log in
// the order its records were first delivered, the grace timers deciding as
// presence.State.ExpireGrace does, and the redeliveries change nothing.
func TestFoldMatchesTheCore(t *testing.T) {
	r := newRig(t)
	round := 0
	rapid.Check(t, func(rt *rapid.T) {
		ctx := context.Background()
		round++
		users := []string{fmt.Sprintf("u1-%d", round), fmt.Sprintf("u2-%d", round)}
		var log []events.ConnectionEvent
		for i := range rapid.IntRange(1, 10).Draw(rt, "events") {
			user := rapid.SampledFrom(users).Draw(rt, "user")
			conn := fmt.Sprintf("%s-c%d", user, rapid.IntRange(0, 2).Draw(rt, "conn"))
			at := base.Add(time.Duration(rapid.IntRange(0, 20).Draw(rt, "at")) * time.Second).Add(time.Duration(i))
			switch rapid.IntRange(0, 2).Draw(rt, "kind") {
			case 0:
				log = append(log, events.Opened(user, conn, at, "", ""))
			case 1:
				log = append(log, events.Closed(user, conn, at, events.ReasonClient))
			default:
				log = append(log, events.Activity(user, conn, at))
			}
		}
		if _, err := r.store.Append(ctx, log...); err != nil {
			rt.Fatal(err)
		}
		recs := r.stream.Next(t)
		order := rapid.Permutation(recs).Draw(rt, "delivery")
		for _, i := range rapid.SliceOfN(rapid.IntRange(0, len(recs)-1), 0, 3).Draw(rt, "duplicates") {
			order = append(order, recs[i])
		}

		// The oracle: the core folding the log in first-delivery order.
		want := map[string]presence.State{}
		var wantPub []events.Published
		var graces []presence.Grace
		seen := map[string]bool{}
		for _, rec := range order {
			key := rec.Change.Keys["pk"].String()
			if seen[key] {
				continue
			}
			seen[key] = true
			e := eventOf(rt, rec)
			s, ok := want[e.UserID]
			if !ok {
				s = presence.NewState(e.UserID)
			}
			s, eff := s.Apply(e, testGrace)
			want[e.UserID] = s
			wantPub = append(wantPub, eff.Publish...)
			if eff.GraceStarted {
				graces = append(graces, presence.Grace{UserID: e.UserID, Since: e.At})
			}
		}

		// First delivery: sequential batches of random size.
		for len(order) > 0 {
			n := rapid.IntRange(1, len(order)).Draw(rt, "batch")
			if resp := r.handle(t, order[:n]); len(resp.BatchItemFailures) > 0 {
				rt.Fatalf("failures %+v", resp.BatchItemFailures)
			}
			order = order[n:]
		}
		firstPub, started := r.take(t)
		if !sameGraces(started, graces) {
			rt.Fatalf("graces started %v, the core started %v", started, graces)
		}
		// The timers, each run twice.
		for _, g := range graces {
			for range 2 {
				if _, err := r.store.ExpireGrace(ctx, g.UserID, g.Since, g.Since.Add(testGrace)); err != nil {
					rt.Fatal(err)
				}
			}
			s, eff := want[g.UserID].ExpireGrace(g.Since, g.Since.Add(testGrace), testGrace)
			want[g.UserID] = s
			wantPub = append(wantPub, eff.Publish...)
		}
		// Redelivery: concurrent batches of everything again, one of them reversed.
		var wg sync.WaitGroup
		for _, b := range [][]lambdaevents.DynamoDBEventRecord{recs, reversed(recs), recs} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if resp, err := r.handler.Handle(ctx, lambdaevents.DynamoDBEvent{Records: b}); err != nil || len(resp.BatchItemFailures) > 0 {
					t.Errorf("redelivered batch: %+v %v", resp, err)
				}
			}()
		}
		wg.Wait()
		againPub, _ := r.take(t)
		published := append(firstPub, againPub...)

		for _, u := range users {
			got, err := r.store.State(ctx, u)
			if err != nil {
				rt.Fatal(err)
			}
			w, ok := want[u]
			if !ok {
				w = presence.NewState(u)
			}
			if !reflect.DeepEqual(got.Live(), w.Live()) || got.User.Live != w.User.Live || !got.User.LastActivity.Equal(w.User.LastActivity) ||
				got.User.Announced != w.User.Announced || !got.User.OfflineSince.Equal(w.User.OfflineSince) {
				rt.Fatalf("%s: the store holds %+v live %v, the core %+v live %v", u, got.User, got.Live(), w.User, w.Live())
			}
		}
		if g, w := perUser(published), perUser(wantPub); !reflect.DeepEqual(g, w) {
			rt.Fatalf("published %v, the core decided %v", g, w)
		}
	})
}

func eventOf(t *rapid.T, rec lambdaevents.DynamoDBEventRecord) events.ConnectionEvent {
	img := rec.Change.NewImage
	at, err := time.Parse(time.RFC3339Nano, img["at"].String())
	if err != nil {
		t.Fatal(err)
	}
	e := events.ConnectionEvent{Type: events.Type(img["type"].String()), UserID: img["userId"].String(),
		ConnectionID: img["connectionId"].String(), At: at.UTC()}
	if v, ok := img["reason"]; ok {
		e.Reason = events.CloseReason(v.String())
	}
	return e
}

// sameGraces reports whether a and b start the same grace periods (a redelivered close
// starts its period again, which is harmless: the start is idempotent).
func sameGraces(a, b []presence.Grace) bool {
	key := func(gs []presence.Grace) []string {
		set := map[string]bool{}
		for _, g := range gs {
			set[g.UserID+"@"+g.Since.UTC().Format(time.RFC3339Nano)] = true
		}
		out := []string{}
		for k := range set {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	return reflect.DeepEqual(key(a), key(b))
}

// perUser lists each user's published transitions, as type/id in order, without the
// repeats an at-least-once relay may add.
func perUser(ps []events.Published) map[string][]string {
	out := map[string][]string{}
	seen := map[string]bool{}
	for _, p := range ps {
		if seen[p.ID()] {
			continue
		}
		seen[p.ID()] = true
		u := userOf(p)
		out[u] = append(out[u], fmt.Sprintf("%s/%s", p.DetailType(), p.ID()))
	}
	return out
}

// TestGraceWithPutEventsFailing: the offline grace path end to end on the real adapters
// (DynamoDB on dynalite, EventBridge's PutEvents on a wire fake): the grace function
// decides UserOffline and records it in the outbox; PutEvents fails, the relay's record
// fails and the stream delivers it again, PutEvents recovers; a second execution of the
// same period decides nothing. UserOffline arrives exactly once by id.
func TestGraceWithPutEventsFailing(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	var mu sync.Mutex
	down := true
	var received []string
	bus := awsfake.New(t, func(req awsfake.Request) awsfake.Response {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return awsfake.Error(http.StatusInternalServerError, "InternalException", "unavailable")
		}
		var in struct {
			Entries []struct{ DetailType, Detail string }
		}
		_ = json.Unmarshal(req.Body, &in)
		res := make([]map[string]string, len(in.Entries))
		for i, e := range in.Entries {
			var d struct{ EventID string }
			_ = json.Unmarshal([]byte(e.Detail), &d)
			received = append(received, e.DetailType+"/"+d.EventID)
			res[i] = map[string]string{"EventId": "e"}
		}
		return awsfake.JSON(http.StatusOK, map[string]any{"FailedEntryCount": 0, "Entries": res})
	})
	pub := eventbridge.New(awseventbridge.NewFromConfig(bus.Config()), "bus")
	pub.Backoff = time.Millisecond
	relay := &publisher.Handler{Publisher: pub, Logger: r.publisher.Logger}

	if _, err := r.store.Append(ctx, events.Opened("g", "g1", ts(0), "", ""), events.Closed("g", "g1", ts(1), events.ReasonClient)); err != nil {
		t.Fatal(err)
	}
	recs := r.stream.Next(t)
	sort.Slice(recs, func(i, j int) bool {
		return recs[i].Change.NewImage["type"].String() > recs[j].Change.NewImage["type"].String()
	}) // open first
	r.handle(t, recs)
	_, graces := r.rec.take()
	if len(graces) != 1 {
		t.Fatalf("graces %v", graces)
	}
	g := graces[0]
	timer := &grace.Handler{View: r.store, Logger: r.publisher.Logger}
	in := grace.Input{UserID: g.UserID, OfflineSince: fmt.Sprint(g.Since.UnixNano()), GraceSeconds: int(testGrace / time.Second)}
	if res, err := timer.Handle(ctx, in); err != nil || !res.Announced {
		t.Fatalf("grace: %+v %v", res, err)
	}
	if res, err := timer.Handle(ctx, in); err != nil || res.Announced {
		t.Fatalf("a second execution of the period: %+v %v", res, err)
	}

	view := r.view.Next() // the open's write (UserOnline), the expiry's (UserOffline)
	for attempt := 0; ; attempt++ {
		resp, err := relay.Handle(ctx, lambdaevents.DynamoDBEvent{Records: view})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.BatchItemFailures) == 0 {
			break
		}
		if attempt == 2 {
			mu.Lock()
			down = false // PutEvents recovers
			mu.Unlock()
		}
		if attempt > 5 {
			t.Fatal("the relay never got through")
		}
	}
	// The stream may deliver the batch once more: the subscriber sees the same ids.
	if resp, _ := relay.Handle(ctx, lambdaevents.DynamoDBEvent{Records: view}); len(resp.BatchItemFailures) > 0 {
		t.Fatal("redelivery failed")
	}
	offline := events.NewUserOffline("g", ts(1), ts(1)).ID()
	ids := map[string]int{}
	for _, r := range received {
		ids[r]++
	}
	var offlines []string
	for id := range ids {
		if len(id) > 11 && id[:11] == "UserOffline" {
			offlines = append(offlines, id)
		}
	}
	if len(offlines) != 1 || offlines[0] != "UserOffline/"+offline {
		t.Fatalf("UserOffline ids received %v (all: %v), want exactly %s", offlines, received, offline)
	}
}

// TestItemStaysBounded: a client in a reconnect loop (2,500 connect/disconnect cycles of
// one user, twelve times the tombstone cap) leaves a user item under 32 KB, and still
// announces correctly.
func TestItemStaysBounded(t *testing.T) {
	t.Parallel()
	// Three times the cap: the item reaches it after DefaultMaxTombstones cycles and must
	// then stay the size it was (the same ids' and times' lengths every cycle).
	cycles := 3 * dynamo.DefaultMaxTombstones
	r := newRig(t)
	ctx := context.Background()
	atCap, maxSize := 0, 0
	for i := range cycles {
		at := base.Add(time.Duration(i) * 100 * time.Millisecond)
		id := fmt.Sprintf("reconnect-%06d", i)
		for _, e := range []events.ConnectionEvent{events.Opened("loop", id, at, "", ""), events.Closed("loop", id, at.Add(50*time.Millisecond), events.ReasonExpired)} {
			if _, err := r.store.Apply(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		// The relay is not under test: the user item's writes are not kept.
		r.view.Next()
		if i%100 == 99 {
			size := itemSize(t, r.store)
			maxSize = max(maxSize, size)
			if size > 32*1024 {
				t.Fatalf("after %d cycles the user item is %d bytes", i+1, size)
			}
			switch {
			case i+1 == 3*dynamo.DefaultMaxTombstones/2:
				atCap = size
			case i+1 > 3*dynamo.DefaultMaxTombstones/2 && size > atCap+64:
				t.Fatalf("after %d cycles the user item is %d bytes, %d at the cap: it grows past the cap", i+1, size, atCap)
			}
		}
	}
	s, err := r.store.State(ctx, "loop")
	if err != nil || len(s.Conns) > dynamo.DefaultMaxTombstones || s.User.Announced != presence.AnnouncedOnline {
		t.Fatalf("state after the loop: %d rows, announced %s, %v", len(s.Conns), s.User.Announced, err)
	}
	// A late open of a long-forgotten connection does not bring it back.
	if _, err := r.store.Apply(ctx, events.Opened("loop", "reconnect-000001", base, "", "")); err != nil {
		t.Fatal(err)
	}
	if live, _ := r.store.LiveConnections(ctx, "loop"); len(live) != 0 {
		t.Fatalf("a forgotten connection came back: %v", live)
	}
	t.Logf("largest user item after %d cycles: %d bytes (%d at the cap)", cycles, maxSize, atCap)
}

// itemSize approximates DynamoDB's item size: attribute names and values, as stored.
func itemSize(t *testing.T, st *dynamo.Store) int {
	t.Helper()
	s, err := st.State(context.Background(), "loop")
	if err != nil {
		t.Fatal(err)
	}
	size, err := dynamo.ItemSize(s)
	if err != nil {
		t.Fatal(err)
	}
	return size
}
