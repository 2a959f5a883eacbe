package projector_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/emf"
	"github.com/wspresence/wspresence/internal/lambda/projector"
	"github.com/wspresence/wspresence/internal/lambdatest"
	"github.com/wspresence/wspresence/internal/presence"
)

// fakeView answers Apply from a function.
type fakeView func(events.ConnectionEvent) (presence.Effects, error)

func (fakeView) FlagGrace(context.Context, string) error { return nil }

func (f fakeView) Apply(_ context.Context, e events.ConnectionEvent) (presence.Effects, error) {
	return f(e)
}

type sink struct {
	graces []string
}

func (s *sink) StartGrace(_ context.Context, userID string, since time.Time) error {
	s.graces = append(s.graces, userID+"@"+since.Format(time.RFC3339Nano))
	return nil
}

func load(t *testing.T) lambdaevents.DynamoDBEvent {
	var ev lambdaevents.DynamoDBEvent
	lambdatest.Load(t, "dynamodb-stream.json", nil, &ev)
	return ev
}

func TestDecodesRealRecords(t *testing.T) {
	ev := load(t)
	open, err := projector.Decode(ev.Records[0].Change.NewImage)
	want := events.Opened("1234", "PXEyXdxwoAMCJzw=", time.Date(2026, 11, 26, 10, 0, 0, 123000000, time.UTC), "203.0.113.10", "wscat/6.0")
	if err != nil || open != want {
		t.Fatalf("Decode = %+v, %v; want %+v", open, err, want)
	}
	closed, err := projector.Decode(ev.Records[1].Change.NewImage)
	if err != nil || closed.Type != events.TypeConnectionClosed || closed.Reason != events.ReasonClient {
		t.Fatalf("Decode = %+v, %v", closed, err)
	}
	for name, img := range map[string]map[string]lambdaevents.DynamoDBAttributeValue{
		"empty":       {},
		"number at":   {"at": lambdaevents.NewNumberAttribute("1")},
		"bad type":    {"type": lambdaevents.NewStringAttribute("Nope"), "userId": lambdaevents.NewStringAttribute("u"), "connectionId": lambdaevents.NewStringAttribute("c"), "at": lambdaevents.NewStringAttribute("2026-01-01T00:00:00Z")},
		"key differs": {"pk": lambdaevents.NewStringAttribute("ConnectionOpened#other"), "type": lambdaevents.NewStringAttribute("ConnectionOpened"), "userId": lambdaevents.NewStringAttribute("u"), "connectionId": lambdaevents.NewStringAttribute("c"), "at": lambdaevents.NewStringAttribute("2026-01-01T00:00:00Z")},
	} {
		if _, err := projector.Decode(img); !errors.Is(err, projector.ErrUndecodable) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestHandlerStartsGraceAndReportsFailures(t *testing.T) {
	ev := load(t)
	at := time.Date(2026, 11, 26, 10, 5, 0, 456000000, time.UTC)
	calls := 0
	view := fakeView(func(e events.ConnectionEvent) (presence.Effects, error) {
		calls++
		switch {
		case calls == 3:
			return presence.Effects{}, errors.New("throttled")
		case e.Type == events.TypeConnectionOpened:
			return presence.Effects{Publish: []events.Published{events.NewUserOnline(e.UserID, e.ConnectionID, e.At)}}, nil
		default:
			return presence.Effects{GraceStarted: true}, nil
		}
	})
	s := &sink{}
	var emfOut bytes.Buffer
	h := &projector.Handler{View: view, Grace: s, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Metrics: emf.New(&emfOut, "wspresence"), Now: func() time.Time { return at.Add(time.Second) }}
	// A MODIFY record is not an event: skipped.
	modify := ev.Records[0]
	modify.EventName = "MODIFY"
	ev.Records = append(ev.Records, modify, ev.Records[0])
	resp, err := h.Handle(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.graces) != 1 || s.graces[0] != "1234@"+at.Format(time.RFC3339Nano) {
		t.Fatalf("graces %v", s.graces)
	}
	if len(resp.BatchItemFailures) != 1 || resp.BatchItemFailures[0].ItemIdentifier != ev.Records[0].Change.SequenceNumber || calls != 3 {
		t.Fatalf("failures %+v after %d applies", resp.BatchItemFailures, calls)
	}
	var rec map[string]any
	if err := json.Unmarshal(emfOut.Bytes(), &rec); err != nil {
		t.Fatalf("EMF output %q: %v", emfOut.String(), err)
	}
	// The oldest applied event (the open, 5 min 1.333 s before the clock) sets the lag.
	if rec["EventsApplied"] != 2.0 || rec["TransitionsRecorded"] != 1.0 || rec["RecordsFailed"] != 1.0 || rec["ProjectorLag"] != 301333.0 {
		t.Fatalf("EMF record %v", rec)
	}
}
