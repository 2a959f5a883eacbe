package grace_test

import (
	"context"

	"encoding/json"
	lambdaevents "github.com/aws/aws-lambda-go/events"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/grace/sqsdelay"
	"github.com/wspresence/wspresence/internal/lambda/grace"
	"github.com/wspresence/wspresence/internal/presence"
)

// view keeps one state and decides with the core, recording the decision time.
type view struct {
	state presence.State
	at    time.Time
}

func (v *view) State(context.Context, string) (presence.State, error) { return v.state, nil }

func (v *view) ExpireGrace(_ context.Context, userID string, since, now time.Time) (presence.Effects, error) {
	v.at = now
	s, eff := v.state.ExpireGrace(since, now, 5*time.Second)
	v.state = s
	return eff, nil
}

// The handler reads the input the starter writes, decides at the period's deadline
// (whatever its clock), and a second run decides nothing; a period past the bound of the
// timer is refused.
func TestGraceHandler(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 123, time.UTC)
	s := presence.NewState("u")
	s, _ = s.Apply(events.Opened("u", "c", t0, "", ""), 5*time.Second)
	s, _ = s.Apply(events.Closed("u", "c", t0.Add(time.Second), events.ReasonClient), 5*time.Second)
	v := &view{state: s}
	h := &grace.Handler{View: v, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	raw, _ := json.Marshal(sqsdelay.Input{UserID: "u", OfflineSince: "1767225601000000123", GraceSeconds: 5})
	var in grace.Input
	if err := json.Unmarshal(raw, &in); err != nil {
		t.Fatal(err)
	}
	res, err := h.Handle(context.Background(), in)
	if err != nil || !res.Announced || !v.at.Equal(t0.Add(6*time.Second)) {
		t.Fatalf("first run: %+v %v at %v", res, err, v.at)
	}
	if res, _ := h.Handle(context.Background(), in); res.Announced {
		t.Fatal("a second run announced again")
	}
	if _, err := h.Handle(context.Background(), grace.Input{UserID: "u", OfflineSince: "1", GraceSeconds: grace.MaxGraceSeconds + 1}); err == nil {
		t.Fatal("a grace period past the timer's bound was accepted")
	}
	if _, err := h.Handle(context.Background(), grace.Input{UserID: "u", OfflineSince: "soon"}); err == nil {
		t.Fatal("a malformed input was accepted")
	}
}

// The queue's batch: each timer runs; a message that is not a timer, or whose decision
// fails, is reported alone so the queue delivers it again.
func TestGraceQueue(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 123, time.UTC)
	s := presence.NewState("u")
	s, _ = s.Apply(events.Opened("u", "c", t0, "", ""), 5*time.Second)
	s, _ = s.Apply(events.Closed("u", "c", t0.Add(time.Second), events.ReasonClient), 5*time.Second)
	v := &view{state: s}
	h := &grace.Handler{View: v, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	good, _ := json.Marshal(sqsdelay.Input{UserID: "u", OfflineSince: "1767225601000000123", GraceSeconds: 5})
	resp, err := h.HandleQueue(context.Background(), lambdaevents.SQSEvent{Records: []lambdaevents.SQSMessage{
		{MessageId: "bad", Body: "{"}, {MessageId: "good", Body: string(good)}}})
	if err != nil || len(resp.BatchItemFailures) != 1 || resp.BatchItemFailures[0].ItemIdentifier != "bad" {
		t.Fatalf("%+v %v", resp, err)
	}
	if v.state.User.Announced != presence.AnnouncedOffline {
		t.Fatal("the good timer did not decide")
	}
}
