// Package sweeper is the reconciler of the AWS runtime, run on a schedule: it re-derives
// what the view must hold and folds the difference through the core, with the same
// versioned writes as the projector. Each run looks at four bounded lists:
//
//   - the stream batches the projector or the relay gave up on after their retries (the
//     stream failure queue holds their positions): while the stream keeps them (24 hours)
//     their records are read again and replayed, closes folded (and their grace periods
//     ended if over, flagged otherwise) and transitions published with their ids; past
//     that, the other lists repair what they held;
//   - the grace timers that failed every receive (the grace queue's dead-letter queue):
//     each period is ended by presence at its deadline, as the timer would have, so its
//     UserOffline has the timer's id;
//   - the users the repair index lists as due, which only failures put there: a grace
//     period whose timer could not be started, ended once overdue by a margin; transitions
//     the relay could not publish (stuck in the item), published past the outbox age with
//     their ids, then removed;
//   - the next page of the online list (from a cursor kept in the table, so successive
//     runs walk the whole list and start over): a user whose newest event is older than
//     StaleAfter has each connection checked: if the log holds its close (the close's
//     stream record was lost), that close is folded, never appended again; otherwise API
//     Gateway is asked, and a connection it reports gone is closed
//     (ConnectionClosed{swept}, appended and folded); confirmed ones are stamped.
//
// Work per run is bounded (Limit of each list, within the invocation's time) and
// resumable. A repair that fails is logged, counted and returned as the invocation's
// error, which the function's error alarm watches. A Handler is safe for concurrent use
// if its ports are.
package sweeper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/emf"
	"github.com/wspresence/wspresence/internal/grace/sqsdelay"
	"github.com/wspresence/wspresence/internal/lambda/projector"
	"github.com/wspresence/wspresence/internal/lambda/publisher"
	"github.com/wspresence/wspresence/internal/presence"
	"github.com/wspresence/wspresence/internal/stream/failures"
)

// View is the view the reconciler repairs (package dynamo's Store): its lists, the user's
// record, and the versioned writes of the fold.
type View interface {
	Due(ctx context.Context, now time.Time, limit int) ([]string, error)
	OnlineUsers(ctx context.Context, after string, limit int) ([]presence.Status, error)
	Cursor(ctx context.Context) (string, error)
	SetCursor(ctx context.Context, after string) error
	Pending(ctx context.Context, userID string) (presence.Record, error)
	Apply(ctx context.Context, e events.ConnectionEvent) (presence.Effects, error)
	Close(ctx context.Context, userID, connectionID string, at time.Time, reason events.CloseReason) (presence.Effects, error)
	ExpireGrace(ctx context.Context, userID string, since, now time.Time) (presence.Effects, error)
	FlagGrace(ctx context.Context, userID string) error
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

// StreamFailures is the stream failure queue (package failures' Queue).
type StreamFailures interface {
	Receive(ctx context.Context, max int) ([]failures.Batch, error)
	Delete(ctx context.Context, receipt string) error
}

// Streams reads stream records by position (package ddbstreams' Reader).
type Streams interface {
	Records(ctx context.Context, streamARN, shardID, start, end string) ([]lambdaevents.DynamoDBEventRecord, error)
}

// StreamRetention is how long DynamoDB Streams keep a record.
const StreamRetention = 24 * time.Hour

// DeadTimers is the grace queue's dead-letter queue (package sqsdelay's DeadLetters).
type DeadTimers interface {
	Receive(ctx context.Context, max int) ([]sqsdelay.Dead, error)
	Delete(ctx context.Context, receipt string) error
}

// Handler reconciles. Set every field but Metrics before use.
type Handler struct {
	View       View
	Log        Log
	Gateway    Gateway
	Publisher  Publisher
	DeadTimers DeadTimers
	Failures   StreamFailures
	Streams    Streams
	// Grace is the offline grace period; GraceMargin how long past its deadline a flagged
	// grace period waits for a retry of its timer.
	Grace, GraceMargin time.Duration
	// StaleAfter is how long a user may go without an event before its connections are
	// checked.
	StaleAfter time.Duration
	// OutboxAge is how long a stuck transition waits for the stream's retries.
	OutboxAge time.Duration
	// Retention is how long tombstones are kept.
	Retention time.Duration
	// Limit bounds each of the three lists a run takes.
	Limit int
	Now   func() time.Time
	// Logger receives a line per repair; Metrics, if set, one EMF record per run.
	Logger  *slog.Logger
	Metrics *emf.Logger
}

// Result reports one run.
type Result struct {
	// FailedBatches, DeadTimers, Due and Scanned are the lengths of the lists taken.
	FailedBatches int `json:"failedBatches"`
	DeadTimers    int `json:"deadTimers"`
	Due           int `json:"due"`
	Scanned       int `json:"scanned"`
	// Replayed counts the records of failed batches replayed; Expired the failed batches
	// the stream no longer kept.
	Replayed int `json:"replayed"`
	Expired  int `json:"expired"`
	// Checked is the number of stale connections looked at.
	Checked int `json:"checked"`
	// Refolded counts closes the log held and the view had not folded.
	Refolded int `json:"refolded"`
	// Swept counts connections the gateway reported gone.
	Swept int `json:"swept"`
	// Confirmed counts users whose stale connections the gateway reported alive.
	Confirmed int `json:"confirmed"`
	// GracesEnded counts grace periods ended.
	GracesEnded int `json:"gracesEnded"`
	// Republished counts stuck transitions published.
	Republished int `json:"republished"`
	// Pruned counts tombstones forgotten.
	Pruned int `json:"pruned"`
	// Failed counts repairs that failed (retried by a later run).
	Failed int `json:"failed"`
	// More is set when a list had more than the run took.
	More bool `json:"more"`
}

// timeReserve is the time left to an invocation when the reconciler stops taking work.
const timeReserve = 3 * time.Second

func outOfTime(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ok && time.Until(dl) < timeReserve
}

// Handle runs once; the scheduled event's content does not matter.
func (h *Handler) Handle(ctx context.Context, _ any) (Result, error) {
	now := h.Now()
	var res Result
	var errs []error
	fail := func(user string, err error) {
		res.Failed++
		errs = append(errs, fmt.Errorf("repair %s: %w", user, err))
		h.Logger.ErrorContext(ctx, "repair failed", "userId", user, "err", err)
	}

	batches, err := h.Failures.Receive(ctx, h.Limit)
	if err != nil {
		errs = append(errs, err)
	}
	res.FailedBatches = len(batches)
	for _, b := range batches {
		if err := h.replay(ctx, b, now, &res); err != nil {
			fail(b.ShardID+"/"+b.StartSequenceNumber, err)
		}
	}

	dead, err := h.DeadTimers.Receive(ctx, h.Limit)
	if err != nil {
		errs = append(errs, err)
	}
	res.DeadTimers = len(dead)
	for _, d := range dead {
		if err := h.deadTimer(ctx, d, &res); err != nil {
			fail(d.UserID, err)
		}
	}

	due, err := h.View.Due(ctx, now, h.Limit)
	if err != nil {
		errs = append(errs, fmt.Errorf("list what is due: %w", err))
	}
	res.Due = len(due)
	res.More = len(due) == h.Limit
	for _, user := range due {
		if outOfTime(ctx) {
			res.More = true
			break
		}
		if err := h.repair(ctx, user, now, &res); err != nil {
			fail(user, err)
		}
	}

	if err := h.scan(ctx, now, &res, fail); err != nil {
		errs = append(errs, err)
	}

	h.Logger.InfoContext(ctx, "reconciled", "failedBatches", res.FailedBatches, "replayed", res.Replayed, "expired", res.Expired,
		"deadTimers", res.DeadTimers, "due", res.Due, "scanned", res.Scanned,
		"checked", res.Checked, "refolded", res.Refolded, "swept", res.Swept, "confirmed", res.Confirmed,
		"gracesEnded", res.GracesEnded, "republished", res.Republished, "pruned", res.Pruned, "failed", res.Failed, "more", res.More)
	_ = h.Metrics.Emit(map[string]string{"Function": "reconciler"},
		emf.Metric{Name: "UsersDue", Value: float64(res.Due), Unit: emf.Count},
		emf.Metric{Name: "DeadTimers", Value: float64(res.DeadTimers), Unit: emf.Count},
		emf.Metric{Name: "RecordsReplayed", Value: float64(res.Replayed), Unit: emf.Count},
		emf.Metric{Name: "FailedBatchesExpired", Value: float64(res.Expired), Unit: emf.Count},
		emf.Metric{Name: "ClosesRefolded", Value: float64(res.Refolded), Unit: emf.Count},
		emf.Metric{Name: "ConnectionsSwept", Value: float64(res.Swept), Unit: emf.Count},
		emf.Metric{Name: "GracesEnded", Value: float64(res.GracesEnded), Unit: emf.Count},
		emf.Metric{Name: "TransitionsRepublished", Value: float64(res.Republished), Unit: emf.Count},
		emf.Metric{Name: "RepairsFailed", Value: float64(res.Failed), Unit: emf.Count})
	return res, errors.Join(errs...)
}

// replay reads a failed batch's records again and does what its consumer could not: a
// close is folded (with its grace period ended if over, flagged otherwise), a write's
// transitions are published with their ids. A batch the stream no longer keeps is
// counted and dropped: the online list and the repair index cover what it held.
func (h *Handler) replay(ctx context.Context, b failures.Batch, now time.Time, res *Result) error {
	if b.StreamARN != "" && now.Sub(b.FirstArrival) > StreamRetention {
		res.Expired++
		h.Logger.ErrorContext(ctx, "failed stream batch expired before its replay", "shardId", b.ShardID,
			"start", b.StartSequenceNumber, "end", b.EndSequenceNumber, "records", b.BatchSize)
	} else if b.StreamARN != "" {
		recs, err := h.Streams.Records(ctx, b.StreamARN, b.ShardID, b.StartSequenceNumber, b.EndSequenceNumber)
		if err != nil {
			return err
		}
		for _, rec := range recs {
			if err := h.replayRecord(ctx, rec, now); err != nil {
				return err
			}
			res.Replayed++
		}
	}
	return h.Failures.Delete(ctx, b.Receipt)
}

func (h *Handler) replayRecord(ctx context.Context, rec lambdaevents.DynamoDBEventRecord, now time.Time) error {
	img := rec.Change.NewImage
	if sk := img["sk"]; sk.DataType() == lambdaevents.DataTypeString && sk.String() == "#USER" {
		evs, err := publisher.Outbox(img)
		if err != nil || len(evs) == 0 {
			return nil // nothing to publish, or nothing a retry can read
		}
		return h.Publisher.Publish(ctx, evs...)
	}
	if rec.EventName != string(lambdaevents.DynamoDBOperationTypeInsert) {
		return nil
	}
	e, err := projector.Decode(img)
	if err != nil {
		return nil
	}
	if _, err := h.View.Apply(ctx, e); err != nil {
		return err
	}
	rc, err := h.View.Pending(ctx, e.UserID)
	if err != nil {
		return err
	}
	u := rc.State.User
	switch deadline := u.GraceDeadline(h.Grace); {
	case !u.GracePending():
		return nil
	case !now.Before(deadline):
		_, err = h.View.ExpireGrace(ctx, e.UserID, u.OfflineSince, deadline)
	default:
		err = h.View.FlagGrace(ctx, e.UserID)
	}
	return err
}

// deadTimer runs a timer that failed every receive, at its period's deadline, and
// removes it.
func (h *Handler) deadTimer(ctx context.Context, d sqsdelay.Dead, res *Result) error {
	ns, err := strconv.ParseInt(d.OfflineSince, 10, 64)
	if err == nil && d.UserID != "" {
		since := time.Unix(0, ns).UTC()
		eff, err := h.View.ExpireGrace(ctx, d.UserID, since, since.Add(time.Duration(d.GraceSeconds)*time.Second))
		if err != nil {
			return err
		}
		if len(eff.Publish) > 0 {
			res.GracesEnded++
			h.Logger.InfoContext(ctx, "grace period of a dead timer ended", "userId", d.UserID, "offlineSince", since)
		}
	}
	return h.DeadTimers.Delete(ctx, d.Receipt)
}

// scan takes the next page of the online list and repairs the users whose newest event
// is older than StaleAfter.
func (h *Handler) scan(ctx context.Context, now time.Time, res *Result, fail func(string, error)) error {
	after, err := h.View.Cursor(ctx)
	if err != nil {
		return err
	}
	page, err := h.View.OnlineUsers(ctx, after, h.Limit)
	if err != nil {
		return fmt.Errorf("list online users: %w", err)
	}
	res.Scanned = len(page)
	next := ""
	for _, u := range page {
		if outOfTime(ctx) {
			res.More = true
			break
		}
		next = u.UserID
		if !u.LastActivity.Before(now.Add(-h.StaleAfter)) {
			continue
		}
		if err := h.repair(ctx, u.UserID, now, res); err != nil {
			fail(u.UserID, err)
		}
	}
	if len(page) == h.Limit {
		res.More = true
	} else if !res.More {
		next = "" // the end of the list: the next run starts over
	}
	return h.View.SetCursor(ctx, next)
}

// repair brings one user's item to what the log and the gateway say.
func (h *Handler) repair(ctx context.Context, user string, now time.Time, res *Result) error {
	rec, err := h.View.Pending(ctx, user)
	if err != nil {
		return err
	}
	cutoff := now.Add(-h.StaleAfter)
	closed := false
	if rec.Checked.Before(cutoff) {
		alive := false
		for _, c := range rec.State.Stale(cutoff) {
			res.Checked++
			ok, refolded, err := h.connection(ctx, c, now, res)
			if err != nil {
				return err
			}
			alive, closed = alive || ok, closed || refolded
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
	if u := rec.State.User; u.GracePending() {
		deadline := u.GraceDeadline(h.Grace)
		switch {
		case !now.Before(deadline.Add(h.GraceMargin)) || (closed && !now.Before(deadline)):
			// Decided at the deadline, as the lost timer would have: the same UserOffline.
			eff, err := h.View.ExpireGrace(ctx, user, u.OfflineSince, deadline)
			if err != nil {
				return err
			}
			if len(eff.Publish) > 0 {
				res.GracesEnded++
				h.Logger.InfoContext(ctx, "overdue grace period ended", "userId", user, "offlineSince", u.OfflineSince)
			}
		case closed:
			// A close this run folded has no timer of its own: come back once it is due.
			if err := h.View.FlagGrace(ctx, user); err != nil {
				return err
			}
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
			return fmt.Errorf("publish %d stuck transitions: %w", len(late), err)
		}
		if err := h.View.MarkPublished(ctx, user, ids...); err != nil {
			return err
		}
		res.Republished += len(late)
		h.Logger.InfoContext(ctx, "stuck transitions published", "userId", user, "eventIds", ids)
	}
	n, err := h.View.Compact(ctx, user, now.Add(-h.Retention))
	res.Pruned += n
	return err
}

// connection repairs one stale connection and reports whether the gateway says it is
// alive, and whether a close was folded.
func (h *Handler) connection(ctx context.Context, c presence.StaleConnection, now time.Time, res *Result) (alive, closed bool, err error) {
	logged, ok, err := h.Log.LoggedClose(ctx, c.ConnectionID)
	if err != nil {
		return false, false, err
	}
	if ok && logged.UserID == c.UserID {
		if _, err := h.View.Apply(ctx, logged); err != nil {
			return false, false, err
		}
		res.Refolded++
		h.Logger.InfoContext(ctx, "logged close folded", "userId", c.UserID, "connectionId", c.ConnectionID, "closedAt", logged.At)
		return false, true, nil
	}
	if alive, err = h.Gateway.Alive(ctx, c.ConnectionID); err != nil || alive {
		return alive, false, err
	}
	if _, err := h.View.Close(ctx, c.UserID, c.ConnectionID, now, events.ReasonSwept); err != nil {
		return false, false, err
	}
	res.Swept++
	h.Logger.InfoContext(ctx, "swept dead connection", "userId", c.UserID, "connectionId", c.ConnectionID, "lastSeen", c.LastSeen)
	return false, true, nil
}
