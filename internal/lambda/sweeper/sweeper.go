// Package sweeper is the reconciler of the AWS runtime, run on a schedule: it re-derives
// what the view must hold and folds the difference through the core, with the same
// versioned writes as the projector. Each run takes, as long as its time lasts:
//
//   - the stream batches the projector or the relay gave up on after their retries (the
//     stream failure queue holds their positions): while the stream keeps them (24 hours)
//     their records are read again and replayed, closes folded (and their grace periods
//     ended if over, flagged otherwise) and transitions published with their ids; past
//     that, the other lists repair what they held;
//   - the grace timers that failed every receive (the grace queue's dead-letter queue):
//     each period is ended by presence at its deadline, as the timer would have, so its
//     UserOffline has the timer's id (a period still running under a raised grace period
//     is flagged instead, and ended once overdue);
//   - the users the repair index lists as due, which only failures put there: a grace
//     period whose timer could not be started, ended once overdue by a margin; transitions
//     the relay could not publish (stuck in the item), published past the outbox age with
//     their ids, then removed;
//   - the online list, page after page from a cursor kept in the table (successive runs
//     go on where the last stopped and start over at its end): every live connection of
//     every user is checked with API Gateway, several at once, whatever the user's
//     activity; one it reports gone is closed: if the log holds its close (the close's
//     stream record was lost) that close is folded, never appended again, otherwise
//     ConnectionClosed{swept} is appended and folded.
//
// Each list is taken in small chunks while the invocation has time left (its deadline),
// and a queue's messages are hidden for the whole run, so none comes back while the run
// works on it; what a run leaves, the next takes. Each run also writes a probe the relay
// acknowledges, and reports, as metrics its alarms watch with missing data breaching, the
// age of the oldest transition not yet published (the relay's unacknowledged probe, or a
// stuck transition overdue) and of the oldest ghost that may not yet be repaired (the
// time since the last complete pass over the online list began, or an overdue repair). A
// repair that fails is logged, counted and returned as the invocation's error. A Handler
// is safe for concurrent use if its ports are.
package sweeper

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
	// OldestDue is the earliest due time in the repair index (zero: nothing due by now).
	OldestDue(ctx context.Context, now time.Time) (time.Time, error)
	// OnlineConnections lists the live connections of at most limit users of the online
	// list after the user id after, in user id order.
	OnlineConnections(ctx context.Context, after string, limit int) ([]presence.Conn, error)
	// Walk returns the reconciler's place in the online list, when its current pass
	// began and when the last complete pass began; SetWalk records them.
	Walk(ctx context.Context) (after string, began, covered time.Time, err error)
	SetWalk(ctx context.Context, after string, began, covered time.Time) error
	// Probe writes a probe the relay acknowledges and returns when the oldest probe not
	// yet acknowledged was written (zero: every earlier probe was) and when the latest
	// acknowledged one was.
	Probe(ctx context.Context, now time.Time) (unacked, acked time.Time, err error)
	// RelayPositions and SetRelayPositions keep where the reconciler read the view
	// table's stream in the relay's place, by shard.
	RelayPositions(ctx context.Context) (map[string]string, error)
	SetRelayPositions(ctx context.Context, pos map[string]string) error
	Pending(ctx context.Context, userID string) (presence.Record, error)
	Apply(ctx context.Context, e events.ConnectionEvent) (presence.Effects, error)
	Close(ctx context.Context, userID, connectionID string, at time.Time, reason events.CloseReason) (presence.Effects, error)
	ExpireGrace(ctx context.Context, userID string, since, now time.Time) (presence.Effects, error)
	FlagGrace(ctx context.Context, userID string) error
	MarkPublished(ctx context.Context, userID string, ids ...string) error
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
	Receive(ctx context.Context, max int, hide time.Duration) ([]failures.Batch, error)
	Delete(ctx context.Context, receipt string) error
}

// Streams reads stream records by position (package ddbstreams' Reader).
type Streams interface {
	Records(ctx context.Context, streamARN, shardID, start, end string) ([]lambdaevents.DynamoDBEventRecord, error)
	Shards(ctx context.Context, streamARN string) ([]string, error)
	After(ctx context.Context, streamARN, shardID, after string, limit int) ([]lambdaevents.DynamoDBEventRecord, string, error)
}

// StreamRetention is how long DynamoDB Streams keep a record.
const StreamRetention = 24 * time.Hour

// DeadTimers is the grace queue's dead-letter queue (package sqsdelay's DeadLetters).
type DeadTimers interface {
	Receive(ctx context.Context, max int, hide time.Duration) ([]sqsdelay.Dead, error)
	Delete(ctx context.Context, receipt string) error
}

// Defaults of the Handler's settings.
const (
	// DefaultWorkers is how many connections are checked with API Gateway at once.
	DefaultWorkers = 16
	// DefaultSettle is how long a new connection is left alone: API Gateway may not know
	// it until its $connect has answered.
	DefaultSettle = time.Minute
	// DefaultReserve is the time left to an invocation when the reconciler stops taking
	// work.
	DefaultReserve = 10 * time.Second
	// DefaultPassEvery is how often a pass over the online list begins (when the last one
	// is over): every connection is checked at least this often, and no more.
	DefaultPassEvery = 10 * time.Minute
	// DefaultRun is the run's length assumed when its context has no deadline.
	DefaultRun = 5 * time.Minute
	// chunk is how many queue messages are taken at a time.
	chunk = 10
)

// Handler reconciles. Set every field but Metrics, Workers, Settle and Reserve before
// use.
type Handler struct {
	View       View
	Log        Log
	Gateway    Gateway
	Publisher  Publisher
	DeadTimers DeadTimers
	Failures   StreamFailures
	Streams    Streams
	// ViewStream is the view table's stream (its ARN), which the reconciler reads in the
	// relay's place while the relay does not run (none: it does not).
	ViewStream string
	// Grace is the offline grace period; GraceMargin how long past its deadline a flagged
	// grace period waits for a retry of its timer.
	Grace, GraceMargin time.Duration
	// StaleAfter is how long past its last check a user's connections may go unchecked:
	// the pass over the online list that takes longer is reported (OldestGhostAge).
	StaleAfter time.Duration
	// OutboxAge is how long a stuck transition waits for the stream's retries.
	OutboxAge time.Duration
	// Retention is how long tombstones are kept.
	Retention time.Duration
	// Limit is the size of a page of the online list and of the repair index's list, and
	// bounds the queue messages a run takes.
	Limit int
	// Workers is how many connections are checked at once (DefaultWorkers when zero);
	// Settle how long a new connection is left alone (DefaultSettle when zero); Reserve
	// the time left to the invocation when the run stops taking work (DefaultReserve
	// when zero).
	Workers         int
	Settle, Reserve time.Duration
	// PassEvery is how often a pass over the online list begins (DefaultPassEvery when
	// zero).
	PassEvery time.Duration
	Now       func() time.Time
	// Logger receives a line per repair; Metrics, if set, one EMF record per run.
	Logger  *slog.Logger
	Metrics *emf.Logger
}

// Result reports one run.
type Result struct {
	// FailedBatches, DeadTimers, Due and Scanned are the lengths of the lists taken
	// (Scanned: users of the online list).
	FailedBatches int `json:"failedBatches"`
	DeadTimers    int `json:"deadTimers"`
	Due           int `json:"due"`
	Scanned       int `json:"scanned"`
	// Replayed counts the records of failed batches replayed; Expired the failed batches
	// the stream no longer kept.
	Replayed int `json:"replayed"`
	Expired  int `json:"expired"`
	// Checked is the number of connections asked about.
	Checked int `json:"checked"`
	// Refolded counts closes the log held and the view had not folded.
	Refolded int `json:"refolded"`
	// Swept counts connections the gateway reported gone.
	Swept int `json:"swept"`
	// GracesEnded counts grace periods ended.
	GracesEnded int `json:"gracesEnded"`
	// Republished counts stuck transitions published.
	Republished int `json:"republished"`
	// Relayed counts the transitions published from the view table's stream in the place
	// of a relay that does not run.
	Relayed int `json:"relayed"`
	// Pruned counts tombstones forgotten.
	Pruned int `json:"pruned"`
	// Failed counts repairs that failed (retried by a later run).
	Failed int `json:"failed"`
	// Passes counts the passes over the whole online list this run completed.
	Passes int `json:"passes"`
	// More is set when a list had more than the run took.
	More bool `json:"more"`
	// UnpublishedAge is the age of the oldest transition known not to be published at the
	// end of the run; GhostAge how long a ghost may have gone unrepaired (see the package
	// doc).
	UnpublishedAge time.Duration `json:"unpublishedAge"`
	GhostAge       time.Duration `json:"ghostAge"`
}

// run is one invocation's state.
type run struct {
	h   *Handler
	ctx context.Context
	now time.Time
	// hide is how long a message taken from a queue stays hidden: the rest of the run.
	hide time.Duration
	mu   sync.Mutex
	res  Result
	errs []error
}

func (r *run) fail(what string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.res.Failed++
	r.errs = append(r.errs, fmt.Errorf("repair %s: %w", what, err))
	r.h.Logger.ErrorContext(r.ctx, "repair failed", "what", what, "err", err)
}

func (r *run) count(f func(*Result)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(&r.res)
}

// outOfTime reports whether the run must stop taking work.
func (r *run) outOfTime() bool {
	if r.ctx.Err() != nil {
		return true
	}
	dl, ok := r.ctx.Deadline()
	return ok && time.Until(dl) < r.h.reserve()
}

func (h *Handler) reserve() time.Duration { return or(h.Reserve, DefaultReserve) }

func or(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Handle runs once; the scheduled event's content does not matter.
func (h *Handler) Handle(ctx context.Context, _ any) (Result, error) {
	r := &run{h: h, ctx: ctx, now: h.Now(), hide: DefaultRun}
	if dl, ok := ctx.Deadline(); ok {
		r.hide = time.Until(dl) + time.Minute
	}
	unacked, acked, err := h.View.Probe(ctx, r.now)
	if err != nil {
		r.errs = append(r.errs, err)
	}
	stalled := !unacked.IsZero() && r.now.Sub(unacked) >= h.OutboxAge
	if err := r.relay(stalled, acked); err != nil {
		r.errs = append(r.errs, err)
	}
	r.replayFailed()
	r.deadTimers()
	r.due()
	covered, err := r.walk()
	if err != nil {
		r.errs = append(r.errs, err)
	}
	res := r.res
	oldest, err := h.View.OldestDue(ctx, r.now)
	if err != nil {
		r.errs = append(r.errs, err)
	}
	var overdue time.Duration
	if !oldest.IsZero() {
		overdue = r.now.Sub(oldest)
	}
	res.UnpublishedAge, res.GhostAge = overdue, max(overdue, r.now.Sub(covered))
	if !unacked.IsZero() {
		res.UnpublishedAge = max(res.UnpublishedAge, r.now.Sub(unacked))
	}

	h.Logger.InfoContext(ctx, "reconciled", "failedBatches", res.FailedBatches, "replayed", res.Replayed, "expired", res.Expired,
		"deadTimers", res.DeadTimers, "due", res.Due, "scanned", res.Scanned, "passes", res.Passes,
		"checked", res.Checked, "refolded", res.Refolded, "swept", res.Swept,
		"gracesEnded", res.GracesEnded, "republished", res.Republished, "relayed", res.Relayed, "pruned", res.Pruned, "failed", res.Failed, "more", res.More,
		"unpublishedAge", res.UnpublishedAge.String(), "ghostAge", res.GhostAge.String())
	_ = h.Metrics.Emit(map[string]string{"Function": "reconciler"},
		emf.Metric{Name: "UsersDue", Value: float64(res.Due), Unit: emf.Count},
		emf.Metric{Name: "DeadTimers", Value: float64(res.DeadTimers), Unit: emf.Count},
		emf.Metric{Name: "RecordsReplayed", Value: float64(res.Replayed), Unit: emf.Count},
		emf.Metric{Name: "FailedBatchesExpired", Value: float64(res.Expired), Unit: emf.Count},
		emf.Metric{Name: "ConnectionsChecked", Value: float64(res.Checked), Unit: emf.Count},
		emf.Metric{Name: "ClosesRefolded", Value: float64(res.Refolded), Unit: emf.Count},
		emf.Metric{Name: "ConnectionsSwept", Value: float64(res.Swept), Unit: emf.Count},
		emf.Metric{Name: "GracesEnded", Value: float64(res.GracesEnded), Unit: emf.Count},
		emf.Metric{Name: "TransitionsRepublished", Value: float64(res.Republished), Unit: emf.Count},
		emf.Metric{Name: "TransitionsRelayed", Value: float64(res.Relayed), Unit: emf.Count},
		emf.Metric{Name: "RepairsFailed", Value: float64(res.Failed), Unit: emf.Count},
		emf.Metric{Name: "OldestUnpublishedAge", Value: res.UnpublishedAge.Seconds(), Unit: emf.Seconds},
		emf.Metric{Name: "OldestGhostAge", Value: res.GhostAge.Seconds(), Unit: emf.Seconds})
	return res, errors.Join(r.errs...)
}

// relay publishes, in the place of a relay that has not acknowledged a probe for the
// outbox age, the transitions of the view table's stream written since a minute before
// the last probe it acknowledged, from where the last run stopped, while time lasts. Once
// the relay runs again, the positions are forgotten. The relay, when it resumes,
// publishes some of them again, with the same ids.
func (r *run) relay(stalled bool, acked time.Time) error {
	h := r.h
	if h.ViewStream == "" {
		return nil
	}
	pos, err := h.View.RelayPositions(r.ctx)
	if err != nil {
		return err
	}
	if !stalled {
		if len(pos) == 0 {
			return nil
		}
		return h.View.SetRelayPositions(r.ctx, nil)
	}
	h.Logger.WarnContext(r.ctx, "the relay does not run: publishing from the view stream", "lastAcknowledged", acked)
	shards, err := h.Streams.Shards(r.ctx, h.ViewStream)
	if err != nil {
		return err
	}
	floor := acked.Add(-time.Minute)
	var errs []error
	for _, shard := range shards {
		for !r.outOfTime() {
			recs, next, err := h.Streams.After(r.ctx, h.ViewStream, shard, pos[shard], h.Limit)
			if err != nil {
				errs = append(errs, err)
				break
			}
			var evs []events.Published
			for _, rec := range recs {
				img := rec.Change.NewImage
				if !rec.Change.ApproximateCreationDateTime.Time.Before(floor) && img["pk"].DataType() == lambdaevents.DataTypeString &&
					img["pk"].String() != publisher.ProbeKey {
					out, _ := publisher.Outbox(img) // an undecodable one is the relay's to count
					evs = append(evs, out...)
				}
			}
			if len(evs) > 0 {
				if err := h.Publisher.Publish(r.ctx, evs...); err != nil {
					errs = append(errs, fmt.Errorf("publish %d transitions in the relay's place: %w", len(evs), err))
					break
				}
				r.res.Relayed += len(evs)
			}
			pos[shard] = next
			if len(recs) < h.Limit {
				break
			}
		}
	}
	return errors.Join(append(errs, h.View.SetRelayPositions(r.ctx, pos))...)
}

// drain takes a queue's messages, a chunk at a time, while time lasts and at most Limit
// in all, handles each, and returns how many it took. A message taken and not handled
// comes back once hidden no more.
func drain[T any](r *run, receive func(ctx context.Context, limit int, hide time.Duration) ([]T, error),
	handle func(T) error, name func(T) string) int {
	taken := 0
	for taken < r.h.Limit && !r.outOfTime() {
		msgs, err := receive(r.ctx, min(chunk, r.h.Limit-taken), r.hide)
		if err != nil {
			r.errs = append(r.errs, err)
			return taken
		}
		if len(msgs) == 0 {
			return taken
		}
		taken += len(msgs)
		for _, m := range msgs {
			if r.outOfTime() {
				r.res.More = true
				return taken
			}
			if err := handle(m); err != nil {
				r.fail(name(m), err)
			}
		}
	}
	return taken
}

// replayFailed takes the failure queue's batches.
func (r *run) replayFailed() {
	r.res.FailedBatches += drain(r, r.h.Failures.Receive,
		func(b failures.Batch) error { return r.h.replay(r.ctx, b, r.now, &r.res) },
		func(b failures.Batch) string { return b.ShardID + "/" + b.StartSequenceNumber })
}

// deadTimers takes the grace dead-letter queue's timers.
func (r *run) deadTimers() {
	r.res.DeadTimers += drain(r, r.h.DeadTimers.Receive,
		func(d sqsdelay.Dead) error { return r.h.deadTimer(r.ctx, d, r.now, &r.res) },
		func(d sqsdelay.Dead) string { return d.UserID })
}

// due repairs the users the repair index lists, while time lasts.
func (r *run) due() {
	if r.outOfTime() {
		r.res.More = true
		return
	}
	due, err := r.h.View.Due(r.ctx, r.now, r.h.Limit)
	if err != nil {
		r.errs = append(r.errs, fmt.Errorf("list what is due: %w", err))
		return
	}
	r.res.Due = len(due)
	r.res.More = r.res.More || len(due) == r.h.Limit
	for _, user := range due {
		if r.outOfTime() {
			r.res.More = true
			return
		}
		if err := r.h.repair(r.ctx, user, false, r.now, &r.res); err != nil {
			r.fail(user, err)
		}
	}
}

// walk checks the online list's connections page after page from the stored cursor,
// while time lasts, and returns when the last complete pass began.
func (r *run) walk() (time.Time, error) {
	after, began, covered, err := r.h.View.Walk(r.ctx)
	if err != nil {
		return covered, err
	}
	if began.IsZero() {
		began = r.now
	}
	if covered.IsZero() {
		covered = began
	} else if after == "" && r.now.Sub(covered) < or(r.h.PassEvery, DefaultPassEvery) {
		return covered, nil // the last pass began recently: the next one waits
	}
	for !r.outOfTime() {
		conns, err := r.h.View.OnlineConnections(r.ctx, after, r.h.Limit)
		if err != nil {
			return covered, fmt.Errorf("list online users: %w", err)
		}
		users := r.check(conns)
		r.res.Scanned += users
		if users < r.h.Limit {
			// The end of the list: the pass is complete, the next one starts over.
			r.res.Passes++
			after, covered, began = "", began, r.now
			break
		}
		after = conns[len(conns)-1].UserID
	}
	if after != "" {
		r.res.More = true
	}
	return covered, r.h.View.SetWalk(r.ctx, after, began, covered)
}

// check asks the gateway about conns, Workers at once, repairs the users of those it
// reports gone, and returns the number of users.
func (r *run) check(conns []presence.Conn) int {
	users := 0
	gone := map[string][]string{}
	var order []string
	for i, c := range conns {
		if i == 0 || c.UserID != conns[i-1].UserID {
			users++
		}
	}
	work := make(chan presence.Conn)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range max(r.h.Workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				alive, err := r.h.Gateway.Alive(r.ctx, c.ID)
				r.count(func(res *Result) { res.Checked++ })
				if err != nil {
					r.fail(c.UserID+"/"+c.ID, err)
					continue
				}
				if !alive {
					mu.Lock()
					if gone[c.UserID] == nil {
						order = append(order, c.UserID)
					}
					gone[c.UserID] = append(gone[c.UserID], c.ID)
					mu.Unlock()
				}
			}
		}()
	}
	for _, c := range conns {
		work <- c
	}
	close(work)
	wg.Wait()
	for _, user := range order {
		if err := r.h.closeGone(r.ctx, user, gone[user], r.now, &r.res); err != nil {
			r.fail(user, err)
		}
	}
	return users
}

func (h *Handler) settle() time.Duration { return or(h.Settle, DefaultSettle) }

// closeGone closes the connections of user the gateway reported gone (those still live
// and older than Settle), then settles the user's grace period.
func (h *Handler) closeGone(ctx context.Context, user string, ids []string, now time.Time, res *Result) error {
	rec, err := h.View.Pending(ctx, user)
	if err != nil {
		return err
	}
	closed := false
	for _, id := range ids {
		c, ok := rec.State.Conns[id]
		if !ok || !c.Live() || now.Sub(c.OpenedAt) < h.settle() {
			continue
		}
		if err := h.connection(ctx, c, now, res); err != nil {
			return err
		}
		closed = true
	}
	if !closed {
		return nil
	}
	return h.repair(ctx, user, true, now, res)
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

// deadTimer runs a timer that failed every receive, at its period's deadline under the
// configured grace period, and removes it. A period whose deadline is still ahead (the
// grace period was raised) is flagged, so the repair index brings it back once overdue.
func (h *Handler) deadTimer(ctx context.Context, d sqsdelay.Dead, now time.Time, res *Result) error {
	ns, err := strconv.ParseInt(d.OfflineSince, 10, 64)
	if err == nil && d.UserID != "" {
		since := time.Unix(0, ns).UTC()
		deadline := since.Add(h.Grace)
		if now.Before(deadline) {
			if err := h.View.FlagGrace(ctx, d.UserID); err != nil {
				return err
			}
			return h.DeadTimers.Delete(ctx, d.Receipt)
		}
		eff, err := h.View.ExpireGrace(ctx, d.UserID, since, deadline)
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

// repair brings one user's item to what is due: a grace period past its deadline and
// margin is ended (at once past its deadline when this run closed one of its
// connections, which no timer follows; flagged otherwise), stuck transitions past the
// outbox age are published and removed, old tombstones forgotten.
func (h *Handler) repair(ctx context.Context, user string, closed bool, now time.Time, res *Result) error {
	rec, err := h.View.Pending(ctx, user)
	if err != nil {
		return err
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

// connection closes a live connection the gateway reported gone: the close the log
// holds is folded (its stream record was lost), or ConnectionClosed{swept} is appended
// and folded.
func (h *Handler) connection(ctx context.Context, c presence.Conn, now time.Time, res *Result) error {
	logged, ok, err := h.Log.LoggedClose(ctx, c.ID)
	if err != nil {
		return err
	}
	if ok && logged.UserID == c.UserID {
		if _, err := h.View.Apply(ctx, logged); err != nil {
			return err
		}
		res.Refolded++
		h.Logger.InfoContext(ctx, "logged close folded", "userId", c.UserID, "connectionId", c.ID, "closedAt", logged.At)
		return nil
	}
	if _, err := h.View.Close(ctx, c.UserID, c.ID, now, events.ReasonSwept); err != nil {
		return err
	}
	res.Swept++
	h.Logger.InfoContext(ctx, "swept dead connection", "userId", c.UserID, "connectionId", c.ID, "openedAt", c.OpenedAt)
	return nil
}
