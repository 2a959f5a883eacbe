// Package grace is the end of an offline grace period on the AWS runtime: the offline
// grace state machine waits the grace period, then invokes this handler, which runs the
// core's decision (presence.State.ExpireGrace) on the user's state and records the
// UserOffline it decides in the same conditional write (the item's outbox, published from
// the table's stream). A second run of the same period, or the timer of a period the user
// already ended by reconnecting, changes nothing. The decision is taken at the period's
// deadline (the time of the close that began it plus the grace period), never at the
// clock of the run, so a late run, a run repeated by a retry and the reconciler's repair
// of a lost timer all decide alike. A Handler is safe for concurrent use if its View is.
package grace

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/wspresence/wspresence/internal/presence"
)

// View ends a grace period (package dynamo's Store).
type View interface {
	ExpireGrace(ctx context.Context, userID string, since, now time.Time) (presence.Effects, error)
}

// Input is what the state machine passes: the user, the start of the period (Unix
// nanoseconds, as a string: JSON numbers lose precision past 2^53) and its length.
type Input struct {
	UserID       string `json:"userId"`
	OfflineSince string `json:"offlineSince"`
	GraceSeconds int    `json:"graceSeconds"`
}

// Result says what the timer decided.
type Result struct {
	Announced bool `json:"announced"`
}

// MaxGraceSeconds bounds the grace period: the timer's Express execution (at most 300 s)
// waits the period, then invokes this function with its retries (at most 45 s with their
// timeouts, statemachines/offline-grace.asl.json); 240 s leaves the rest as a margin. The
// template refuses more at deploy time and the functions at start.
const MaxGraceSeconds = 240

// Handler ends grace periods.
type Handler struct {
	View   View
	Logger *slog.Logger
}

// Handle runs the timer of one grace period at its deadline. The state machine invokes it
// once the period is over.
func (h *Handler) Handle(ctx context.Context, in Input) (Result, error) {
	ns, err := strconv.ParseInt(in.OfflineSince, 10, 64)
	if err != nil || in.UserID == "" || in.GraceSeconds < 0 || in.GraceSeconds > MaxGraceSeconds {
		return Result{}, fmt.Errorf("grace input %+v: want a userId, offlineSince in Unix nanoseconds and graceSeconds from 0 to %d", in, MaxGraceSeconds)
	}
	since := time.Unix(0, ns).UTC()
	deadline := since.Add(time.Duration(in.GraceSeconds) * time.Second)
	eff, err := h.View.ExpireGrace(ctx, in.UserID, since, deadline)
	if err != nil {
		return Result{}, fmt.Errorf("expire grace of %s: %w", in.UserID, err)
	}
	h.Logger.InfoContext(ctx, "grace period ended", "userId", in.UserID, "offlineSince", since, "announced", len(eff.Publish) > 0)
	return Result{Announced: len(eff.Publish) > 0}, nil
}
