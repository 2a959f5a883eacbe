package sender

import (
	"context"
	"errors"
	"fmt"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/delivery"
	"github.com/wspresence/wspresence/internal/recovery"
	"github.com/wspresence/wspresence/internal/recovery/sqshold"
	"github.com/wspresence/wspresence/internal/store/dynamo"
)

// Streams is the users' recovery streams (package dynamo's Store).
type Streams interface {
	StreamHead(ctx context.Context, userID string) (dynamo.Head, bool, error)
	Allocate(ctx context.Context, userID string, at time.Time) (dynamo.Head, error)
	PutMessage(ctx context.Context, userID string, m dynamo.StreamMessage) error
	FindMessage(ctx context.Context, userID, epoch, messageID string, now time.Time) (dynamo.StreamMessage, bool, error)
	Messages(ctx context.Context, userID, epoch string, after int64, now time.Time) ([]dynamo.StreamMessage, error)
	Message(ctx context.Context, userID, epoch string, offset int64) (dynamo.StreamMessage, bool, error)
	SetHeld(ctx context.Context, userID, epoch string, offset int64, to string, from ...string) (string, bool, error)
}

// Timers starts the timer of a held message, due at the window's end (package sqshold).
type Timers interface {
	Hold(ctx context.Context, t sqshold.Timer) error
}

// Recovery delivers the messages of users with a recovery stream (a connection of theirs
// opted in with the wspresence.v1 subprotocol). Users without one are delivered by the
// Handler's Deliverer exactly as before. For a user with a stream, each message:
//   - gets the next offset of the user's stream (one UpdateItem) and, with a window, is
//     kept at that position (one PutItem; a retried record finds its position again);
//   - is posted as a message frame to each opted-in connection whose recover has
//     answered, as the raw body to each live connection that did not opt in, and not at
//     all to opted-in connections whose recover has not answered (their replay covers
//     it). The connections' flags are read after the message is kept (one GetItem), so a
//     connection that becomes ready later finds the message in its re-read;
//   - is MessageDelivered if a post was accepted; if posts failed for another reason than
//     a gone connection, the record is retried (on its last receive it is held); otherwise,
//     with a window, it is held:
//     its timer is started and the outcome comes from the replay (MessageDelivered) or
//     from the timer at the window's end (MessageUndeliverable{offline}), exactly one of
//     them, claimed with a conditional write on the message item.
type Recovery struct {
	Streams     Streams
	Connections delivery.Connections
	Poster      delivery.Poster
	// Log records connections found gone (and folds their closes).
	Log    delivery.Log
	Timers Timers
	// Window is the recovery window (0: positions are given, nothing is kept or held).
	Window time.Duration
	// TimerQueueARN is the ARN of the held messages' timer queue: its records reaching
	// Handle are timers.
	TimerQueueARN string
	// Concurrency bounds the posts in flight for one message (default 8).
	Concurrency int
}

// CatchUpAfterReady is how long after a connection was marked ready a message posted to
// it comes with every kept message since its recover's answer, in order: longer than a
// recover can run (the connect function's timeout is 10 s), so the recover's last posts
// and a live post cannot reach the client out of order and have the client drop the
// lower offset.
const CatchUpAfterReady = 30 * time.Second

// deliverRecovering delivers one task through the recovery streams; ok is false for a user
// without a stream (the caller delivers as before).
func (h *Handler) deliverRecovering(ctx context.Context, task delivery.Task, retried, last bool) (delivery.Result, bool, error) {
	r := h.Recovery
	head, ok, err := r.Streams.StreamHead(ctx, task.UserID)
	if err != nil || !ok {
		return delivery.Result{}, false, err
	}
	live, err := r.Connections.LiveConnections(ctx, task.UserID)
	if err != nil {
		return delivery.Result{}, true, fmt.Errorf("deliver %s to %s: %w", task.MessageID, task.UserID, err)
	}
	now := h.now()
	var m dynamo.StreamMessage
	found := false
	if retried && r.Window > 0 {
		if m, found, err = r.Streams.FindMessage(ctx, task.UserID, head.Epoch, task.MessageID, now); err != nil {
			return delivery.Result{}, true, err
		}
	}
	var flags dynamo.Head
	if !found {
		a, err := r.Streams.Allocate(ctx, task.UserID, now)
		if errors.Is(err, dynamo.ErrNoStream) {
			return delivery.Result{}, false, nil
		}
		if err != nil {
			return delivery.Result{}, true, err
		}
		m = dynamo.StreamMessage{Epoch: a.Epoch, Offset: a.Top, MessageID: task.MessageID, Body: task.Body, At: now}
		flags = a
		if r.Window > 0 {
			if err := r.Streams.PutMessage(ctx, task.UserID, m); err != nil {
				return delivery.Result{}, true, err
			}
		}
	}
	if r.Window > 0 {
		// Read the flags after the message is kept: a connection marked ready after this
		// read re-reads the stream after its mark, and finds the message.
		var ok bool
		if flags, ok, err = r.Streams.StreamHead(ctx, task.UserID); err != nil {
			return delivery.Result{}, true, err
		} else if !ok {
			flags = dynamo.Head{}
		}
	}
	res := h.postRecovering(ctx, task, m, live, flags, now)
	if len(res.Gone) > 0 {
		closed := make([]events.ConnectionEvent, len(res.Gone))
		for i, id := range res.Gone {
			closed[i] = events.Closed(task.UserID, id, now, events.ReasonGone)
		}
		if _, err := r.Log.Append(ctx, closed...); err != nil {
			return res, true, fmt.Errorf("record gone connections of %s: %w", task.UserID, err)
		}
	}
	switch {
	case res.Delivered > 0:
		res.Outcome = events.NewMessageDelivered(task.MessageID, task.UserID, res.Delivered, h.now())
		return res, true, nil
	case r.Window > 0 && res.Failed > 0 && !last:
		// A post failed for another reason than a gone connection: the record is retried
		// (it finds the message at its position) rather than held for a client that is
		// still connected.
		return res, true, fmt.Errorf("deliver %s to %s: %d posts failed: %w", task.MessageID, task.UserID, res.Failed, delivery.ErrDeliveryFailed)
	case r.Window > 0:
		return h.hold(ctx, task, m, res)
	}
	// No window: the outcome of today's delivery.
	switch {
	case len(live) == 0 && len(res.Gone) == 0 && res.Failed == 0:
		res.Outcome = events.NewMessageUndeliverable(task.MessageID, task.UserID, events.UndeliverableOffline, h.now())
	case res.Failed == 0:
		res.Outcome = events.NewMessageUndeliverable(task.MessageID, task.UserID, events.UndeliverableGone, h.now())
	default:
		res.Outcome = events.NewMessageUndeliverable(task.MessageID, task.UserID, events.UndeliverableFailed, h.now())
		return res, true, fmt.Errorf("deliver %s to %s: %d posts failed: %w", task.MessageID, task.UserID, res.Failed, delivery.ErrDeliveryFailed)
	}
	return res, true, nil
}

// hold marks a message that reached no connection held and starts its timer; if a
// recover replayed it meanwhile, it was delivered.
func (h *Handler) hold(ctx context.Context, task delivery.Task, m dynamo.StreamMessage, res delivery.Result) (delivery.Result, bool, error) {
	r := h.Recovery
	old, set, err := r.Streams.SetHeld(ctx, task.UserID, m.Epoch, m.Offset, dynamo.HeldPending, "")
	if err != nil {
		return res, true, err
	}
	state := old
	if set {
		state = dynamo.HeldPending
	}
	switch state {
	case dynamo.HeldPending:
		// Held (again, for a retried record: a second timer decides nothing).
		if err := r.Timers.Hold(ctx, sqshold.Timer{UserID: task.UserID, Epoch: m.Epoch, Offset: m.Offset, MessageID: task.MessageID}); err != nil {
			return res, true, err
		}
		res.Outcome = nil
	case dynamo.HeldReplayed, dynamo.HeldDelivered:
		// A recover replayed it before it could be held, so it is this delivery's outcome.
		res.Outcome = events.NewMessageDelivered(task.MessageID, task.UserID, 1, h.now())
	default:
		// Its timer already decided.
		res.Outcome = nil
	}
	return res, true, nil
}

// postRecovering posts m: frames to the ready opted-in connections, the body to live
// connections that did not opt in.
func (h *Handler) postRecovering(ctx context.Context, task delivery.Task, m dynamo.StreamMessage, live []string, flags dynamo.Head, now time.Time) delivery.Result {
	r := h.Recovery
	isLive := make(map[string]bool, len(live))
	for _, c := range live {
		isLive[c] = true
	}
	var posts []delivery.Post
	var catchUp []string
	frame := recovery.MessageFrame(m.Epoch, m.Offset, task.MessageID, task.Body)
	for c := range flags.Ready {
		// A ready connection missing from the live set read before opened after it, or
		// closed: post to it only if its flag is recent (a closed one answers 410 anyway).
		if !isLive[c] && now.Sub(flags.Framed[c]) >= dynamo.StaleFlag {
			continue
		}
		if r.Window > 0 && flags.Epoch == m.Epoch && now.Sub(flags.ReadySince[c]) < CatchUpAfterReady && flags.Answered[c] < m.Offset-1 {
			catchUp = append(catchUp, c)
			continue
		}
		posts = append(posts, delivery.Post{ConnectionID: c, Data: frame})
	}
	for _, c := range live {
		if _, framed := flags.Framed[c]; !framed {
			posts = append(posts, delivery.Post{ConnectionID: c, Data: []byte(task.Body)})
		}
	}
	d := delivery.Deliverer{Poster: r.Poster, Concurrency: r.Concurrency, Logger: h.Logger}
	res := d.PostAll(ctx, posts)
	for _, c := range catchUp {
		h.catchUp(ctx, task, m, c, flags.Answered[c], now, &res)
	}
	return res
}

// catchUp posts to a connection made ready moments ago every kept message since its
// recover's answer up to m, in order (the client drops what it already has).
func (h *Handler) catchUp(ctx context.Context, task delivery.Task, m dynamo.StreamMessage, conn string, answered int64, now time.Time, res *delivery.Result) {
	kept, err := h.Recovery.Streams.Messages(ctx, task.UserID, m.Epoch, answered, now)
	if err != nil {
		h.Logger.WarnContext(ctx, "catch-up read failed", "connectionId", conn, "err", err)
		res.Failed++
		return
	}
	for _, k := range kept {
		if k.Offset > m.Offset {
			break
		}
		err := h.Recovery.Poster.Post(ctx, conn, recovery.MessageFrame(k.Epoch, k.Offset, k.MessageID, k.Body))
		switch {
		case errors.Is(err, delivery.ErrConnectionGone):
			res.Gone = append(res.Gone, conn)
			return
		case err != nil:
			h.Logger.WarnContext(ctx, "post to connection failed", "connectionId", conn, "err", err)
			res.Failed++
			return
		case k.Offset == m.Offset:
			res.Delivered++
		}
	}
}

// expire handles a held message's timer at the window's end: MessageUndeliverable
// unless a recover replayed the message (then the MessageDelivered its recover could not
// publish, if any).
func (h *Handler) expire(ctx context.Context, rec lambdaevents.SQSMessage) error {
	r := h.Recovery
	t, err := sqshold.Decode(rec.Body)
	if err != nil {
		h.Logger.ErrorContext(ctx, "timer dropped", "messageId", rec.MessageId, "err", err)
		return nil // nothing to retry
	}
	// Read first (a read costs a fifth of a failed conditional write): most timers of
	// replayed messages find their outcome published.
	m, ok, err := r.Streams.Message(ctx, t.UserID, t.Epoch, t.Offset)
	if err != nil || !ok {
		return err
	}
	state := m.Held
	if state == dynamo.HeldPending {
		old, set, err := r.Streams.SetHeld(ctx, t.UserID, t.Epoch, t.Offset, dynamo.HeldUndeliverable, dynamo.HeldPending)
		if err != nil {
			return err
		}
		if state = old; set {
			state = dynamo.HeldUndeliverable
		}
	}
	var outcome events.Published
	done := dynamo.HeldReported
	switch state {
	case dynamo.HeldUndeliverable:
		outcome = events.NewMessageUndeliverable(t.MessageID, t.UserID, events.UndeliverableOffline, h.now())
	case dynamo.HeldReplayed:
		outcome, done = events.NewMessageDelivered(t.MessageID, t.UserID, 1, h.now()), dynamo.HeldDelivered
	default:
		return nil // decided and published, or gone
	}
	if err := h.Publisher.Publish(ctx, outcome); err != nil {
		return fmt.Errorf("publish the outcome of held %s: %w", t.MessageID, err)
	}
	if _, _, err := r.Streams.SetHeld(ctx, t.UserID, t.Epoch, t.Offset, done, dynamo.HeldUndeliverable, dynamo.HeldReplayed); err != nil {
		h.Logger.WarnContext(ctx, "held outcome published but not marked", "messageId", t.MessageID, "err", err)
	}
	return nil
}
