// Package sweeper is the reconciler of the AWS runtime, run on a schedule: it re-derives
// what the view must hold for the users its repair index lists as due and folds the
// difference through the core, with the same versioned writes as the projector:
//
//   - a connection live in the view but unseen for StaleAfter: if the log holds its close
//     (the close's stream record was lost), that close is folded, never appended again;
//     otherwise API Gateway is asked, and a connection it reports gone is closed
//     (ConnectionClosed{swept}, appended and folded); one it reports alive is confirmed;
//   - a grace period pending past its deadline plus a margin (its timer was lost, or its
//     run failed) is ended by presence at the period's deadline, so its UserOffline is the
//     one the timer would have recorded, with the same id;
//   - a transition left unpublished past the outbox age (the stream's relay gave up, or
//     the records expired) is published with its id, then marked published;
//   - tombstones past their retention are forgotten.
//
// Its work per run is bounded (Limit users, earliest due first, within the invocation's
// time) and resumable: a repaired user leaves the index or moves later in it, so the next
// run takes up what this one left. A repair that fails is logged, counted and returned as
// the invocation's error, which the function's error alarm watches. A Handler is safe
// for concurrent use if its ports are.
package sweeper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/emf"
	"github.com/wspresence/wspresence/internal/presence"
)

// View is the view the reconciler repairs (package dynamo's Store): the repair index, the
// user's record, and the versioned writes of the fold.
type View interface {
	Due(ctx context.Context, now time.Time, limit int) ([]string, error)
	Pending(ctx context.Context, userID string) (presence.Record, error)
	Apply(ctx context.Context, e events.ConnectionEvent) (presence.Effects, error)
	Close(ctx context.Context, userID, connectionID string, at time.Time, reason events.CloseReason) (presence.Effects, error)
	ExpireGrace(ctx context.Context, userID string, since, now time.Time) (presence.Effects, error)
	MarkPublished(ctx context.Context, userID string, ids ...string) error
	Confirm(ctx context.Context, userID string, at time.Time) error
	Compact(ctx context.Context, userID string, cutoff time.Time) (int, error)
}

// Log reads a connection's close from the event log.
type Log interface {
	LoggedClose(ctx context.Context, connectionID string) (events.ConnectionEvent, bool, error)
}

// Gateway says whether a connection still exists.
type Gateway interface {
	Alive(ctx context.Context, connectionID string) (bool, error)
}

// Publisher publishes events; publishing the same event id again must be harmless.
type Publisher interface {
	Publish(ctx context.Context, evs ...events.Published) error
}

// Handler reconciles. Set every field but Metrics before use.
type Handler struct {
	View      View
	Log       Log
	Gateway   Gateway
	Publisher Publisher
	// Grace is the offline grace period; GraceMargin how long past its deadline a grace
	// period waits for its timer.
	Grace, GraceMargin time.Duration
	// StaleAfter is how long a live connection may go unseen before it is checked.
	StaleAfter time.Duration
	// OutboxAge is how long a transition waits for the stream's relay.
	OutboxAge time.Duration
	// Retention is how long tombstones are kept.
	Retention time.Duration
	// Limit bounds the users one run repairs.
	Limit int
	Now   func() time.Time
	// Logger receives a line per repair; Metrics, if set, one EMF record per run.
	Logger  *slog.Logger
	Metrics *emf.Logger
}

// Result reports one run.
type Result struct {
	// Due is the number of users the index listed (at most Limit).
	Due int `json:"due"`
	// Checked is the number of stale connections looked at.
	Checked int `json:"checked"`
	// Refolded counts closes the log held and the view had not folded.
	Refolded int `json:"refolded"`
	// Swept counts connections the gateway reported gone.
	Swept int `json:"swept"`
	// Confirmed counts users whose stale connections the gateway reported alive.
	Confirmed int `json:"confirmed"`
	// GracesEnded counts overdue grace periods ended.
	GracesEnded int `json:"gracesEnded"`
	// Republished counts transitions published from the outbox.
	Republished int `json:"republished"`
	// Pruned counts tombstones forgotten.
	Pruned int `json:"pruned"`
	// Failed counts users whose repair failed (retried by the next run).
	Failed int `json:"failed"`
	// More is set when the run stopped with users still due (the limit or the time).
	More bool `json:"more"`
}

// timeReserve is the time left to an invocation when the reconciler stops taking users.
const timeReserve = 3 * time.Second

// Handle runs once; the scheduled event's content does not matter.
func (h *Handler) Handle(ctx context.Context, _ any) (Result, error) {
	now := h.Now()
	var res Result
	due, err := h.View.Due(ctx, now, h.Limit)
	if err != nil {
		return res, fmt.Errorf("list what is due: %w", err)
	}
	res.Due = len(due)
	res.More = len(due) == h.Limit
	var errs []error
	for i, user := range due {
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeReserve {
			res.More = true
			h.Logger.WarnContext(ctx, "run out of time, the next run resumes", "left", len(due)-i)
			break
		}
		if err := h.repair(ctx, user, now, &res); err != nil {
			res.Failed++
			errs = append(errs, fmt.Errorf("repair %s: %w", user, err))
			h.Logger.ErrorContext(ctx, "repair failed", "userId", user, "err", err)
		}
	}
	h.Logger.InfoContext(ctx, "reconciled", "due", res.Due, "checked", res.Checked, "refolded", res.Refolded,
		"swept", res.Swept, "confirmed", res.Confirmed, "gracesEnded", res.GracesEnded,
		"republished", res.Republished, "pruned", res.Pruned, "failed", res.Failed, "more", res.More)
	_ = h.Metrics.Emit(map[string]string{"Function": "reconciler"},
		emf.Metric{Name: "UsersDue", Value: float64(res.Due), Unit: emf.Count},
		emf.Metric{Name: "ClosesRefolded", Value: float64(res.Refolded), Unit: emf.Count},
		emf.Metric{Name: "ConnectionsSwept", Value: float64(res.Swept), Unit: emf.Count},
		emf.Metric{Name: "GracesEnded", Value: float64(res.GracesEnded), Unit: emf.Count},
		emf.Metric{Name: "TransitionsRepublished", Value: float64(res.Republished), Unit: emf.Count},
		emf.Metric{Name: "RepairsFailed", Value: float64(res.Failed), Unit: emf.Count})
	return res, errors.Join(errs...)
}

// repair brings one user's item to what the log and the gateway say.
func (h *Handler) repair(ctx context.Context, user string, now time.Time, res *Result) error {
	rec, err := h.View.Pending(ctx, user)
	if err != nil {
		return err
	}
	cutoff := now.Add(-h.StaleAfter)
	if rec.Checked.Before(cutoff) {
		alive := false
		for _, c := range rec.State.Stale(cutoff) {
			res.Checked++
			ok, err := h.connection(ctx, c, now, res)
			if err != nil {
				return err
			}
			alive = alive || ok
		}
		if alive {
			if err := h.View.Confirm(ctx, user, now); err != nil {
				return err
			}
			res.Confirmed++
		}
		if rec, err = h.View.Pending(ctx, user); err != nil {
			return err
		}
	}
	if u := rec.State.User; u.GracePending() && !now.Before(u.GraceDeadline(h.Grace).Add(h.GraceMargin)) {
		// Decided at the deadline, as the lost timer would have: the same UserOffline.
		eff, err := h.View.ExpireGrace(ctx, user, u.OfflineSince, u.GraceDeadline(h.Grace))
		if err != nil {
			return err
		}
		if len(eff.Publish) > 0 {
			res.GracesEnded++
			h.Logger.InfoContext(ctx, "overdue grace period ended", "userId", user, "offlineSince", u.OfflineSince)
		}
	}
	var late []events.Published
	var ids []string
	for _, e := range rec.Outbox {
		if !now.Before(e.RecordedAt.Add(h.OutboxAge)) {
			late = append(late, e.Event)
			ids = append(ids, e.Event.ID())
		}
	}
	if len(late) > 0 {
		if err := h.Publisher.Publish(ctx, late...); err != nil {
			return fmt.Errorf("publish %d unpublished transitions: %w", len(late), err)
		}
		if err := h.View.MarkPublished(ctx, user, ids...); err != nil {
			return err
		}
		res.Republished += len(late)
		h.Logger.InfoContext(ctx, "unpublished transitions published", "userId", user, "eventIds", ids)
	}
	n, err := h.View.Compact(ctx, user, now.Add(-h.Retention))
	res.Pruned += n
	return err
}

// connection repairs one stale connection and reports whether the gateway says it is
// alive.
func (h *Handler) connection(ctx context.Context, c presence.StaleConnection, now time.Time, res *Result) (bool, error) {
	closed, ok, err := h.Log.LoggedClose(ctx, c.ConnectionID)
	if err != nil {
		return false, err
	}
	if ok && closed.UserID == c.UserID {
		if _, err := h.View.Apply(ctx, closed); err != nil {
			return false, err
		}
		res.Refolded++
		h.Logger.InfoContext(ctx, "logged close folded", "userId", c.UserID, "connectionId", c.ConnectionID, "closedAt", closed.At)
		return false, nil
	}
	alive, err := h.Gateway.Alive(ctx, c.ConnectionID)
	if err != nil || alive {
		return alive, err
	}
	if _, err := h.View.Close(ctx, c.UserID, c.ConnectionID, now, events.ReasonSwept); err != nil {
		return false, err
	}
	res.Swept++
	h.Logger.InfoContext(ctx, "swept dead connection", "userId", c.UserID, "connectionId", c.ConnectionID, "lastSeen", c.LastSeen)
	return false, nil
}
