package localrt

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/delivery"
	"github.com/wspresence/wspresence/internal/recovery"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// Missed-message recovery on the local runtime (the protocol is package recovery's): an
// opted-in connection gets no message frame until it sent recover; its answer replays,
// from the store, what the client missed, then the connection goes live, and a message
// accepted meanwhile is either in the replay or queued behind it, never both.

// streamState is where an opted-in connection stands in its user's stream.
type streamState int

const (
	// streamAwaiting: no recover yet; messages are held for the replay.
	streamAwaiting streamState = iota
	// streamReplaying: the replay is being written; messages past it queue behind it.
	streamReplaying
	// streamLive: messages are written as they come.
	streamLive
)

// streamFollow is an opted-in connection's place in its user's stream (guarded by the
// connection's mu): past the recover, the stream generation it follows and the last
// offset the replay covers.
type streamFollow struct {
	state    streamState
	gen, top int64
}

// errHeld is a frame's receipt when its message was not written to a recovering
// connection but will be replayed to it (or expire with the window).
var errHeld = errors.New("held for the recovery replay")

// offer queues f, the frame of the message at position (gen, offset), for the opted-in
// connection c: it answers errHeld, without queueing, while c has not recovered or when
// the replay covers the message; false means the send queue is full (see enqueue).
func (c *wsConn) offer(f frame, gen, offset int64) bool {
	c.mu.Lock()
	st := c.stream
	if st.state == streamAwaiting || (gen == st.gen && offset <= st.top) || offset == 0 {
		c.mu.Unlock()
		f.written(errHeld)
		return true
	}
	c.mu.Unlock()
	return c.enqueue(f)
}

// streamReader is what recovery reads of the users' streams (the store).
type streamReader interface {
	OpenStream(userID string) sqlite.StreamTop
	StreamEpoch(gen int64) string
	StreamRange(ctx context.Context, userID string, gen, after, upTo int64, limit int) ([]sqlite.StreamEntry, error)
	KeptCount(ctx context.Context, userID string, gen, after, upTo int64) (int64, error)
	PruneStreams(ctx context.Context, cutoff time.Time) (int64, error)
	MarkRecovering(ctx context.Context, connectionID, userID string, on bool) error
	TakeRecovering(ctx context.Context) ([]sqlite.RecoveringUser, error)
}

var _ streamReader = (*sqlite.Store)(nil)

// replayPage is how many stream entries one read of a replay takes.
const replayPage = 256

// messageFrame is m's frame for opted-in connections.
func (s *Server) messageFrame(m sqlite.QueuedMessage) []byte {
	return recovery.MessageFrame(s.streams.StreamEpoch(m.Gen), m.Offset, m.MessageID, m.Body)
}

// actionRecover is the action of a client's recover request.
const actionRecover = "recover"

// handleRecover answers a recover frame of the opted-in connection c (its read loop
// calls it): a malformed or repeated one gets an error frame; else the replay runs in a
// goroutine of its own, the read loop going on (pings are answered).
func (s *Server) handleRecover(ctx context.Context, c *wsConn, data []byte) {
	req, err := recovery.ParseRequest(data)
	c.mu.Lock()
	repeated := c.stream.state != streamAwaiting
	var top sqlite.StreamTop
	if err == nil && !repeated {
		// Under c's lock: a message dispatched before it is at or below top (its position
		// was taken before its dispatch) and is replayed; one dispatched after it sees
		// the connection replaying and is queued behind the replay if above top.
		top = s.streams.OpenStream(c.userID)
		c.stream = streamFollow{state: streamReplaying, gen: top.Gen, top: top.Offset}
	}
	c.mu.Unlock()
	switch {
	case repeated:
		s.sendError(ctx, c, "recover was already answered on this connection")
		return
	case err != nil:
		s.sendError(ctx, c, err.Error())
		return
	}
	go c.running(func() { s.replay(ctx, c, req, top) })
}

// replay answers req: the messages after the client's position up to top when they are
// all kept, then the answer, then lets the connection go live. A replayed message still
// without outcome is MessageDelivered. A replay that cannot read the store or write
// closes the connection (the client recovers again).
func (s *Server) replay(ctx context.Context, c *wsConn, req recovery.Request, top sqlite.StreamTop) {
	answer, err := s.replayStream(ctx, c, req, top)
	if err == nil {
		err = s.writeFrame(ctx, c, answer.Frame())
	}
	if err != nil {
		s.log.Info("recovery replay failed", "userId", c.userID, "connectionId", c.id, "err", err)
		c.setReason(events.ReasonExpired)
		c.ws.CloseNow()
		return
	}
	s.metrics.recoveries.WithLabelValues(recoveryOutcome(answer)).Inc()
	c.mu.Lock()
	c.stream.state = streamLive
	c.startWriterLocked()
}

func recoveryOutcome(a recovery.Recovered) string {
	if a.Recovered {
		return "recovered"
	}
	return string(a.Reason)
}

// replayStream decides req against c's stream (recovery.Decide) and writes the messages
// it replays, in order; it returns the answer to send after them.
func (s *Server) replayStream(ctx context.Context, c *wsConn, req recovery.Request, top sqlite.StreamTop) (recovery.Recovered, error) {
	stream := recovery.Stream{Epoch: s.streams.StreamEpoch(top.Gen), Top: top.Offset}
	windowOn := s.cfg.RecoveryWindow > 0
	if windowOn && req.At != nil && req.At.Epoch == stream.Epoch && req.At.Offset < top.Offset {
		// Offsets are unique per stream generation: all are kept when they count as many
		// as the positions after the client's.
		n, err := s.streams.KeptCount(ctx, c.userID, top.Gen, req.At.Offset, top.Offset)
		if err != nil {
			return recovery.Recovered{}, fmt.Errorf("read the stream: %w", err)
		}
		for o := req.At.Offset + 1; n == top.Offset-req.At.Offset && o <= top.Offset; o++ {
			stream.Kept = append(stream.Kept, o)
		}
	}
	plan := recovery.Decide(req, stream, windowOn)
	if !plan.Answer.Recovered || plan.Answer.Replayed == 0 {
		return plan.Answer, nil
	}
	at, replayed := req.At.Offset, 0
	for at < plan.Answer.Offset {
		page, err := s.streams.StreamRange(ctx, c.userID, top.Gen, at, plan.Answer.Offset, replayPage)
		if err != nil {
			return recovery.Recovered{}, fmt.Errorf("read the stream: %w", err)
		}
		if len(page) == 0 {
			return recovery.Recovered{}, errors.New("the stream was pruned during the replay")
		}
		for _, e := range page {
			if e.Offset != at+1 || !plan.Replays(req, e.Offset) {
				// Pruned under the replay: the client recovers again and is told.
				return recovery.Recovered{}, errors.New("the stream was pruned during the replay")
			}
			if err := s.writeFrame(ctx, c, recovery.MessageFrame(stream.Epoch, e.Offset, e.MessageID, e.Body)); err != nil {
				return recovery.Recovered{}, err
			}
			at, replayed = e.Offset, replayed+1
			if e.Pending {
				s.held.take(e.Seq)
				now := s.now()
				s.complete(completion{msg: sqlite.QueuedMessage{Seq: e.Seq, EnqueuedAt: e.EnqueuedAt}, decidedAt: now, keep: true,
					outcome: events.NewMessageDelivered(e.MessageID, c.userID, 1, now)})
			}
		}
	}
	s.metrics.replayed.Add(float64(replayed))
	return plan.Answer, nil
}

// writeFrame writes one text frame to c at once (recovery's own frames; the writer
// writes the queued ones).
func (s *Server) writeFrame(ctx context.Context, c *wsConn, data []byte) error {
	wctx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
	defer cancel()
	if err := c.ws.Write(wctx, websocket.MessageText, data); err != nil {
		return fmt.Errorf("write: %w: %w", err, delivery.ErrConnectionGone)
	}
	if err := c.sock.waitSent(wctx); err != nil { // on the socket, not merely accepted
		return fmt.Errorf("write: %w: %w", err, delivery.ErrConnectionGone)
	}
	return nil
}

// sendError answers a frame with an error frame; the connection stays open.
func (s *Server) sendError(ctx context.Context, c *wsConn, msg string) {
	go c.running(func() { _ = s.writeFrame(ctx, c, recovery.ErrorFrame(recovery.CodeInvalidFrame, msg)) })
}

// holds reports whether a message reached by no connection waits for its user's
// reconnect: with a recovery window, when the user holds an opted-in connection that
// has not recovered, or the last one closed within the grace period.
func (s *Server) holds(m sqlite.QueuedMessage) bool {
	return s.cfg.RecoveryWindow > 0 && m.Offset > 0 && s.held.recent(m.UserID, s.now().Add(-s.cfg.OfflineGrace))
}

// keeps reports whether a message of userID, done, is kept for the recovery window: with
// a window, when the user's last opted-in connection closed within it (a live one keeps
// the messages it is sent).
func (s *Server) keeps(userID string) bool {
	return s.cfg.RecoveryWindow > 0 && s.held.recent(userID, s.now().Add(-s.cfg.RecoveryWindow))
}

// heldMessages are the messages reached by no connection that wait, for the recovery
// window after they were accepted, for a replay to deliver them. Entries are removed by
// the replay that delivers them or by expire once the window passed (their outcome then
// MessageUndeliverable); a restart holds again what is still pending. Their count is
// bounded by Config.MaxHeldMessages, at acceptance (errHeldFull): a message accepted is
// always held, so the count passes the bound by at most the messages accepted before it
// was reached and not yet dispatched. Each user's count is bounded too, by
// Config.MaxHeldMessagesPerUser (errUserHeldFull, for the messages to that user only, the
// same way), so one user who stays away cannot take the whole bound from the others. An
// entry keeps no body (the replay reads it from the store). closed remembers when each
// user's last opted-in connection closed, for the recovery window and the grace period,
// whichever is longer (expire forgets older ones).
type heldMessages struct {
	mu    sync.Mutex
	bySeq map[int64]heldMessage
	// order is the held messages' sequence numbers in acceptance order, for expire; the
	// ones a replay took stay in it until expire passes them, or until they outnumber the
	// held ones (add drops them then): it holds at most twice the held ones, plus 1,024.
	order  []int64
	closed map[string]time.Time
	// perUser counts the held messages of each user: an entry per user with at least one
	// held, removed when take or expire brings its count to zero.
	perUser map[string]int
	// n is len(bySeq), read without the lock by full.
	n atomic.Int64
}

// heldOrderSlack is how many taken sequence numbers heldMessages.order may keep beyond
// twice the held messages before add drops them.
const heldOrderSlack = 1024

// heldMessage is what a held message keeps: enough to expire it.
type heldMessage struct {
	Seq               int64
	MessageID, UserID string
	EnqueuedAt        time.Time
}

// errHeldFull refuses a message while the held messages are at Config.MaxHeldMessages.
var errHeldFull = errors.New("the messages held for recovering users are at their bound")

// errUserHeldFull refuses a message while one of its users has Config.MaxHeldMessagesPerUser
// messages held; it is an errHeldFull.
var errUserHeldFull = fmt.Errorf("%w for one of its users", errHeldFull)

func newHeldMessages() *heldMessages {
	return &heldMessages{bySeq: map[int64]heldMessage{}, closed: map[string]time.Time{}, perUser: map[string]int{}}
}

func (h *heldMessages) add(m sqlite.QueuedMessage) {
	h.mu.Lock()
	if _, ok := h.bySeq[m.Seq]; !ok {
		h.bySeq[m.Seq] = heldMessage{Seq: m.Seq, MessageID: m.MessageID, UserID: m.UserID, EnqueuedAt: m.EnqueuedAt}
		if len(h.order) >= 2*len(h.bySeq)+heldOrderSlack {
			h.order = slices.DeleteFunc(h.order, func(seq int64) bool { _, ok := h.bySeq[seq]; return !ok })
		}
		h.order = append(h.order, m.Seq)
		h.perUser[m.UserID]++
		h.n.Store(int64(len(h.bySeq)))
	}
	h.mu.Unlock()
}

func (h *heldMessages) take(seq int64) {
	h.mu.Lock()
	if m, ok := h.bySeq[seq]; ok {
		delete(h.bySeq, seq)
		h.uncount(m.UserID)
		h.n.Store(int64(len(h.bySeq)))
	}
	h.mu.Unlock()
}

// uncount takes one held message off userID's count, forgetting the user at zero (with
// mu held).
func (h *heldMessages) uncount(userID string) {
	if n := h.perUser[userID] - 1; n > 0 {
		h.perUser[userID] = n
	} else {
		delete(h.perUser, userID)
	}
}

// full reports whether bound or more messages are held.
func (h *heldMessages) full(bound int) bool { return h.n.Load() >= int64(bound) }

// userFull reports whether one of msgs' users has perUser or more messages held.
func (h *heldMessages) userFull(msgs []sqlite.QueuedMessage, perUser int) bool {
	if h.n.Load() == 0 {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, m := range msgs {
		if h.perUser[m.UserID] >= perUser {
			return true
		}
	}
	return false
}

// optedInClosed records that an opted-in connection of userID closed at at.
func (h *heldMessages) optedInClosed(userID string, at time.Time) {
	h.mu.Lock()
	h.closed[userID] = at
	h.mu.Unlock()
}

// recent reports whether an opted-in connection of userID closed after since.
func (h *heldMessages) recent(userID string, since time.Time) bool {
	h.mu.Lock()
	at, ok := h.closed[userID]
	h.mu.Unlock()
	return ok && at.After(since)
}

// expire removes and returns the messages accepted before cutoff, and forgets the
// closes before closedCutoff.
func (h *heldMessages) expire(cutoff, closedCutoff time.Time) []heldMessage {
	h.mu.Lock()
	defer h.mu.Unlock()
	defer func() { h.n.Store(int64(len(h.bySeq))) }()
	var out []heldMessage
	i := 0
	for ; i < len(h.order); i++ {
		m, ok := h.bySeq[h.order[i]]
		if !ok {
			continue
		}
		if !m.EnqueuedAt.Before(cutoff) {
			break
		}
		delete(h.bySeq, m.Seq)
		h.uncount(m.UserID)
		out = append(out, m)
	}
	h.order = h.order[i:]
	for u, at := range h.closed {
		if at.Before(closedCutoff) {
			delete(h.closed, u)
		}
	}
	return out
}

// count is the number of messages held.
func (h *heldMessages) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.bySeq)
}

// expireHeldEvery is how often held messages past the window are reported undeliverable.
const expireHeldEvery = time.Second

// keepStreams runs while the server does: every second it reports the held messages
// whose window passed as MessageUndeliverable{offline}, and every streamPruneEvery it
// forgets the stream positions older than the window.
func (s *Server) keepStreams(ctx context.Context) {
	t := time.NewTicker(expireHeldEvery)
	defer t.Stop()
	var lastPrune time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := s.now()
		for _, m := range s.held.expire(now.Add(-s.cfg.RecoveryWindow), now.Add(-max(s.cfg.OfflineGrace, s.cfg.RecoveryWindow))) {
			// A held message keeps no body: its row is rewritten as stored.
			s.complete(completion{msg: sqlite.QueuedMessage{Seq: m.Seq, EnqueuedAt: m.EnqueuedAt}, decidedAt: now,
				outcome: events.NewMessageUndeliverable(m.MessageID, m.UserID, events.UndeliverableOffline, now)})
		}
		if now.Sub(lastPrune) < s.streamPruneEvery() {
			continue
		}
		lastPrune = now
		if n, err := s.streams.PruneStreams(ctx, now.Add(-s.cfg.RecoveryWindow)); err != nil {
			if ctx.Err() == nil && !errors.Is(err, sqlite.ErrClosed) {
				s.log.Error("prune streams", "err", err)
			}
		} else if n > 0 {
			s.log.Debug("pruned stream positions", "count", n)
		}
	}
}

// streamPruneEvery spaces the stream prunes: a tenth of the window, between a second and
// a minute.
func (s *Server) streamPruneEvery() time.Duration {
	return min(max(s.cfg.RecoveryWindow/10, time.Second), time.Minute)
}
