// Package publisher is the outbox relay of the AWS runtime: a handler of the view table's
// stream that publishes the transitions each write of a user item recorded in its outbox
// (UserOnline, UserOffline), at least once and with their stable event ids. A decision and
// its publication are therefore one durable write: a PutEvents failure fails the record,
// and the stream delivers it again until it is published. A Handler is safe for
// concurrent use if its Publisher is.
package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/emf"
)

// Publisher publishes events; publishing the same event id again must be harmless.
type Publisher interface {
	Publish(ctx context.Context, evs ...events.Published) error
}

// Handler handles the view table's stream batches.
type Handler struct {
	Publisher Publisher
	Logger    *slog.Logger
	// Metrics, if set, receives one EMF record per batch: TransitionsPublished and
	// RecordsFailed.
	Metrics *emf.Logger
}

// ErrUndecodable is wrapped by Outbox for an outbox that is not one this runtime wrote.
var ErrUndecodable = errors.New("undecodable outbox")

// Outbox returns the transitions a user item's new image recorded (none for an item
// written without any, or a record with no new image).
func Outbox(img map[string]lambdaevents.DynamoDBAttributeValue) ([]events.Published, error) {
	v, ok := img["outbox"]
	if !ok {
		return nil, nil
	}
	if v.DataType() != lambdaevents.DataTypeList {
		return nil, fmt.Errorf("%w: outbox is not a list", ErrUndecodable)
	}
	list := v.List()
	out := make([]events.Published, 0, len(list))
	for i, entry := range list {
		if entry.DataType() != lambdaevents.DataTypeMap {
			return nil, fmt.Errorf("%w: outbox[%d] is not a map", ErrUndecodable, i)
		}
		m := entry.Map()
		t, d := m["t"], m["d"]
		if t.DataType() != lambdaevents.DataTypeString || d.DataType() != lambdaevents.DataTypeString {
			return nil, fmt.Errorf("%w: outbox[%d] lacks its type or detail", ErrUndecodable, i)
		}
		var id struct {
			EventID string `json:"eventId"`
		}
		if err := json.Unmarshal([]byte(d.String()), &id); err != nil || id.EventID == "" {
			return nil, fmt.Errorf("%w: outbox[%d]: a detail without an eventId", ErrUndecodable, i)
		}
		out = append(out, events.Stored{Type: events.DetailType(t.String()), EventID: id.EventID, Detail: json.RawMessage(d.String())})
	}
	return out, nil
}

// Handle publishes the outbox of every record, and reports the records whose publication
// failed (and those after them: a stream shard's records are published in order).
func (h *Handler) Handle(ctx context.Context, ev lambdaevents.DynamoDBEvent) (lambdaevents.DynamoDBEventResponse, error) {
	resp := lambdaevents.DynamoDBEventResponse{BatchItemFailures: []lambdaevents.DynamoDBBatchItemFailure{}}
	published := 0
	for _, rec := range ev.Records {
		if rec.EventName == string(lambdaevents.DynamoDBOperationTypeRemove) {
			continue
		}
		evs, err := Outbox(rec.Change.NewImage)
		if err == nil && len(evs) > 0 {
			err = h.Publisher.Publish(ctx, evs...)
		}
		if err != nil {
			log := h.Logger.With("sequenceNumber", rec.Change.SequenceNumber, "eventId", rec.EventID)
			if errors.Is(err, ErrUndecodable) {
				log.ErrorContext(ctx, "undecodable outbox", "err", err)
			} else {
				log.WarnContext(ctx, "publication failed, will be retried", "err", err)
			}
			// Lambda retries from the first failed record of the batch, in order.
			resp.BatchItemFailures = append(resp.BatchItemFailures, lambdaevents.DynamoDBBatchItemFailure{ItemIdentifier: rec.Change.SequenceNumber})
			break
		}
		published += len(evs)
	}
	_ = h.Metrics.Emit(map[string]string{"Function": "publisher"},
		emf.Metric{Name: "TransitionsPublished", Value: float64(published), Unit: emf.Count},
		emf.Metric{Name: "RecordsFailed", Value: float64(len(resp.BatchItemFailures)), Unit: emf.Count})
	return resp, nil
}
