package localrt

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/delivery"
	"github.com/wspresence/wspresence/internal/presence"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

const (
	// deliverBatch is how many queued messages one pump cycle takes.
	deliverBatch = 1024
	// retryDelay spaces the attempts.
	retryDelay = time.Second
)

// pump is the local stand-in for the queue trigger. At start it dispatches what a previous
// run left in the queue table; then it dispatches, from memory, the messages each commit
// queued (the store hands them over right after the commit), in commit order.
func (s *Server) pump(ctx context.Context) {
	after, ok := s.drainTable(ctx)
	if !ok {
		return
	}
	var spare []sqlite.QueuedMessage
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		}
		taken := s.queued.take(spare)
		// Messages the table pass already dispatched are skipped.
		i := 0
		for i < len(taken) && taken[i].Seq <= after {
			i++
		}
		for msgs := taken[i:]; len(msgs) > 0; {
			n := min(len(msgs), deliverBatch)
			s.cycle(msgs[:n])
			msgs = msgs[n:]
		}
		// dispatch copies what it keeps: the slice is the feed's next one, unless a
		// burst grew it past deliverBatch.
		spare = nil
		if cap(taken) <= deliverBatch {
			clear(taken)
			spare = taken[:0]
		}
	}
}

// drainTable dispatches the messages the queue table holds pending (a previous run's),
// retrying while the store cannot be read, and returns the last sequence number it
// dispatched; ok is false if ctx ended first.
func (s *Server) drainTable(ctx context.Context) (after int64, ok bool) {
	for ctx.Err() == nil {
		msgs, err := s.queue.PendingMessages(ctx, after, deliverBatch)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("read queue", "err", err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(retryDelay):
			}
			continue
		}
		if len(msgs) == 0 {
			return after, true
		}
		s.cycle(msgs)
		after = msgs[len(msgs)-1].Seq
	}
	return after, false
}

// queuedFeed holds the messages committed since the pump last took them; take empties it.
// Its slice is the pump's previous one, emptied, when that held at most deliverBatch.
type queuedFeed struct {
	mu   sync.Mutex
	msgs []sqlite.QueuedMessage
}

// push adds what one commit queued; the store calls it in commit order.
func (q *queuedFeed) push(msgs []sqlite.QueuedMessage) {
	q.mu.Lock()
	q.msgs = append(q.msgs, msgs...)
	q.mu.Unlock()
}

// take returns what was pushed since the last take, and gives the feed spare (empty,
// or nil) to fill next: two slices serve pump and store in turn.
func (q *queuedFeed) take(spare []sqlite.QueuedMessage) []sqlite.QueuedMessage {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.msgs
	q.msgs = spare
	return out
}

func (s *Server) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// cycle dispatches msgs, in order. Every connection whose open was committed before a
// message was accepted is in the view it is dispatched from: the commit folded it.
func (s *Server) cycle(msgs []sqlite.QueuedMessage) {
	users := make([]string, 0, len(msgs))
	seen := make(map[string]bool, len(msgs))
	for _, m := range msgs {
		if !seen[m.UserID] {
			seen[m.UserID] = true
			users = append(users, m.UserID)
		}
	}
	live := s.view.LiveConnectionsOf(users)
	for _, m := range msgs {
		s.dispatch(m, live[m.UserID])
	}
}

// dispatch posts m to each of its user's live connections, in queue order (so a user's
// messages arrive in order), and does not wait: the message's outcome is decided when the
// last of its frames is written or found gone, and recorded by the completer. A frame
// merely queued on a connection is never reported delivered; one still unwritten when the
// process dies leaves the message pending, and the next start dispatches it again.
func (s *Server) dispatch(m sqlite.QueuedMessage, conns []string) {
	if len(conns) == 0 {
		s.undeliverable(m, events.UndeliverableOffline)
		return
	}
	p := &inFlight{msg: m, remaining: len(conns), s: s}
	var few [4]*wsConn // a user's connections, mostly: no allocation for them
	held := few[:0]
	if len(conns) > len(few) {
		held = make([]*wsConn, 0, len(conns))
	}
	for _, id := range conns {
		c := s.hub.get(id)
		held = append(held, c)
		if c != nil && c.optIn {
			p.optIn = true
		}
	}
	data := []byte(m.Body)
	var framed []byte
	for i, id := range conns {
		c := held[i]
		var err error
		switch {
		case c == nil:
			err = fmt.Errorf("post to %s: %w", id, delivery.ErrConnectionGone)
		case c.optIn:
			if framed == nil {
				framed = s.messageFrame(m)
			}
			f := frame{data: framed, p: p, replayable: s.cfg.RecoveryWindow > 0 && m.Offset > 0}
			if !c.offer(f, m.Gen, m.Offset) {
				f.written(c.queued(false))
			}
			continue
		default:
			err = s.hub.post(c, data, p)
		}
		if err != nil {
			p.receipt(err)
		}
	}
}

// undeliverable decides the outcome of m, reached by no connection: held for the
// recovery window when its user may come back for it (holds), else MessageUndeliverable.
func (s *Server) undeliverable(m sqlite.QueuedMessage, reason events.UndeliverableReason) {
	if s.holds(m) {
		s.held.add(m)
		return
	}
	now := s.now()
	s.complete(completion{msg: m, decidedAt: now, keep: s.keeps(m.UserID),
		outcome: events.NewMessageUndeliverable(m.MessageID, m.UserID, reason, now)})
}

// inFlight is one message on its way to one user's connections.
type inFlight struct {
	s         *Server
	msg       sqlite.QueuedMessage
	mu        sync.Mutex
	remaining int
	written   int
	held      int
	// optIn is set when one of the connections opted in to recovery.
	optIn bool
}

// receipt counts one frame written (err nil), held for a recovering connection
// (errHeld), or gone; the last one decides the outcome.
func (p *inFlight) receipt(err error) {
	p.mu.Lock()
	switch {
	case err == nil:
		p.written++
	case errors.Is(err, errHeld):
		p.held++
	}
	p.remaining--
	done, written, held := p.remaining == 0, p.written, p.held
	p.mu.Unlock()
	if !done {
		return
	}
	m := p.msg
	switch {
	case written > 0:
		now := p.s.now()
		p.s.complete(completion{msg: m, decidedAt: now, keep: p.optIn || p.s.keeps(m.UserID),
			outcome: events.NewMessageDelivered(m.MessageID, m.UserID, written, now)})
	case held > 0:
		p.s.held.add(m)
	default:
		p.s.undeliverable(m, events.UndeliverableGone)
	}
}

// replayable is the receipt of a frame for an opted-in connection when the message has a
// position kept for the window: a frame that could not be written (the connection closed
// with it queued, its queue was full) is held for the client's recovery, which replays it,
// exactly as a message that found the connection not yet recovered.
func (p *inFlight) replayable(err error) {
	if err != nil && !errors.Is(err, errHeld) {
		err = fmt.Errorf("%w: %w", errHeld, err)
	}
	p.receipt(err)
}

// completion is a message's decided outcome, waiting to be recorded.
type completion struct {
	// msg is the message as queued: the store rewrites its row from it (Complete).
	msg       sqlite.QueuedMessage
	decidedAt time.Time
	outcome   events.Published
	// keep keeps the message for the recovery window (its user recovers).
	keep bool
}

func (s *Server) complete(c completion) { s.outcomes.add(c) }

// completionWindow is how long the completer gathers outcomes after the first of a batch
// before recording them, and completionBatch the most it gathers: one commit records the
// outcomes of a window's messages instead of one commit each, about 20 commits a second at
// moderate rates, and at high rates a commit of at most completionBatch outcomes, which
// holds the writer (and the enqueues queued behind it) about a millisecond. Nothing waits
// for it (a message's 202 was answered at its enqueue, its frame written before its
// outcome was decided); the outcome events reach /events and the webhooks up to that much
// later, and a crash leaves the outcomes not yet recorded (a window's at most) pending:
// their messages are delivered again by the next start.
const (
	completionWindow = 50 * time.Millisecond
	completionBatch  = 64
)

// completer records the decided outcomes in batches, those decided within a
// completionWindow (or completionBatch of them): each batch marks its messages done and
// writes their outcome events to the outbox in one transaction. A batch that cannot be
// written is retried until it is. At shutdown it records what is left, once every
// connection has ended (and so every frame has its receipt).
func (s *Server) completer(ctx context.Context) {
	window := time.NewTimer(completionWindow)
	window.Stop()
	q := s.outcomes
	// batch and rec are reused from one batch to the next (at most completionBatch
	// entries each, but the last at shutdown), emptied after each record so that no
	// message outlives its batch.
	var batch []completion
	var rec recordBuffers
	for {
		// The queue wakes the completer at the first outcome of a window and when a
		// batch is full, and the window's timer at its end: not at every outcome.
		for q.len() == 0 && ctx.Err() == nil {
			select {
			case <-q.wake:
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			s.record(context.WithoutCancel(ctx), q.take(batch, 0), &rec, true)
			return
		}
		window.Reset(completionWindow)
	fill:
		for q.len() < completionBatch {
			select {
			case <-q.wake:
			case <-window.C:
				break fill
			case <-ctx.Done():
				break fill
			}
		}
		window.Stop()
		batch = q.take(batch, completionBatch)
		s.record(ctx, batch, &rec, false)
		clear(batch)
		batch = batch[:0]
	}
}

// recordBuffers are the slices record hands the store, kept by the completer from one
// batch to the next: the store is done with them once CompleteKeeping returns.
type recordBuffers struct {
	msgs     []sqlite.QueuedMessage
	outcomes []events.Published
	keeps    []bool
}

// record writes batch's outcomes, retrying while the store cannot write. The last flush at
// shutdown (final) tries a few times only: what it cannot write stays pending, and the next
// start dispatches those messages again (never reported delivered without a record). The
// slices handed to the store are rec's, reused by the next batch.
func (s *Server) record(ctx context.Context, batch []completion, rec *recordBuffers, final bool) {
	if len(batch) == 0 {
		return
	}
	msgs, outcomes, keeps := rec.msgs[:0], rec.outcomes[:0], rec.keeps[:0]
	for _, c := range batch {
		msgs, outcomes, keeps = append(msgs, c.msg), append(outcomes, c.outcome), append(keeps, c.keep)
	}
	rec.msgs, rec.outcomes, rec.keeps = msgs, outcomes, keeps
	defer func() { clear(msgs); clear(outcomes) }()
	for attempt := 1; ; attempt++ {
		// A write that must land is not cancelled with the completer: at shutdown the
		// attempts are only bounded.
		n, err := s.queue.CompleteKeeping(context.WithoutCancel(ctx), msgs, outcomes, keeps)
		if err == nil {
			if n > 0 {
				s.bus.notify()
			}
			for _, c := range batch {
				s.metrics.outcome(c.outcome, c.msg.EnqueuedAt, c.decidedAt)
			}
			return
		}
		if errors.Is(err, sqlite.ErrClosed) || ((final || ctx.Err() != nil) && attempt >= 3) {
			s.log.Error("outcomes not recorded: the next start dispatches their messages again", "count", len(batch), "err", err)
			return
		}
		if attempt == 1 {
			s.log.Warn("record outcomes, will retry", "count", len(batch), "err", err)
		}
		time.Sleep(retryDelay)
	}
}

// folded acts on what a commit's fold decided: it arms the grace timers the fold started
// and wakes the event streams. The store calls it in commit order.
func (s *Server) folded(p sqlite.Projection) {
	for _, g := range p.Graces {
		s.graces.schedule(g)
	}
	if p.Published > 0 {
		s.bus.notify()
	}
}

// reconcile compares, every reconcile interval, the connections the view holds live with
// the sockets this process holds, and closes (as expired) those with no socket in two
// passes in a row: a close that was never recorded (a bug, a lost write) must not leave a
// ghost. Two passes spare a connection caught between its open's commit and its upgrade.
func (s *Server) reconcile(ctx context.Context) {
	every := s.cfg.reconcileInterval
	if every <= 0 {
		every = time.Minute
	}
	t := time.NewTicker(every)
	defer t.Stop()
	suspects := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		live, err := s.view.AllLiveConnections(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Error("reconcile: read live connections", "err", err)
			}
			continue
		}
		next := map[string]bool{}
		for _, c := range live {
			if s.hub.get(c.ID) != nil {
				continue
			}
			if !suspects[c.ID] {
				next[c.ID] = true
				continue
			}
			s.log.Warn("closing a connection the view holds live but no socket does", "userId", c.UserID, "connectionId", c.ID)
			s.appendClose(ctx, events.Closed(c.UserID, c.ID, s.now(), events.ReasonExpired))
		}
		suspects = next
	}
}

// pruneEvery is the interval of a prune that forgets what is older than retention: a tenth
// of it, at most an hour (and at least 10ms), so what it forgets never outlives its
// retention by more than a tenth.
func pruneEvery(retention time.Duration) time.Duration {
	return max(min(retention/10, time.Hour), 10*time.Millisecond)
}

// retention is one prune: what it forgets (the label of wspresence_pruned_total), the
// retention it keeps, and the pass, which forgets what is older than cutoff. A pass that
// forgets nothing (packs: it packs the users offline past the cutoff) is counted in
// wspresence_users_packed_total instead.
type retention struct {
	what  string
	keep  time.Duration
	run   func(ctx context.Context, cutoff time.Time) (int64, error)
	packs bool
}

// retentions lists the prunes of the local runtime, each with its own retention.
func (s *Server) retentions() []retention {
	prunes := []retention{
		{"tombstones", s.cfg.TombstoneRetention, func(ctx context.Context, cutoff time.Time) (int64, error) {
			n, err := s.view.PruneTombstones(ctx, cutoff)
			return int64(n), err
		}, false},
		{"messages", s.cfg.TombstoneRetention, func(ctx context.Context, _ time.Time) (int64, error) {
			return s.queue.PruneMessages(ctx, s.cfg.TombstoneRetention)
		}, false},
		{"outbox", s.cfg.OutboxRetention, s.store.PrunePublished, false},
		{"log", s.cfg.LogRetention, s.store.CompactLog, false},
		// A user offline for the tombstone retention (its closed connections forgotten by
		// then) is packed: its hot row leaves for a block of packed users, a third of its
		// bytes (sqlite.Store.PackUsers).
		{"packed users", s.cfg.TombstoneRetention, s.store.PackUsers, true},
	}
	if s.cfg.UserRetention > 0 { // 0 keeps users forever
		prunes = append(prunes, retention{"users", s.cfg.UserRetention, s.store.PruneUsers, false})
	}
	return prunes
}

// prune runs p at once, then every pruneEvery(p.keep), until ctx ends.
func (s *Server) prune(ctx context.Context, p retention) {
	t := time.NewTicker(pruneEvery(p.keep))
	defer t.Stop()
	for {
		n, err := p.run(ctx, s.now().Add(-p.keep))
		if p.packs && n > 0 { // a pass cut short has still packed its committed chunks
			s.metrics.packed.Add(float64(n))
		}
		if err != nil {
			switch {
			case ctx.Err() != nil:
			case s.store.Writable() != nil:
				// A full disk, logged once by the store: the next pass runs again.
				s.log.Debug("prune: the store cannot write", "what", p.what, "err", err)
			default:
				s.log.Error("prune", "what", p.what, "err", err)
			}
		} else if n > 0 {
			if !p.packs {
				s.metrics.pruned.WithLabelValues(p.what).Add(float64(n))
			}
			s.log.Debug("pruned", "what", p.what, "count", n, "retention", p.keep.String())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// expireGrace runs when the timer of a user's grace period fires.
func (s *Server) expireGrace(g presence.Grace) {
	eff, err := s.view.ExpireGrace(context.Background(), g.UserID, g.Since, s.now())
	switch {
	case err != nil && !errors.Is(err, sqlite.ErrClosed):
		// While the store cannot write (logged once by the store) the decision is retried
		// quietly: the user is shown offline already, its UserOffline is published once
		// the decision is written.
		if s.store.Writable() != nil {
			s.log.Debug("grace timer: the store cannot write, will retry", "userId", g.UserID, "err", err)
		} else {
			s.log.Error("grace timer", "userId", g.UserID, "err", err)
		}
		s.graces.retry(g, s.now().Add(retryDelay))
	case len(eff.Publish) > 0:
		s.bus.notify()
	}
}

// graceTimers runs one timer per user whose grace period is pending. A timer that fires
// for a user who came back does nothing (the store's conditional update decides).
type graceTimers struct {
	mu      sync.Mutex
	grace   time.Duration
	timers  map[string]*time.Timer
	fire    func(presence.Grace)
	stopped bool
	running sync.WaitGroup
}

func newGraceTimers(grace time.Duration, fire func(presence.Grace)) *graceTimers {
	return &graceTimers{grace: grace, timers: map[string]*time.Timer{}, fire: fire}
}

// schedule (re)arms the user's timer for the end of the grace period p.
func (g *graceTimers) schedule(p presence.Grace) { g.retry(p, p.Since.Add(g.grace)) }

// retry (re)arms the timer of grace period p for deadline (plus a millisecond, so the
// store's clock has passed the deadline when it fires).
func (g *graceTimers) retry(p presence.Grace, deadline time.Time) {
	userID := p.UserID
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return
	}
	if t, ok := g.timers[userID]; ok {
		t.Stop()
	}
	var t *time.Timer
	t = time.AfterFunc(time.Until(deadline)+time.Millisecond, func() {
		g.mu.Lock()
		if g.stopped || g.timers[userID] != t {
			g.mu.Unlock()
			return
		}
		delete(g.timers, userID)
		g.running.Add(1)
		g.mu.Unlock()
		defer g.running.Done()
		g.fire(p)
	})
	g.timers[userID] = t
}

// stop cancels every timer and waits for those already firing.
func (g *graceTimers) stop() {
	g.mu.Lock()
	g.stopped = true
	for _, t := range g.timers {
		t.Stop()
	}
	g.timers = map[string]*time.Timer{}
	g.mu.Unlock()
	g.running.Wait()
}

// broadcaster wakes every waiter when the outbox grows.
type broadcaster struct {
	mu sync.Mutex
	ch chan struct{}
}

func newBroadcaster() *broadcaster { return &broadcaster{ch: make(chan struct{})} }

func (b *broadcaster) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ch
}

func (b *broadcaster) notify() {
	b.mu.Lock()
	close(b.ch)
	b.ch = make(chan struct{})
	b.mu.Unlock()
}
