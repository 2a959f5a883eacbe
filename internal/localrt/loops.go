package localrt

import (
	"context"
	"errors"
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
	// deliverWorkers bounds the users delivered to at once.
	deliverWorkers = 32
	// retryDelay spaces the attempts.
	retryDelay = time.Second
)

// pump is the local stand-in for the queue trigger: after every commit it delivers the
// queued messages. The view needs no pump: every commit folds what it appends.
func (s *Server) pump(ctx context.Context) {
	attempts := map[int64]int{}
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.store.Appended():
		case <-s.kick:
		case <-retry.C:
		}
		more, retryLater := s.cycle(ctx, attempts)
		if more {
			s.wake()
		}
		if retryLater {
			retry.Reset(retryDelay)
		}
	}
}

func (s *Server) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// cycle runs one pass. Every connection whose open was committed before a message was
// accepted is in the view the message is delivered from: the commit folded it.
func (s *Server) cycle(ctx context.Context, attempts map[int64]int) (more, retryLater bool) {
	msgs, err := s.store.PendingMessages(ctx, deliverBatch)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("read queue", "err", err)
		}
		return false, true
	}
	if len(msgs) == 0 {
		return false, false
	}
	retryLater = s.deliver(ctx, msgs, attempts)
	return len(msgs) == deliverBatch, retryLater
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

// deliver delivers msgs, one user's messages in queue order, users in parallel, and
// completes those with an outcome in one transaction.
func (s *Server) deliver(ctx context.Context, msgs []sqlite.QueuedMessage, attempts map[int64]int) (retryLater bool) {
	byUser := map[string][]sqlite.QueuedMessage{}
	var order []string
	for _, m := range msgs {
		if _, ok := byUser[m.UserID]; !ok {
			order = append(order, m.UserID)
		}
		byUser[m.UserID] = append(byUser[m.UserID], m)
	}
	type result struct {
		seq        int64
		enqueuedAt time.Time
		outcome    events.Published
		err        error
	}
	results := make(chan result, len(msgs))
	// One cycle reads the live connections of all its users at once.
	cache := &connCache{view: s.store, byUser: map[string][]string{}}
	if live, err := s.store.LiveConnectionsOf(ctx, order); err == nil {
		cache.byUser = live
	}
	deliverer := *s.deliverer
	deliverer.Connections = cache
	sem := make(chan struct{}, deliverWorkers)
	var wg sync.WaitGroup
	for _, uid := range order {
		sem <- struct{}{}
		wg.Add(1)
		go func(queue []sqlite.QueuedMessage) {
			defer func() { <-sem; wg.Done() }()
			for _, m := range queue {
				res, err := deliverer.Deliver(ctx, m.MessageID, m.UserID, m.Body)
				results <- result{seq: m.Seq, enqueuedAt: m.EnqueuedAt, outcome: res.Outcome, err: err}
			}
		}(byUser[uid])
	}
	wg.Wait()
	close(results)
	var seqs []int64
	var outcomes []events.Published
	var done []result
	for r := range results {
		switch {
		case r.err == nil:
		case errors.Is(r.err, delivery.ErrDeliveryFailed) && delivery.LastAttempt(attempts[r.seq]+1, delivery.DefaultMaxAttempts):
			s.log.Warn("message undeliverable after retries", "attempts", delivery.DefaultMaxAttempts, "err", r.err)
		default:
			attempts[r.seq]++
			s.log.Warn("delivery will be retried", "attempt", attempts[r.seq], "err", r.err)
			retryLater = true
			continue
		}
		delete(attempts, r.seq)
		seqs = append(seqs, r.seq)
		outcomes = append(outcomes, r.outcome)
		done = append(done, r)
	}
	if len(seqs) == 0 {
		return retryLater
	}
	n, err := s.store.Complete(ctx, seqs, outcomes)
	if err != nil {
		s.log.Error("complete deliveries", "err", err)
		return true
	}
	if n > 0 {
		s.bus.notify()
	}
	now := s.now()
	for _, r := range done {
		s.metrics.outcome(r.outcome, r.enqueuedAt, now)
	}
	return retryLater
}

// connCache reads a user's live connections once per delivery cycle. Connections found
// gone are recorded closed by the deliverer; a later cycle reads the view again.
type connCache struct {
	view   delivery.Connections
	mu     sync.Mutex
	byUser map[string][]string
}

func (c *connCache) LiveConnections(ctx context.Context, userID string) ([]string, error) {
	c.mu.Lock()
	conns, ok := c.byUser[userID]
	c.mu.Unlock()
	if ok {
		return conns, nil
	}
	conns, err := c.view.LiveConnections(ctx, userID)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.byUser[userID] = conns
	c.mu.Unlock()
	return conns, nil
}

// prune forgets old tombstones and delivered message ids once an hour.
func (s *Server) prune(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, err := s.store.PruneTombstones(ctx, s.now().Add(-s.cfg.TombstoneRetention)); err != nil {
				s.log.Error("prune tombstones", "err", err)
			} else if n > 0 {
				s.log.Info("pruned tombstones", "count", n)
			}
			if _, err := s.store.PruneMessages(ctx, s.cfg.TombstoneRetention); err != nil {
				s.log.Error("prune messages", "err", err)
			}
		}
	}
}

// expireGrace runs when the timer of a user's grace period fires.
func (s *Server) expireGrace(g presence.Grace) {
	eff, err := s.store.ExpireGrace(context.Background(), g.UserID, g.Since, s.now())
	switch {
	case err != nil && !errors.Is(err, sqlite.ErrClosed):
		s.log.Error("grace timer", "userId", g.UserID, "err", err)
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
