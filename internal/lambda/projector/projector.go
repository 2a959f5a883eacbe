// Package projector is the DynamoDB Streams handler of the event table on the AWS runtime:
// it decodes each new event and folds it into its user's state through the core (the
// store runs presence.State.Apply and writes the result, with the transitions it caused in
// the item's outbox, in one conditional write), then starts the grace state machine when
// the fold says a grace period began. It reports the records it could not process as batch
// item failures, so one bad record never fails the whole batch; every step is idempotent,
// so a retried record completes what its first attempt could not. Publishing is the
// outbox relay's (package publisher). A Handler is safe for concurrent use if its ports
// are.
package projector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/emf"
	"github.com/wspresence/wspresence/internal/presence"
)

// View folds one event into its user's state, records the transitions with the new state
// in one durable write, and returns the effects (package dynamo's Store). Folding an event
// again changes nothing, except that it reports again a grace period it started that is
// still pending. FlagGrace records that the pending grace period's timer could not be
// started, so the reconciler ends the period if no retry starts it.
type View interface {
	Apply(ctx context.Context, e events.ConnectionEvent) (presence.Effects, error)
	FlagGrace(ctx context.Context, userID string) error
}

// GraceStarter starts the offline grace timer of the period that began at since;
// starting the same period twice must be harmless.
type GraceStarter interface {
	StartGrace(ctx context.Context, userID string, since time.Time) error
}

// Handler handles DynamoDB stream batches.
type Handler struct {
	View   View
	Grace  GraceStarter
	Logger *slog.Logger
	// Metrics, if set, receives one EMF record per batch: EventsApplied,
	// TransitionsRecorded, RecordsFailed and ProjectorLag (the oldest event's age).
	Metrics *emf.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// ErrUndecodable is wrapped by Decode for a record that is not a connection event.
var ErrUndecodable = errors.New("undecodable stream record")

// Handle processes a batch and returns the sequence numbers of the records that failed.
func (h *Handler) Handle(ctx context.Context, ev lambdaevents.DynamoDBEvent) (lambdaevents.DynamoDBEventResponse, error) {
	resp := lambdaevents.DynamoDBEventResponse{BatchItemFailures: []lambdaevents.DynamoDBBatchItemFailure{}}
	var applied, published int
	var lag time.Duration
	now := time.Now
	if h.Now != nil {
		now = h.Now
	}
	for _, rec := range ev.Records {
		if rec.EventName != string(lambdaevents.DynamoDBOperationTypeInsert) {
			continue // the log is append-only: nothing else carries an event
		}
		n, at, err := h.process(ctx, rec)
		if err == nil {
			applied++
			published += n
			lag = max(lag, now().Sub(at))
		}
		if err != nil {
			log := h.Logger.With("sequenceNumber", rec.Change.SequenceNumber, "eventId", rec.EventID)
			if errors.Is(err, ErrUndecodable) {
				// Retries cannot fix it; reporting it lets the bounded retries end in the
				// stream's on-failure destination, where it can be inspected.
				log.ErrorContext(ctx, "undecodable record", "err", err)
			} else {
				log.WarnContext(ctx, "record failed, will be retried", "err", err)
			}
			resp.BatchItemFailures = append(resp.BatchItemFailures, lambdaevents.DynamoDBBatchItemFailure{ItemIdentifier: rec.Change.SequenceNumber})
		}
	}
	_ = h.Metrics.Emit(map[string]string{"Function": "projector"},
		emf.Metric{Name: "EventsApplied", Value: float64(applied), Unit: emf.Count},
		emf.Metric{Name: "TransitionsRecorded", Value: float64(published), Unit: emf.Count},
		emf.Metric{Name: "RecordsFailed", Value: float64(len(resp.BatchItemFailures)), Unit: emf.Count},
		emf.Metric{Name: "ProjectorLag", Value: float64(lag.Milliseconds()), Unit: emf.Milliseconds})
	return resp, nil
}

// process applies one record and returns the number of transitions it recorded and the
// event's time.
func (h *Handler) process(ctx context.Context, rec lambdaevents.DynamoDBEventRecord) (int, time.Time, error) {
	e, err := Decode(rec.Change.NewImage)
	if err != nil {
		return 0, time.Time{}, err
	}
	eff, err := h.View.Apply(ctx, e)
	if err != nil {
		return 0, e.At, fmt.Errorf("apply %s: %w", e.Key(), err)
	}
	if eff.GraceStarted {
		// The close emptied the live set at its own time: the period began at e.At.
		if err := h.Grace.StartGrace(ctx, e.UserID, e.At); err != nil {
			// The record is retried (the fold reports the period again); should every
			// retry fail, the flag leads the reconciler to it.
			if ferr := h.View.FlagGrace(ctx, e.UserID); ferr != nil {
				h.Logger.ErrorContext(ctx, "lost grace timer not flagged", "userId", e.UserID, "err", ferr)
			}
			return 0, e.At, fmt.Errorf("start grace after %s: %w", e.Key(), err)
		}
	}
	return len(eff.Publish), e.At, nil
}

func attr(img map[string]lambdaevents.DynamoDBAttributeValue, name string) string {
	v, ok := img[name]
	if !ok || v.DataType() != lambdaevents.DataTypeString {
		return ""
	}
	return v.String()
}

// Decode turns an event table item's stream image into the connection event it holds.
func Decode(img map[string]lambdaevents.DynamoDBAttributeValue) (events.ConnectionEvent, error) {
	at, err := time.Parse(time.RFC3339Nano, attr(img, "at"))
	if err != nil {
		return events.ConnectionEvent{}, fmt.Errorf("%w: at: %w", ErrUndecodable, err)
	}
	e := events.ConnectionEvent{
		Type:         events.Type(attr(img, "type")),
		UserID:       attr(img, "userId"),
		ConnectionID: attr(img, "connectionId"),
		At:           at.UTC(),
		SourceIP:     attr(img, "sourceIp"),
		UserAgent:    attr(img, "userAgent"),
		Reason:       events.CloseReason(attr(img, "reason")),
	}
	if err := e.Validate(); err != nil {
		return e, fmt.Errorf("%w: %w", ErrUndecodable, err)
	}
	if key := attr(img, "pk"); key != "" && key != e.Key() {
		return e, fmt.Errorf("%w: key %q does not match the event (%q)", ErrUndecodable, key, e.Key())
	}
	return e, nil
}
