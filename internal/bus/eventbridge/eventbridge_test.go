package eventbridge_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	awseventbridge "github.com/aws/aws-sdk-go-v2/service/eventbridge"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/awsfake"
	"github.com/wspresence/wspresence/internal/bus/eventbridge"
	"github.com/wspresence/wspresence/internal/failure"
	"github.com/wspresence/wspresence/internal/schematest"
	"github.com/wspresence/wspresence/schemas"
)

type entry struct {
	EventBusName, Source, DetailType, Detail string
}

type putEvents struct{ Entries []entry }

func publisher(srv *awsfake.Server) *eventbridge.Publisher {
	p := eventbridge.New(awseventbridge.NewFromConfig(srv.Config()), "wspresence-bus")
	p.Backoff = time.Millisecond
	return p
}

func someEvents(n int) []events.Published {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	out := make([]events.Published, n)
	for i := range out {
		out[i] = events.NewMessageDelivered(fmt.Sprintf("m%d", i), "u", 1, at)
	}
	return out
}

func ok(req awsfake.Request) awsfake.Response {
	var in putEvents
	_ = json.Unmarshal(req.Body, &in)
	res := make([]map[string]string, len(in.Entries))
	for i := range res {
		res[i] = map[string]string{"EventId": fmt.Sprintf("id-%d", i)}
	}
	return awsfake.JSON(http.StatusOK, map[string]any{"FailedEntryCount": 0, "Entries": res})
}

func TestBatchesOfTenWithExactEntries(t *testing.T) {
	srv := awsfake.New(t, ok)
	evs := someEvents(23)
	if err := publisher(srv).Publish(context.Background(), evs...); err != nil {
		t.Fatal(err)
	}
	reqs := srv.Requests()
	if len(reqs) != 3 {
		t.Fatalf("%d PutEvents calls, want 3", len(reqs))
	}
	sizes := []int{10, 10, 3}
	n := 0
	for i, r := range reqs {
		if r.Target != "AWSEvents.PutEvents" {
			t.Fatalf("target %q", r.Target)
		}
		var in putEvents
		r.Decode(t, &in)
		if len(in.Entries) != sizes[i] {
			t.Fatalf("call %d has %d entries, want %d", i, len(in.Entries), sizes[i])
		}
		for _, e := range in.Entries {
			if e.EventBusName != "wspresence-bus" || e.Source != "wspresence" || e.DetailType != "MessageDelivered" {
				t.Fatalf("entry %+v", e)
			}
			var d map[string]any
			if err := json.Unmarshal([]byte(e.Detail), &d); err != nil || d["eventId"] != evs[n].ID() {
				t.Fatalf("detail %s, want event id %s", e.Detail, evs[n].ID())
			}
			// The detail wrapped in the envelope AWS builds matches the published schema.
			env, _ := events.NewEnvelope(evs[n], "123456789012", "us-east-1", time.Now())
			env.Detail = json.RawMessage(e.Detail)
			data, _ := json.Marshal(env)
			schematest.Check(t, schemas.MessageDelivered, data)
			n++
		}
	}
}

func TestResendsOnlyFailedEntries(t *testing.T) {
	calls := 0
	var second putEvents
	srv := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		calls++
		if calls == 1 {
			return awsfake.JSON(http.StatusOK, map[string]any{"FailedEntryCount": 2, "Entries": []map[string]string{
				{"EventId": "a"}, {"ErrorCode": "ThrottlingException", "ErrorMessage": "slow down"}, {"EventId": "c"},
				{"ErrorCode": "InternalFailure", "ErrorMessage": "oops"}, {"EventId": "e"}}})
		}
		_ = json.Unmarshal(r.Body, &second)
		return ok(r)
	})
	evs := someEvents(5)
	if err := publisher(srv).Publish(context.Background(), evs...); err != nil {
		t.Fatal(err)
	}
	if calls != 2 || len(second.Entries) != 2 {
		t.Fatalf("%d calls, resent %d entries; want 2 calls resending 2", calls, len(second.Entries))
	}
	for i, want := range []events.Published{evs[1], evs[3]} {
		var d map[string]any
		_ = json.Unmarshal([]byte(second.Entries[i].Detail), &d)
		if d["eventId"] != want.ID() {
			t.Fatalf("resent %v, want %s", d["eventId"], want.ID())
		}
	}
}

func TestPersistentThrottlingIsReported(t *testing.T) {
	srv := awsfake.New(t, func(awsfake.Request) awsfake.Response {
		return awsfake.JSON(http.StatusOK, map[string]any{"FailedEntryCount": 1, "Entries": []map[string]string{
			{"ErrorCode": "ThrottlingException", "ErrorMessage": "slow down"}}})
	})
	p := publisher(srv)
	err := p.Publish(context.Background(), someEvents(1)...)
	if !errors.Is(err, failure.ErrThrottled) {
		t.Fatalf("err = %v, want ErrThrottled", err)
	}
	if n := len(srv.Requests()); n != p.Attempts {
		t.Fatalf("%d calls, want %d attempts", n, p.Attempts)
	}
}

func TestThrottledCallIsRetried(t *testing.T) {
	calls := 0
	srv := awsfake.New(t, func(r awsfake.Request) awsfake.Response {
		calls++
		if calls == 1 {
			return awsfake.Error(http.StatusBadRequest, "ThrottlingException", "Rate exceeded")
		}
		return ok(r)
	})
	if err := publisher(srv).Publish(context.Background(), someEvents(3)...); err != nil || calls != 2 {
		t.Fatalf("err %v after %d calls", err, calls)
	}
}
