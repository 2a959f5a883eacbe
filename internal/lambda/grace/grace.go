// Package grace is the end of an offline grace period on the AWS runtime: the projector
// sends each period's timer to a queue, delayed to the period's deadline (package
// sqsdelay), and this handler consumes it: it runs the core's decision
// (presence.State.ExpireGrace) on the user's state and records the UserOffline it decides
// in the same conditional write (the item's outbox, published from the table's stream).
// A second delivery of the same timer, or the timer of a period the user already ended by
// reconnecting, changes nothing. The decision is taken at the period's deadline (the time
// of the close that began it plus the grace period), never at the clock of the run, so a
// late run, a redelivery and the reconciler's repair of a lost timer all decide alike.
// The deadline is the one of the grace period the function is configured with: a timer
// sent under a shorter period (a redeploy raised it while timers were queued) arrives
// early, finds the period still pending and sends itself again, delayed to the new
// deadline, so the period still ends. A Handler is safe for concurrent use if its ports
// are.
package grace

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"

	"github.com/wspresence/wspresence/internal/presence"
)

// View ends a grace period and reads a user's state (package dynamo's Store).
type View interface {
	ExpireGrace(ctx context.Context, userID string, since, now time.Time) (presence.Effects, error)
	State(ctx context.Context, userID string) (presence.State, error)
}

// Timers sends a grace period's timer again, delayed to its deadline under the configured
// period (package sqsdelay's Starter).
type Timers interface {
	StartGrace(ctx context.Context, userID string, since time.Time) error
}

// Input is the timer's message: the user, the start of the period (Unix nanoseconds, as a
// string: JSON numbers lose precision past 2^53) and its length.
type Input struct {
	UserID       string `json:"userId"`
	OfflineSince string `json:"offlineSince"`
	GraceSeconds int    `json:"graceSeconds"`
}

// Result says what the timer decided.
type Result struct {
	Announced bool `json:"announced"`
}

// MaxGraceSeconds bounds the grace period: the timer is a message delayed by the period,
// and SQS delays a message 15 minutes at most. The template refuses more at deploy time
// and the functions at start.
const MaxGraceSeconds = 900

// Handler ends grace periods.
type Handler struct {
	View View
	// Grace is the configured grace period, which sets each period's deadline; when zero,
	// the timer's own length does.
	Grace time.Duration
	// Timers, if set, sends again a timer that arrived before its period's deadline.
	Timers Timers
	// Now is the clock (time.Now when nil).
	Now    func() time.Time
	Logger *slog.Logger
}

// Handle runs the timer of one grace period at its deadline.
func (h *Handler) Handle(ctx context.Context, in Input) (Result, error) {
	ns, err := strconv.ParseInt(in.OfflineSince, 10, 64)
	if err != nil || in.UserID == "" || in.GraceSeconds < 0 || in.GraceSeconds > MaxGraceSeconds {
		return Result{}, fmt.Errorf("grace input %+v: want a userId, offlineSince in Unix nanoseconds and graceSeconds from 0 to %d", in, MaxGraceSeconds)
	}
	since := time.Unix(0, ns).UTC()
	deadline := since.Add(time.Duration(in.GraceSeconds) * time.Second)
	if h.Grace > 0 {
		deadline = since.Add(h.Grace)
	}
	if h.Timers != nil && h.now().Before(deadline) {
		return Result{}, h.rearm(ctx, in.UserID, since)
	}
	eff, err := h.View.ExpireGrace(ctx, in.UserID, since, deadline)
	if err != nil {
		return Result{}, fmt.Errorf("expire grace of %s: %w", in.UserID, err)
	}
	h.Logger.InfoContext(ctx, "grace period ended", "userId", in.UserID, "offlineSince", since, "announced", len(eff.Publish) > 0)
	return Result{Announced: len(eff.Publish) > 0}, nil
}

// rearm sends again the timer of a period that is still pending before its deadline
// (the grace period was raised after the timer was sent).
func (h *Handler) rearm(ctx context.Context, userID string, since time.Time) error {
	st, err := h.View.State(ctx, userID)
	if err != nil {
		return fmt.Errorf("read %s for an early timer: %w", userID, err)
	}
	if u := st.User; !u.GracePending() || !u.OfflineSince.Equal(since) {
		return nil // the period already ended (a reconnect, or its decision)
	}
	if err := h.Timers.StartGrace(ctx, userID, since); err != nil {
		return fmt.Errorf("send the timer of %s again: %w", userID, err)
	}
	h.Logger.InfoContext(ctx, "early grace timer sent again", "userId", userID, "offlineSince", since)
	return nil
}

func (h *Handler) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

// HandleQueue runs the timers of a batch of the queue and reports the ones that failed,
// so the queue delivers them again (and, past its maximum receives, moves them to its
// dead-letter queue, whose alarm the operations guide covers; the reconciler ends the
// period anyway once it is overdue).
func (h *Handler) HandleQueue(ctx context.Context, ev lambdaevents.SQSEvent) (lambdaevents.SQSEventResponse, error) {
	resp := lambdaevents.SQSEventResponse{BatchItemFailures: []lambdaevents.SQSBatchItemFailure{}}
	for _, rec := range ev.Records {
		var in Input
		err := json.Unmarshal([]byte(rec.Body), &in)
		if err == nil {
			_, err = h.Handle(ctx, in)
		}
		if err != nil {
			h.Logger.WarnContext(ctx, "grace timer failed", "messageId", rec.MessageId, "err", err)
			resp.BatchItemFailures = append(resp.BatchItemFailures, lambdaevents.SQSBatchItemFailure{ItemIdentifier: rec.MessageId})
		}
	}
	return resp, nil
}
