package connection

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	lambdaevents "github.com/aws/aws-lambda-go/events"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/delivery"
	"github.com/wspresence/wspresence/internal/emf"
	"github.com/wspresence/wspresence/internal/recovery"
	"github.com/wspresence/wspresence/internal/retry"
	"github.com/wspresence/wspresence/internal/store/dynamo"
)

// Streams is the users' recovery streams (package dynamo's Store).
type Streams interface {
	Frame(ctx context.Context, userID, connectionID string, at time.Time) error
	Claim(ctx context.Context, userID, connectionID string) (dynamo.Head, error)
	Ready(ctx context.Context, userID, connectionID string, at time.Time, answered int64, stale []string) (dynamo.Head, error)
	Messages(ctx context.Context, userID, epoch string, after int64, now time.Time) ([]dynamo.StreamMessage, error)
	SetHeld(ctx context.Context, userID, epoch string, offset int64, to string, from ...string) (string, bool, error)
}

// Publisher publishes outcome events (the MessageDelivered of replayed held messages).
type Publisher interface {
	Publish(ctx context.Context, evs ...events.Published) error
}

// Recovery is the recover route's and the opt-in's wiring: a $connect that asks for the
// wspresence.v1 subprotocol gets it in its answer's Sec-WebSocket-Protocol header and its
// connection is flagged in the user's stream (created if need be) before its open is
// folded; its recover request then replays what it missed and marks it ready for live
// frames (see Recover).
type Recovery struct {
	Streams     Streams
	Connections delivery.Connections
	Poster      delivery.Poster
	// Log records connections found gone during a replay (and folds their closes).
	Log       delivery.Log
	Publisher Publisher
	// Window is the recovery window (0: no history is kept; every recover with a
	// position behind the top answers too_old).
	Window time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (r *Recovery) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// optIn reports whether a $connect request asks for the subprotocol.
func optIn(req lambdaevents.APIGatewayWebsocketProxyRequest) bool {
	for k, v := range req.Headers {
		if http.CanonicalHeaderKey(k) == "Sec-Websocket-Protocol" && recovery.Requested(v) {
			return true
		}
	}
	for k, vs := range req.MultiValueHeaders {
		if http.CanonicalHeaderKey(k) == "Sec-Websocket-Protocol" {
			for _, v := range vs {
				if recovery.Requested(v) {
					return true
				}
			}
		}
	}
	return false
}

// refill is how many times, and how far apart, a recover reads the stream again when
// offsets up to the top are missing right after the position: a sender may be between
// giving an offset and keeping the message.
var refill = struct {
	tries int
	wait  time.Duration
}{3, 50 * time.Millisecond}

// Recover is the recover route: it answers {"action":"recover"[,"epoch","offset"]} on a
// connection that opted in, exactly once: it replays the messages missed (a message frame
// each, in order; a held one's MessageDelivered is published), posts the recovered frame,
// marks the connection ready for live frames, then reads the stream again and posts what
// was kept meanwhile (the client drops what it already has by offset). A malformed or
// repeated request, or one from a connection that did not opt in, is answered with an
// error frame; the connection stays open.
func (h *Handler) Recover(ctx context.Context, req lambdaevents.APIGatewayWebsocketProxyRequest) (lambdaevents.APIGatewayProxyResponse, error) {
	r := h.Recovery
	rc := req.RequestContext
	userID := UserID(rc)
	if userID == "" {
		var err error
		if userID, err = h.Owners.OpenedBy(ctx, rc.ConnectionID); err != nil {
			return lambdaevents.APIGatewayProxyResponse{}, fmt.Errorf("recover of %s: %w: %w", rc.ConnectionID, ErrNoUser, err)
		}
	}
	if _, err := h.Message(ctx, req); err != nil { // a recover is activity too
		return lambdaevents.APIGatewayProxyResponse{}, err
	}
	refuse := func(why string) (lambdaevents.APIGatewayProxyResponse, error) {
		h.Logger.InfoContext(ctx, "recover refused", "userId", userID, "connectionId", rc.ConnectionID, "reason", why)
		if err := r.Poster.Post(ctx, rc.ConnectionID, recovery.ErrorFrame(recovery.CodeInvalidFrame, why)); err != nil && !errors.Is(err, delivery.ErrConnectionGone) {
			return lambdaevents.APIGatewayProxyResponse{}, fmt.Errorf("recover of %s: %w", rc.ConnectionID, err)
		}
		return ok(), nil
	}
	rq, err := recovery.ParseRequest([]byte(req.Body))
	if err != nil {
		return refuse("a recover request is {\"action\":\"recover\"} or {\"action\":\"recover\",\"epoch\":E,\"offset\":N}")
	}
	head, err := r.Streams.Claim(ctx, userID, rc.ConnectionID)
	switch {
	case errors.Is(err, dynamo.ErrNotFramed):
		return refuse("recover needs the " + recovery.Subprotocol + " subprotocol")
	case errors.Is(err, dynamo.ErrRecoverRepeated):
		return refuse("recover was already sent on this connection")
	case err != nil:
		return lambdaevents.APIGatewayProxyResponse{}, fmt.Errorf("recover of %s: %w", rc.ConnectionID, err)
	}
	now := r.now()
	var kept []dynamo.StreamMessage
	if rq.At != nil && rq.At.Epoch == head.Epoch && rq.At.Offset < head.Top && r.Window > 0 {
		for try := 0; ; try++ {
			if kept, err = r.Streams.Messages(ctx, userID, head.Epoch, rq.At.Offset, now); err != nil {
				return lambdaevents.APIGatewayProxyResponse{}, fmt.Errorf("recover of %s: %w", rc.ConnectionID, err)
			}
			// Missing offsets right after the position are gone; missing ones after kept
			// ones may still be being written.
			if recovery.Complete(*rq.At, offsets(kept), head.Top) || len(kept) == 0 || kept[0].Offset != rq.At.Offset+1 || try == refill.tries {
				break
			}
			if err := retry.Sleep(ctx, refill.wait); err != nil {
				return lambdaevents.APIGatewayProxyResponse{}, err
			}
		}
	}
	plan := recovery.Decide(rq, recovery.Stream{Epoch: head.Epoch, Top: head.Top, Kept: offsets(kept)}, r.Window > 0)
	var replay []dynamo.StreamMessage
	for _, m := range kept {
		if plan.Replays(rq, m.Offset) {
			replay = append(replay, m)
		}
	}
	replayed, err := h.replay(ctx, userID, rc.ConnectionID, replay)
	if err != nil || replayed < len(replay) {
		return ok(), err // gone: nothing more to post
	}
	if gone, err := h.post(ctx, userID, rc.ConnectionID, plan.Answer.Frame()); gone || err != nil {
		return ok(), err
	}
	// Ready for live frames; then what was kept meanwhile (a sender that read the flags
	// before the mark skipped this connection).
	live, err := r.Connections.LiveConnections(ctx, userID)
	if err != nil {
		return lambdaevents.APIGatewayProxyResponse{}, fmt.Errorf("recover of %s: %w", rc.ConnectionID, err)
	}
	ready, err := r.Streams.Ready(ctx, userID, rc.ConnectionID, r.now(), plan.Answer.Offset, stale(head, live, rc.ConnectionID, r.now()))
	if err != nil {
		return lambdaevents.APIGatewayProxyResponse{}, fmt.Errorf("recover of %s: %w", rc.ConnectionID, err)
	}
	if r.Window > 0 && ready.Epoch == plan.Answer.Epoch && ready.Top > plan.Answer.Offset {
		more, err := r.Streams.Messages(ctx, userID, ready.Epoch, plan.Answer.Offset, r.now())
		if err != nil {
			return lambdaevents.APIGatewayProxyResponse{}, fmt.Errorf("recover of %s: %w", rc.ConnectionID, err)
		}
		if _, err := h.replay(ctx, userID, rc.ConnectionID, more); err != nil {
			return lambdaevents.APIGatewayProxyResponse{}, err
		}
	}
	h.Logger.InfoContext(ctx, "recovered", "userId", userID, "connectionId", rc.ConnectionID, "recovered", plan.Answer.Recovered,
		"reason", string(plan.Answer.Reason), "replayed", plan.Answer.Replayed)
	_ = h.Metrics.Emit(map[string]string{"Function": "connect"},
		emf.Metric{Name: "Recovers", Value: 1, Unit: emf.Count},
		emf.Metric{Name: "MessagesReplayed", Value: float64(replayed), Unit: emf.Count})
	return ok(), nil
}

func offsets(ms []dynamo.StreamMessage) []int64 {
	out := make([]int64, len(ms))
	for i, m := range ms {
		out[i] = m.Offset
	}
	return out
}

// stale lists the flagged connections a recover removes: not live, flagged long enough
// ago that their $connect is over.
func stale(head dynamo.Head, live []string, self string, now time.Time) []string {
	isLive := map[string]bool{self: true}
	for _, c := range live {
		isLive[c] = true
	}
	var out []string
	for c, at := range head.Framed {
		if !isLive[c] && now.Sub(at) > dynamo.StaleFlag {
			out = append(out, c)
		}
	}
	return out
}

// post posts one frame; gone reports a connection found gone (its close recorded).
func (h *Handler) post(ctx context.Context, userID, connectionID string, frame []byte) (gone bool, err error) {
	err = h.Recovery.Poster.Post(ctx, connectionID, frame)
	switch {
	case err == nil:
		return false, nil
	case errors.Is(err, delivery.ErrConnectionGone):
		if _, err := h.Recovery.Log.Append(ctx, events.Closed(userID, connectionID, h.Recovery.now(), events.ReasonGone)); err != nil {
			return true, fmt.Errorf("record %s gone: %w", connectionID, err)
		}
		return true, nil
	}
	return false, fmt.Errorf("post to %s: %w", connectionID, err)
}

// replay posts the messages in order and settles the outcome of those held (published
// MessageDelivered); it returns how many were posted before the connection was found
// gone.
func (h *Handler) replay(ctx context.Context, userID, connectionID string, ms []dynamo.StreamMessage) (int, error) {
	r := h.Recovery
	var delivered []events.Published
	var settled []dynamo.StreamMessage
	n := 0
	for _, m := range ms {
		gone, err := h.post(ctx, userID, connectionID, recovery.MessageFrame(m.Epoch, m.Offset, m.MessageID, m.Body))
		if err != nil || gone {
			if perr := h.settle(ctx, userID, delivered, settled); perr != nil && err == nil {
				err = perr
			}
			return n, err
		}
		n++
		// Replayed: a sender that has not decided yet finds it so; a held one is ours to
		// report.
		old, set, err := r.Streams.SetHeld(ctx, userID, m.Epoch, m.Offset, dynamo.HeldReplayed, "", dynamo.HeldPending)
		if err != nil {
			return n, err
		}
		if set && old == dynamo.HeldPending {
			delivered = append(delivered, events.NewMessageDelivered(m.MessageID, userID, 1, r.now()))
			settled = append(settled, m)
		}
	}
	return n, h.settle(ctx, userID, delivered, settled)
}

// settle publishes the MessageDelivered of replayed held messages and marks them
// published; if publishing fails they stay replayed, and their timers publish it.
func (h *Handler) settle(ctx context.Context, userID string, delivered []events.Published, ms []dynamo.StreamMessage) error {
	if len(delivered) == 0 {
		return nil
	}
	if err := h.Recovery.Publisher.Publish(ctx, delivered...); err != nil {
		h.Logger.WarnContext(ctx, "outcomes of replayed messages left to their timers", "userId", userID, "err", err)
		return nil
	}
	for _, m := range ms {
		if _, _, err := h.Recovery.Streams.SetHeld(ctx, userID, m.Epoch, m.Offset, dynamo.HeldDelivered, dynamo.HeldReplayed); err != nil {
			return err
		}
	}
	return nil
}
