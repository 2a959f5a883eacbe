package dynamo_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
)

var base = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

func ts(s int) time.Time { return base.Add(time.Duration(s) * time.Second) }

// snapshot is what subscribers and readers can observe: the view and the published ids.
type snapshot struct {
	Users []presence.Status
	Live  map[string][]string
	IDs   []string
}

func (r *rig) snapshot(t *testing.T, users []string, published []events.Published) snapshot {
	t.Helper()
	st, err := r.store.Users(context.Background(), users)
	if err != nil {
		t.Fatal(err)
	}
	live := map[string][]string{}
	for _, u := range users {
		l, err := r.store.LiveConnections(context.Background(), u)
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(l)
		live[u] = l
	}
	seen := map[string]bool{}
	var ids []string
	for _, p := range published {
		if !seen[p.ID()] {
			seen[p.ID()] = true
			ids = append(ids, p.ID())
		}
	}
	sort.Strings(ids)
	return snapshot{Users: st, Live: live, IDs: ids}
}

// TestRedeliveryAndReordering: once a batch was delivered, delivering it again, in
// reverse, and interleaved with a concurrent redelivery of another changes neither the
// view nor the published events (only the same event ids again). And the view a batch
// folds to is the same whatever order it arrives in.
func TestRedeliveryAndReordering(t *testing.T) {
	ctx := context.Background()
	users := []string{"u1", "u2", "u3"}
	src := newRig(t)
	appendAll := func(evs ...events.ConnectionEvent) {
		if _, err := src.store.Append(ctx, evs...); err != nil {
			t.Fatal(err)
		}
	}
	appendAll(events.Opened("u1", "a", ts(0), "", ""), events.Opened("u1", "b", ts(1), "", ""),
		events.Opened("u2", "c", ts(2), "", ""), events.Closed("u1", "a", ts(3), events.ReasonClient),
		events.Activity("u2", "c", ts(4)))
	batchA := src.stream.Next(t)
	appendAll(events.Closed("u1", "b", ts(5), events.ReasonGone), events.Closed("u2", "c", ts(6), events.ReasonClient),
		events.Opened("u2", "d", ts(7), "", ""), events.Opened("u3", "e", ts(8), "", ""), events.Closed("u3", "e", ts(9), events.ReasonSwept))
	batchB := src.stream.Next(t)

	got := newRig(t)
	got.handle(t, batchA)
	got.handle(t, batchB)
	firstPub, firstGraces := got.take(t)
	want := got.snapshot(t, users, firstPub)
	if len(want.IDs) != 3 || len(firstGraces) != 2 { // UserOnline of u1, u2, u3; grace of u1 and u3
		t.Fatalf("first delivery published %v and started %v", kindsOf(firstPub), firstGraces)
	}

	got.handle(t, batchA)
	got.handle(t, reversed(batchA))
	var wg sync.WaitGroup
	for _, b := range [][]lambdaevents.DynamoDBEventRecord{batchB, reversed(batchB), batchA} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, err := got.handler.Handle(ctx, lambdaevents.DynamoDBEvent{Records: b}); err != nil || len(resp.BatchItemFailures) > 0 {
				t.Errorf("concurrent batch: %+v %v", resp, err)
			}
		}()
	}
	wg.Wait()
	againPub, againGraces := got.take(t)
	if have := got.snapshot(t, users, append(firstPub, againPub...)); !reflect.DeepEqual(want, have) {
		t.Fatalf("redelivery changed what is observable:\nwant %+v\ngot  %+v", want, have)
	}
	for _, g := range againGraces {
		if !slices.Contains(firstGraces, g) {
			t.Fatalf("redelivery started a new grace period %v", g)
		}
	}

	// The view does not depend on the order of first delivery.
	rev := newRig(t)
	rev.handle(t, reversed(batchB))
	rev.handle(t, reversed(batchA))
	revPub, _ := rev.take(t)
	if have := rev.snapshot(t, users, nil); !reflect.DeepEqual(want.Users, have.Users) || !reflect.DeepEqual(want.Live, have.Live) {
		t.Fatalf("reversed first delivery folds to another view:\nwant %+v\ngot  %+v", want, have)
	}
	// Whatever it announced alternates per user, starting online.
	seen := map[string]int{}
	for _, p := range revPub {
		if p.DetailType() != events.DetailUserOnline {
			t.Fatalf("projector published %s", p.DetailType())
		}
		u := userOf(p)
		if seen[u]++; seen[u] > 1 {
			t.Fatalf("two UserOnline for %s without UserOffline: %v", u, kindsOf(revPub))
		}
	}
}

// TestFailedPublicationIsRetried: a PutEvents failure fails the view record that carries
// the transition (and, in stream order, the ones after it); the stream's redelivery
// publishes the same events, ids included. Nothing is lost.
func TestFailedPublicationIsRetried(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	if _, err := r.store.Append(ctx, events.Opened("p", "p1", ts(0), "", ""), events.Opened("q", "q1", ts(1), "", "")); err != nil {
		t.Fatal(err)
	}
	if resp := r.handle(t, r.stream.Next(t)); len(resp.BatchItemFailures) != 0 {
		t.Fatalf("projector failures %+v", resp.BatchItemFailures)
	}
	recs := r.view.Next()
	if len(recs) != 2 {
		t.Fatalf("%d view records, want one write per user", len(recs))
	}
	r.rec.failNext = 1
	resp, err := r.publisher.Handle(ctx, lambdaevents.DynamoDBEvent{Records: recs})
	if err != nil || len(resp.BatchItemFailures) != 1 || resp.BatchItemFailures[0].ItemIdentifier != recs[0].Change.SequenceNumber {
		t.Fatalf("failures %+v, %v; want the first record", resp.BatchItemFailures, err)
	}
	if first, _ := r.rec.take(); len(first) != 0 {
		t.Fatalf("published %v past a failed record", kindsOf(first))
	}
	for range 2 { // the stream's retry, and a second redelivery
		if resp, _ := r.publisher.Handle(ctx, lambdaevents.DynamoDBEvent{Records: recs}); len(resp.BatchItemFailures) != 0 {
			t.Fatalf("retry failed: %+v", resp)
		}
	}
	retried, _ := r.rec.take()
	want := []string{events.NewUserOnline("p", "p1", ts(0)).ID(), events.NewUserOnline("q", "q1", ts(1)).ID()}
	var got []string
	for _, p := range retried {
		got = append(got, p.ID())
	}
	if !reflect.DeepEqual(got, append(want, want...)) {
		t.Fatalf("retries published %v, want %v twice", kindsOf(retried), want)
	}
}

// TestUndecodableRecordFailsAlone: a record that is not an event is reported, the rest of
// the batch is applied.
func TestUndecodableRecordFailsAlone(t *testing.T) {
	r := newRig(t)
	if _, err := r.store.Append(context.Background(), events.Opened("z", "z1", ts(0), "", "")); err != nil {
		t.Fatal(err)
	}
	recs := r.stream.Next(t)
	bad := recs[0]
	bad.Change.SequenceNumber = "bad"
	bad.Change.NewImage = map[string]lambdaevents.DynamoDBAttributeValue{"pk": lambdaevents.NewStringAttribute("x"), "at": lambdaevents.NewNumberAttribute("1")}
	resp := r.handle(t, append([]lambdaevents.DynamoDBEventRecord{bad}, recs...))
	if len(resp.BatchItemFailures) != 1 || resp.BatchItemFailures[0].ItemIdentifier != "bad" {
		t.Fatalf("failures %+v", resp.BatchItemFailures)
	}
	if l, _ := r.store.LiveConnections(context.Background(), "z"); len(l) != 1 {
		t.Fatalf("the good record was not applied: %v", l)
	}
}

func reversed(recs []lambdaevents.DynamoDBEventRecord) []lambdaevents.DynamoDBEventRecord {
	out := slices.Clone(recs)
	slices.Reverse(out)
	return out
}

func kindsOf(ps []events.Published) []string {
	var out []string
	for _, p := range ps {
		out = append(out, fmt.Sprintf("%s/%s", p.DetailType(), p.ID()))
	}
	return out
}

// take relays the outbox and returns what was published and the graces started.
func (r *rig) take(t *testing.T) ([]events.Published, []presence.Grace) {
	t.Helper()
	r.relay(t)
	return r.rec.take()
}

func userOf(p events.Published) string {
	var d struct {
		UserID string `json:"userId"`
	}
	b, _ := json.Marshal(p)
	_ = json.Unmarshal(b, &d)
	return d.UserID
}
