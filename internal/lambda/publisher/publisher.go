// Package publisher is the outbox relay of the AWS runtime: a handler of the view table's
// stream (filtered to the writes that recorded transitions) that publishes the
// transitions each write of a user item recorded (UserOnline, UserOffline), at least once
// and with their stable event ids. A decision and its publication are one durable write:
// the stream record carries the transitions to the relay; when PutEvents fails, the relay
// first moves them into the user item as stuck (Sticker), so they outlive the record
// (bounded retries, the stream's 24 hours), then fails the record; the reconciler
// publishes what is stuck past the outbox age, with the same ids. A record whose outbox
// cannot be read is logged, counted and skipped: it never holds its shard. A Handler is
// safe for concurrent use if its ports are.
package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/emf"
)

// Publisher publishes events; publishing the same event id again must be harmless.
type Publisher interface {
	Publish(ctx context.Context, evs ...events.Published) error
}

// Sticker keeps transitions that could not be published in the user's item (package
// dynamo's Store).
type Sticker interface {
	Stick(ctx context.Context, userID string, evs ...events.Published) error
}

// Prober acknowledges the reconciler's probe (package dynamo's Store).
type Prober interface {
	AckProbe(ctx context.Context, sent time.Time) error
}

// ProbeKey is the key of the reconciler's probe item in the view table (package dynamo):
// each reconciler run writes it so that its record reaches the relay, which acknowledges
// it; a probe left unacknowledged measures how long the relay has not run.
const ProbeKey = "#PROBE"

// Handler handles the view table's stream batches.
type Handler struct {
	Publisher Publisher
	// Sticker, if set, keeps what could not be published for the reconciler.
	Sticker Sticker
	// Probes, if set, acknowledges the reconciler's probes.
	Probes Prober
	Logger *slog.Logger
	// Metrics, if set, receives one EMF record per batch: TransitionsPublished,
	// RecordsFailed and RecordsUndecodable.
	Metrics *emf.Logger
}

// ErrUndecodable is wrapped by Outbox for an outbox that is not one this runtime wrote.
var ErrUndecodable = errors.New("undecodable outbox")

// Outbox returns the transitions a user item's write recorded, as its new image holds
// them: the outbox entries whose version is the item's and that are not stuck (stuck ones
// are the reconciler's). None for an item written without any, or a record with no new
// image.
func Outbox(img map[string]lambdaevents.DynamoDBAttributeValue) ([]events.Published, error) {
	v, ok := img["outbox"]
	if !ok {
		return nil, nil
	}
	if v.DataType() != lambdaevents.DataTypeMap {
		return nil, fmt.Errorf("%w: outbox is not a map", ErrUndecodable)
	}
	version, err := number(img["v"])
	if err != nil {
		return nil, fmt.Errorf("%w: version: %w", ErrUndecodable, err)
	}
	type fresh struct {
		ev events.Stored
		n  int64
	}
	var out []fresh
	for id, entry := range v.Map() {
		if entry.DataType() != lambdaevents.DataTypeMap {
			return nil, fmt.Errorf("%w: outbox[%q] is not a map", ErrUndecodable, id)
		}
		m := entry.Map()
		t, d := m["t"], m["d"]
		if t.DataType() != lambdaevents.DataTypeString || d.DataType() != lambdaevents.DataTypeString {
			return nil, fmt.Errorf("%w: outbox[%q] lacks its type or detail", ErrUndecodable, id)
		}
		ev, err := number(m["v"])
		if err != nil {
			return nil, fmt.Errorf("%w: outbox[%q] version: %w", ErrUndecodable, id, err)
		}
		var detail struct {
			EventID string `json:"eventId"`
		}
		if err := json.Unmarshal([]byte(d.String()), &detail); err != nil || detail.EventID != id {
			return nil, fmt.Errorf("%w: outbox[%q]: a detail without that eventId", ErrUndecodable, id)
		}
		if x, ok := m["x"]; ev != version || (ok && x.DataType() == lambdaevents.DataTypeBoolean && x.Boolean()) {
			continue
		}
		// n is the entry's place in the list the write recorded (the map has no order).
		n, err := number(m["n"])
		if err != nil {
			return nil, fmt.Errorf("%w: outbox[%q] place: %w", ErrUndecodable, id, err)
		}
		out = append(out, fresh{ev: events.Stored{Type: events.DetailType(t.String()), EventID: id, Detail: json.RawMessage(d.String())}, n: n})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].n < out[j].n })
	evs := make([]events.Published, len(out))
	for i, f := range out {
		evs[i] = f.ev
	}
	return evs, nil
}

func number(v lambdaevents.DynamoDBAttributeValue) (int64, error) {
	if v.DataType() != lambdaevents.DataTypeNumber {
		return 0, errors.New("not a number")
	}
	return strconv.ParseInt(v.Number(), 10, 64)
}

// Handle publishes the transitions of every record and marks them published. It reports
// the records whose publication failed (and those after them: a stream shard's records
// are published in order); a record that cannot be read is skipped.
func (h *Handler) Handle(ctx context.Context, ev lambdaevents.DynamoDBEvent) (lambdaevents.DynamoDBEventResponse, error) {
	resp := lambdaevents.DynamoDBEventResponse{BatchItemFailures: []lambdaevents.DynamoDBBatchItemFailure{}}
	published, undecodable := 0, 0
	for i, rec := range ev.Records {
		if rec.EventName == string(lambdaevents.DynamoDBOperationTypeRemove) {
			continue
		}
		log := h.Logger.With("sequenceNumber", rec.Change.SequenceNumber, "eventId", rec.EventID)
		if pk := rec.Change.NewImage["pk"]; pk.DataType() == lambdaevents.DataTypeString && pk.String() == ProbeKey {
			h.ack(ctx, log, rec.Change.NewImage["sent"])
			continue
		}
		evs, err := Outbox(rec.Change.NewImage)
		if err != nil {
			// Retrying cannot fix it, and failing it would hold every later record of the
			// shard: count it and go on (an alarm watches the count).
			undecodable++
			log.ErrorContext(ctx, "undecodable outbox skipped", "err", err)
			continue
		}
		if len(evs) == 0 {
			continue
		}
		if err := h.Publisher.Publish(ctx, evs...); err != nil {
			log.WarnContext(ctx, "publication failed, will be retried", "err", err)
			// Keep this record's transitions and those of the records after it in their
			// items: the stream retries from here, and may run out of retries or expire.
			h.stick(ctx, ev.Records[i:])
			// Lambda retries from the first failed record of the batch, in order.
			resp.BatchItemFailures = append(resp.BatchItemFailures, lambdaevents.DynamoDBBatchItemFailure{ItemIdentifier: rec.Change.SequenceNumber})
			break
		}
		published += len(evs)
	}
	emit := h.Metrics.Emit
	if undecodable > 0 || len(resp.BatchItemFailures) > 0 {
		emit = h.Metrics.Alert // the alarmed figures reach CloudWatch at any log level
	}
	_ = emit(map[string]string{"Function": "publisher"},
		emf.Metric{Name: "TransitionsPublished", Value: float64(published), Unit: emf.Count},
		emf.Metric{Name: "RecordsFailed", Value: float64(len(resp.BatchItemFailures)), Unit: emf.Count},
		emf.Metric{Name: "RecordsUndecodable", Value: float64(undecodable), Unit: emf.Count})
	return resp, nil
}

// ack acknowledges the probe written at sent (Unix ns). A failure is logged: the probe
// then reports the relay late, which the operations guide covers.
func (h *Handler) ack(ctx context.Context, log *slog.Logger, sent lambdaevents.DynamoDBAttributeValue) {
	ns, err := number(sent)
	if err != nil || h.Probes == nil {
		return
	}
	if err := h.Probes.AckProbe(ctx, time.Unix(0, ns).UTC()); err != nil {
		log.WarnContext(ctx, "probe not acknowledged", "err", err)
	}
}

// stick keeps the transitions of recs in their user items, for the reconciler.
func (h *Handler) stick(ctx context.Context, recs []lambdaevents.DynamoDBEventRecord) {
	if h.Sticker == nil {
		return
	}
	for _, rec := range recs {
		evs, err := Outbox(rec.Change.NewImage)
		user := rec.Change.NewImage["pk"]
		if err != nil || len(evs) == 0 || user.DataType() != lambdaevents.DataTypeString {
			continue
		}
		if err := h.Sticker.Stick(ctx, user.String(), evs...); err != nil {
			h.Logger.ErrorContext(ctx, "unpublished transitions not kept, the record is retried", "sequenceNumber", rec.Change.SequenceNumber, "err", err)
		}
	}
}
