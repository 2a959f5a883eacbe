package publisher_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/lambda/publisher"
)

type sink struct {
	got  []events.Published
	fail int
}

func (s *sink) Publish(_ context.Context, evs ...events.Published) error {
	if s.fail > 0 {
		s.fail--
		return errors.New("PutEvents failed")
	}
	s.got = append(s.got, evs...)
	return nil
}

func outboxImage(t *testing.T, evs ...events.Published) map[string]lambdaevents.DynamoDBAttributeValue {
	var l []lambdaevents.DynamoDBAttributeValue
	for _, e := range evs {
		st, err := events.Store(e)
		if err != nil {
			t.Fatal(err)
		}
		l = append(l, lambdaevents.NewMapAttribute(map[string]lambdaevents.DynamoDBAttributeValue{
			"t": lambdaevents.NewStringAttribute(string(st.Type)), "d": lambdaevents.NewStringAttribute(string(st.Detail))}))
	}
	img := map[string]lambdaevents.DynamoDBAttributeValue{"pk": lambdaevents.NewStringAttribute("u"), "sk": lambdaevents.NewStringAttribute("#USER")}
	if l != nil {
		img["outbox"] = lambdaevents.NewListAttribute(l)
	}
	return img
}

func record(seq string, img map[string]lambdaevents.DynamoDBAttributeValue) lambdaevents.DynamoDBEventRecord {
	return lambdaevents.DynamoDBEventRecord{EventName: "MODIFY", Change: lambdaevents.DynamoDBStreamRecord{SequenceNumber: seq, NewImage: img}}
}

// The relay publishes each record's outbox exactly as recorded, stops at a failed record
// (the stream retries from it, in order), and reports an undecodable outbox.
func TestRelay(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	on := events.NewUserOnline("u", "c1", at)
	off := events.NewUserOffline("u", at.Add(time.Second), at)
	s := &sink{fail: 1}
	h := &publisher.Handler{Publisher: s, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	batch := lambdaevents.DynamoDBEvent{Records: []lambdaevents.DynamoDBEventRecord{
		record("1", outboxImage(t)), record("2", outboxImage(t, on)), record("3", outboxImage(t, off)),
	}}
	resp, err := h.Handle(context.Background(), batch)
	if err != nil || len(resp.BatchItemFailures) != 1 || resp.BatchItemFailures[0].ItemIdentifier != "2" || len(s.got) != 0 {
		t.Fatalf("first try: %+v %v, published %v", resp, err, s.got)
	}
	resp, _ = h.Handle(context.Background(), batch)
	if len(resp.BatchItemFailures) != 0 || len(s.got) != 2 || s.got[0].ID() != on.ID() || s.got[1].ID() != off.ID() ||
		s.got[1].DetailType() != events.DetailUserOffline {
		t.Fatalf("retry: %+v, published %v", resp, s.got)
	}
	bad := outboxImage(t)
	bad["outbox"] = lambdaevents.NewListAttribute([]lambdaevents.DynamoDBAttributeValue{lambdaevents.NewStringAttribute("x")})
	resp, _ = h.Handle(context.Background(), lambdaevents.DynamoDBEvent{Records: []lambdaevents.DynamoDBEventRecord{record("9", bad)}})
	if len(resp.BatchItemFailures) != 1 {
		t.Fatalf("undecodable outbox: %+v", resp)
	}
	if _, err := publisher.Outbox(bad); !errors.Is(err, publisher.ErrUndecodable) {
		t.Fatalf("Outbox: %v", err)
	}
}
