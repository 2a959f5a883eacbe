package publisher_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/emf"
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

type stuck struct{ ids map[string][]string }

func (m *stuck) Stick(_ context.Context, userID string, evs ...events.Published) error {
	for _, e := range evs {
		m.ids[userID] = append(m.ids[userID], e.ID())
	}
	return nil
}

type recorded struct {
	ev      events.Published
	version int
	stuck   bool
}

// outboxImage is the new image of user u's item at version v holding the given entries.
func outboxImage(t *testing.T, v int, entries ...recorded) map[string]lambdaevents.DynamoDBAttributeValue {
	m := map[string]lambdaevents.DynamoDBAttributeValue{}
	for i, e := range entries {
		st, err := events.Store(e.ev)
		if err != nil {
			t.Fatal(err)
		}
		attrs := map[string]lambdaevents.DynamoDBAttributeValue{
			"t": lambdaevents.NewStringAttribute(string(st.Type)), "d": lambdaevents.NewStringAttribute(string(st.Detail)),
			"v": lambdaevents.NewNumberAttribute(strconv.Itoa(e.version)), "a": lambdaevents.NewNumberAttribute("1"),
			"n": lambdaevents.NewNumberAttribute(strconv.Itoa(i))}
		if e.stuck {
			attrs["x"] = lambdaevents.NewBooleanAttribute(true)
		}
		m[st.EventID] = lambdaevents.NewMapAttribute(attrs)
	}
	img := map[string]lambdaevents.DynamoDBAttributeValue{"pk": lambdaevents.NewStringAttribute("u"),
		"sk": lambdaevents.NewStringAttribute("#USER"), "v": lambdaevents.NewNumberAttribute(strconv.Itoa(v))}
	if len(m) > 0 {
		img["outbox"] = lambdaevents.NewMapAttribute(m)
	}
	return img
}

func record(seq string, img map[string]lambdaevents.DynamoDBAttributeValue) lambdaevents.DynamoDBEventRecord {
	return lambdaevents.DynamoDBEventRecord{EventName: "MODIFY", Change: lambdaevents.DynamoDBStreamRecord{SequenceNumber: seq, NewImage: img}}
}

// The relay publishes what each record's write recorded (not the stuck entries, the
// reconciler's), stops at a failed record (the stream retries from it, in order) after
// keeping its transitions in the item, and skips an undecodable outbox, counting it, so
// later records of its shard are published.
func TestRelay(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	on := events.NewUserOnline("u", "c1", at)
	off := events.NewUserOffline("u", at.Add(time.Second), at)
	s := &sink{fail: 1}
	m := &stuck{ids: map[string][]string{}}
	var metrics bytes.Buffer
	h := &publisher.Handler{Publisher: s, Sticker: m, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: emf.New(&metrics, "test")}
	batch := lambdaevents.DynamoDBEvent{Records: []lambdaevents.DynamoDBEventRecord{
		record("1", outboxImage(t, 1)), record("2", outboxImage(t, 2, recorded{on, 2, false})),
		record("3", outboxImage(t, 3, recorded{on, 3, true}, recorded{off, 3, false})),
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
	if want := []string{on.ID(), off.ID()}; !reflect.DeepEqual(m.ids["u"], want) {
		t.Fatalf("kept %v for the reconciler, want those of the failed record and the ones after it %v", m.ids["u"], want)
	}

	bad := outboxImage(t, 4)
	bad["outbox"] = lambdaevents.NewListAttribute([]lambdaevents.DynamoDBAttributeValue{lambdaevents.NewStringAttribute("x")})
	later := events.NewUserOnline("u", "c2", at.Add(time.Minute))
	s.got = nil
	metrics.Reset()
	resp, _ = h.Handle(context.Background(), lambdaevents.DynamoDBEvent{Records: []lambdaevents.DynamoDBEventRecord{
		record("9", bad), record("10", outboxImage(t, 5, recorded{later, 5, false}))}})
	if len(resp.BatchItemFailures) != 0 || len(s.got) != 1 || s.got[0].ID() != later.ID() {
		t.Fatalf("undecodable outbox: %+v, published %v", resp, s.got)
	}
	if !strings.Contains(metrics.String(), `"RecordsUndecodable":1`) {
		t.Fatalf("the skipped record is not counted: %s", metrics.String())
	}
	if _, err := publisher.Outbox(bad); !errors.Is(err, publisher.ErrUndecodable) {
		t.Fatalf("Outbox: %v", err)
	}

	// One write's transitions go out in the order it recorded them, whatever their ids.
	first, second := events.NewUserOffline("u", at.Add(time.Hour), at), events.NewUserOnline("u", "c3", at.Add(2*time.Hour))
	if first.ID() < second.ID() {
		first, second = events.NewUserOffline("u", at.Add(3*time.Hour), at), events.NewUserOnline("u", "c4", at.Add(4*time.Hour))
	}
	if first.ID() < second.ID() {
		t.Fatal("the test needs a pair of ids in reverse order")
	}
	s.got = nil
	h.Handle(context.Background(), lambdaevents.DynamoDBEvent{Records: []lambdaevents.DynamoDBEventRecord{
		record("11", outboxImage(t, 6, recorded{first, 6, false}, recorded{second, 6, false}))}})
	if len(s.got) != 2 || s.got[0].ID() != first.ID() || s.got[1].ID() != second.ID() {
		t.Fatalf("published %v, want %s then %s", s.got, first.ID(), second.ID())
	}
}
