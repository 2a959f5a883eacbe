// Package sender is the SQS handler of the AWS runtime: for each message
// {"UserId","Body"} (camelCase, MessageId and UserIds accepted too) it delivers the body
// to every live connection of each recipient (package delivery) and publishes the outcome
// events. It returns only the failed message ids, so SQS retries those alone and moves a
// poison message to the dead-letter queue after its maximum receives. A message is posted
// once: when its record must be retried after some posts succeeded (the outcome events
// could not be published, or another recipient failed), the outcomes of those posts are
// recorded, and the retry publishes them instead of posting again. A Handler is safe for
// concurrent use if its ports are.
package sender

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/delivery"
	"github.com/wspresence/wspresence/internal/emf"
)

// Deliverer delivers one message to one user (package delivery's Deliverer).
type Deliverer interface {
	Deliver(ctx context.Context, messageID, userID, body string) (delivery.Result, error)
}

// Publisher publishes outcome events.
type Publisher interface {
	Publish(ctx context.Context, evs ...events.Published) error
}

// Receipts keeps the outcomes of the posts of a queue message whose record is retried,
// by user (package dynamo's Store).
type Receipts interface {
	Posted(ctx context.Context, queueMessageID string) (map[string]events.Published, error)
	RecordPosted(ctx context.Context, queueMessageID string, outcomes map[string]events.Published) error
}

// Handler handles SQS batches.
type Handler struct {
	Deliverer Deliverer
	Publisher Publisher
	// Receipts, if set, makes a retried record publish the outcomes of the posts that
	// succeeded instead of posting again.
	Receipts Receipts
	// MaxReceives is the queue's maxReceiveCount: on the last receive, a message whose
	// posts keep failing is reported MessageUndeliverable{failed} instead of retried.
	MaxReceives int
	// Concurrency bounds the messages handled at once (default 8).
	Concurrency int
	Logger      *slog.Logger
	// Metrics, if set, receives one EMF record per batch: MessagesDelivered,
	// MessagesUndeliverable, MessagesHeld (for a recovering user, their outcome to come),
	// MessagesFailed, ConnectionsGone and DeliveryLatency (the
	// slowest message's time from SQS's SentTimestamp to its outcome).
	Metrics *emf.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Recovery, if set, delivers to the users with a recovery stream and handles the
	// held messages' timers (records from Recovery.TimerQueueARN).
	Recovery *Recovery
}

// tally counts a batch's outcomes.
type tally struct {
	mu                             sync.Mutex
	delivered, undeliverable, gone int
	held                           int
	latency                        time.Duration
}

// Handle processes a batch and reports the messages that must be retried.
func (h *Handler) Handle(ctx context.Context, ev lambdaevents.SQSEvent) (lambdaevents.SQSEventResponse, error) {
	resp := lambdaevents.SQSEventResponse{BatchItemFailures: []lambdaevents.SQSBatchItemFailure{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var t tally
	limit := h.Concurrency
	if limit <= 0 {
		limit = 8
	}
	sem := make(chan struct{}, limit)
	for _, rec := range ev.Records {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			process := h.process
			if h.Recovery != nil && h.Recovery.TimerQueueARN != "" && rec.EventSourceARN == h.Recovery.TimerQueueARN {
				process = func(ctx context.Context, rec lambdaevents.SQSMessage, _ *tally) error { return h.expire(ctx, rec) }
			}
			if err := process(ctx, rec, &t); err != nil {
				h.Logger.WarnContext(ctx, "message failed", "messageId", rec.MessageId, "err", err)
				mu.Lock()
				resp.BatchItemFailures = append(resp.BatchItemFailures, lambdaevents.SQSBatchItemFailure{ItemIdentifier: rec.MessageId})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	_ = h.Metrics.Emit(map[string]string{"Function": "sender"},
		emf.Metric{Name: "MessagesDelivered", Value: float64(t.delivered), Unit: emf.Count},
		emf.Metric{Name: "MessagesUndeliverable", Value: float64(t.undeliverable), Unit: emf.Count},
		emf.Metric{Name: "MessagesHeld", Value: float64(t.held), Unit: emf.Count},
		emf.Metric{Name: "MessagesFailed", Value: float64(len(resp.BatchItemFailures)), Unit: emf.Count},
		emf.Metric{Name: "ConnectionsGone", Value: float64(t.gone), Unit: emf.Count},
		emf.Metric{Name: "DeliveryLatency", Value: float64(t.latency.Milliseconds()), Unit: emf.Milliseconds})
	return resp, nil
}

func (h *Handler) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

// record counts one user's outcome of a message sent at sent (zero if unknown).
func (t *tally) record(res delivery.Result, sent, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gone += len(res.Gone)
	switch res.Outcome.(type) {
	case events.MessageDelivered:
		t.delivered++
	case events.MessageUndeliverable:
		t.undeliverable++
	case nil:
		t.held++
	}
	if !sent.IsZero() {
		t.latency = max(t.latency, now.Sub(sent))
	}
}

// lastReceive reports whether this receive of rec is its last attempt (the delivery policy,
// with the queue's maxReceiveCount as the attempts).
func (h *Handler) lastReceive(rec lambdaevents.SQSMessage) bool {
	n, err := strconv.Atoi(rec.Attributes["ApproximateReceiveCount"])
	return err == nil && delivery.LastAttempt(n, h.MaxReceives)
}

// deliver delivers one task: through the recovery streams for a user with one, else as
// the Deliverer does.
func (h *Handler) deliver(ctx context.Context, task delivery.Task, rec lambdaevents.SQSMessage) (delivery.Result, error) {
	if h.Recovery != nil {
		n, _ := strconv.Atoi(rec.Attributes["ApproximateReceiveCount"])
		res, ok, err := h.deliverRecovering(ctx, task, n > 1, h.lastReceive(rec))
		if ok || err != nil {
			return res, err
		}
	}
	return h.Deliverer.Deliver(ctx, task.MessageID, task.UserID, task.Body)
}

func (h *Handler) process(ctx context.Context, rec lambdaevents.SQSMessage, t *tally) error {
	msg, err := events.DecodeMessage([]byte(rec.Body))
	if err != nil {
		// Reported failed so that, after the queue's maximum receives, it lands in the DLQ.
		return fmt.Errorf("poison message: %w", err)
	}
	tasks := delivery.Plan(msg, rec.MessageId)
	id := tasks[0].MessageID
	var sent time.Time
	if ms, err := strconv.ParseInt(rec.Attributes["SentTimestamp"], 10, 64); err == nil {
		sent = time.UnixMilli(ms)
	}
	var posted map[string]events.Published
	if h.Receipts != nil {
		if posted, err = h.Receipts.Posted(ctx, rec.MessageId); err != nil {
			return fmt.Errorf("read what %s was posted to: %w", id, err)
		}
	}
	var outcomes []events.Published
	var results []delivery.Result
	var errs []error
	done := map[string]events.Published{}
	for _, task := range tasks {
		if o, ok := posted[task.UserID]; ok {
			// Posted by an earlier receive: only its outcome is left to publish.
			outcomes = append(outcomes, o)
			done[task.UserID] = o
			continue
		}
		res, err := h.deliver(ctx, task, rec)
		switch {
		case err == nil, errors.Is(err, delivery.ErrDeliveryFailed) && h.lastReceive(rec):
			results = append(results, res)
			if res.Outcome == nil {
				// Held: its outcome comes from the replay or from its timer.
				continue
			}
			outcomes = append(outcomes, res.Outcome)
			done[task.UserID] = res.Outcome
		default:
			errs = append(errs, err)
		}
	}
	if len(outcomes) > 0 {
		if err := h.Publisher.Publish(ctx, outcomes...); err != nil {
			errs = append(errs, fmt.Errorf("publish outcomes of %s: %w", id, err))
		}
	}
	if len(errs) > 0 && len(done) > 0 && h.Receipts != nil {
		// The record is retried: keep what was posted so the retry does not post it again.
		if err := h.Receipts.RecordPosted(ctx, rec.MessageId, done); err != nil {
			errs = append(errs, fmt.Errorf("record what %s was posted to: %w", id, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	now := h.now()
	for _, res := range results {
		t.record(res, sent, now)
	}
	return nil
}
