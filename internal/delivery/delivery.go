package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/wspresence/wspresence/events"
)

// ErrConnectionGone is returned by a Poster when the connection no longer exists (410 Gone
// on AWS; an unknown or broken socket locally).
var ErrConnectionGone = errors.New("connection gone")

// GoneError is an ErrConnectionGone that says why the connection is gone, when the poster
// knows better than "gone" (a local connection closed for a full send queue is expired).
type GoneError struct {
	Reason events.CloseReason
	Err    error
}

// Error implements error.
func (e *GoneError) Error() string { return fmt.Sprintf("connection gone (%s): %v", e.Reason, e.Err) }

// Unwrap makes errors.Is match ErrConnectionGone and the cause.
func (e *GoneError) Unwrap() []error { return []error{ErrConnectionGone, e.Err} }

func goneReason(err error) events.CloseReason {
	var ge *GoneError
	if errors.As(err, &ge) && ge.Reason.Valid() {
		return ge.Reason
	}
	return events.ReasonGone
}

// ErrDeliveryFailed is returned by Deliver when no connection was reached and at least one
// post failed for a reason other than gone: the message should be retried.
var ErrDeliveryFailed = errors.New("delivery failed")

// Connections reads the view. LiveConnections must be safe for concurrent use and return
// the ids of the user's live connections (none for an unknown user).
type Connections interface {
	LiveConnections(ctx context.Context, userID string) ([]string, error)
}

// Poster posts a text frame to one connection. It returns ErrConnectionGone (wrapped or
// not) when the connection no longer exists, and must be safe for concurrent use.
type Poster interface {
	Post(ctx context.Context, connectionID string, data []byte) error
}

// Log appends connection events (idempotently, by natural key).
type Log interface {
	Append(ctx context.Context, evs ...events.ConnectionEvent) (int, error)
}

// Deliverer delivers messages. Its fields are set once before use.
type Deliverer struct {
	Connections Connections
	Poster      Poster
	Log         Log
	// Concurrency bounds the posts in flight for one message (default 8).
	Concurrency int
	// Now is the clock (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

// Result is the outcome of delivering one message to one user.
type Result struct {
	// Delivered is the number of connections reached.
	Delivered int
	// Gone lists the connections found gone (and recorded closed).
	Gone []string
	// goneReasons holds the close reason of each of Gone.
	goneReasons []events.CloseReason
	// Failed is the number of posts that failed for another reason.
	Failed int
	// Outcome is the event to publish.
	Outcome events.Published
}

// Deliver posts body to every live connection of userID. It returns an error wrapping
// ErrDeliveryFailed when nothing was reached and some post failed for a reason other than
// gone (the caller retries, and after its last attempt publishes Result.Outcome, which is
// then MessageUndeliverable{failed}); any other error means the view or the log could not
// be reached.
func (d *Deliverer) Deliver(ctx context.Context, messageID, userID, body string) (Result, error) {
	now := time.Now
	if d.Now != nil {
		now = d.Now
	}
	conns, err := d.Connections.LiveConnections(ctx, userID)
	if err != nil {
		return Result{}, fmt.Errorf("deliver %s to %s: %w", messageID, userID, err)
	}
	var res Result
	if len(conns) > 0 {
		res = d.post(ctx, conns, []byte(body))
	}
	if len(res.Gone) > 0 {
		at := now()
		closed := make([]events.ConnectionEvent, len(res.Gone))
		for i, id := range res.Gone {
			closed[i] = events.Closed(userID, id, at, res.goneReasons[i])
		}
		if _, err := d.Log.Append(ctx, closed...); err != nil {
			return res, fmt.Errorf("record gone connections of %s: %w", userID, err)
		}
	}
	at := now()
	switch {
	case res.Delivered > 0:
		res.Outcome = events.NewMessageDelivered(messageID, userID, res.Delivered, at)
	case len(conns) == 0:
		res.Outcome = events.NewMessageUndeliverable(messageID, userID, events.UndeliverableOffline, at)
	case res.Failed == 0:
		res.Outcome = events.NewMessageUndeliverable(messageID, userID, events.UndeliverableGone, at)
	default:
		res.Outcome = events.NewMessageUndeliverable(messageID, userID, events.UndeliverableFailed, at)
		return res, fmt.Errorf("deliver %s to %s: %d of %d posts failed: %w", messageID, userID, res.Failed, len(conns), ErrDeliveryFailed)
	}
	return res, nil
}

func (d *Deliverer) post(ctx context.Context, conns []string, data []byte) Result {
	posts := make([]Post, len(conns))
	for i, id := range conns {
		posts[i] = Post{ConnectionID: id, Data: data}
	}
	return d.PostAll(ctx, posts)
}

// Post is one frame for one connection.
type Post struct {
	ConnectionID string
	Data         []byte
}

// PostAll posts each frame (at most Concurrency at once) and counts what happened:
// Result.Delivered, Result.Gone (the connections found gone, not yet recorded) and
// Result.Failed; it leaves Result.Outcome unset.
func (d *Deliverer) PostAll(ctx context.Context, posts []Post) Result {
	limit := d.Concurrency
	if limit <= 0 {
		limit = 8
	}
	var (
		mu  sync.Mutex
		res Result
		wg  sync.WaitGroup
		sem = make(chan struct{}, limit)
	)
	for _, p := range posts {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			err := d.Poster.Post(ctx, p.ConnectionID, p.Data)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				res.Delivered++
			case errors.Is(err, ErrConnectionGone):
				res.Gone = append(res.Gone, p.ConnectionID)
				res.goneReasons = append(res.goneReasons, goneReason(err))
			default:
				res.Failed++
				if d.Logger != nil {
					d.Logger.WarnContext(ctx, "post to connection failed", "connectionId", p.ConnectionID, "err", err)
				}
			}
		}()
	}
	wg.Wait()
	return res
}
