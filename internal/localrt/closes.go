package localrt

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// pendingCloses holds the closes the store could not write (a full disk): the connection
// is shown closed at once (closingView overlays them on the view's reads) and its close is
// written by writeCloses once the store writes again, with the time it closed, so the
// user's grace period runs from then and its UserOffline is published once, by the fold,
// as for any close. An entry is removed when its close is written. There is at most one
// per connection the view holds live, so the live connections bound it; what is left at
// shutdown is dropped: the next start closes every connection the view still holds live
// (recover), and overlays those closes in turn while it cannot write them.
type pendingCloses struct {
	mu     sync.Mutex
	byConn map[string]events.ConnectionEvent
	byUser map[string]int
	kick   chan struct{}
}

func newPendingCloses() *pendingCloses {
	return &pendingCloses{byConn: map[string]events.ConnectionEvent{}, byUser: map[string]int{}, kick: make(chan struct{}, 1)}
}

// add keeps evs (closes) until written, and wakes the writer loop.
func (p *pendingCloses) add(evs ...events.ConnectionEvent) {
	p.mu.Lock()
	for _, e := range evs {
		if _, ok := p.byConn[e.ConnectionID]; !ok {
			p.byConn[e.ConnectionID] = e
			p.byUser[e.UserID]++
		}
	}
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// written removes evs, whose closes are durable.
func (p *pendingCloses) written(evs []events.ConnectionEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range evs {
		if _, ok := p.byConn[e.ConnectionID]; !ok {
			continue
		}
		delete(p.byConn, e.ConnectionID)
		if p.byUser[e.UserID]--; p.byUser[e.UserID] <= 0 {
			delete(p.byUser, e.UserID)
		}
	}
}

// all lists the pending closes, oldest first.
func (p *pendingCloses) all() []events.ConnectionEvent {
	p.mu.Lock()
	out := make([]events.ConnectionEvent, 0, len(p.byConn))
	for _, e := range p.byConn {
		out = append(out, e)
	}
	p.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].At.Before(out[j].At) })
	return out
}

// count is the number of pending closes.
func (p *pendingCloses) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byConn)
}

// users returns which of ids have a pending close (nil when none has).
func (p *pendingCloses) users(ids []string) map[string]bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.byUser) == 0 {
		return nil
	}
	out := map[string]bool{}
	for _, id := range ids {
		if p.byUser[id] > 0 {
			out[id] = true
		}
	}
	return out
}

// allUsers lists the users with a pending close.
func (p *pendingCloses) allUsers() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.byUser))
	for u := range p.byUser {
		out = append(out, u)
	}
	return out
}

// without returns conns less those with a pending close.
func (p *pendingCloses) without(conns []string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.byConn) == 0 {
		return conns
	}
	out := conns[:0:0]
	for _, id := range conns {
		if _, ok := p.byConn[id]; !ok {
			out = append(out, id)
		}
	}
	return out
}

// closingView is the view with the pending closes overlaid: a connection whose close is
// pending is not live, and a user whose live connections all are is offline, in every
// read (REST, the dashboard, the metrics, the delivery and the reconciliation), exactly as
// once the close is written.
type closingView struct {
	presenceView
	pending *pendingCloses
}

// live is the number of userID's live connections less those closing.
func (v closingView) live(userID string) int {
	return len(v.pending.without(v.presenceView.LiveConnectionsOf([]string{userID})[userID]))
}

func (v closingView) Users(ctx context.Context, ids []string) ([]presence.Status, error) {
	out, err := v.presenceView.Users(ctx, ids)
	if err != nil {
		return nil, err
	}
	if closing := v.pending.users(ids); len(closing) > 0 {
		for i := range out {
			if closing[out[i].UserID] {
				out[i].Connections = v.live(out[i].UserID)
			}
		}
	}
	return out, nil
}

func (v closingView) OnlineUsers(ctx context.Context, after string, limit int) ([]presence.Status, error) {
	var out []presence.Status
	for {
		page, err := v.presenceView.OnlineUsers(ctx, after, limit)
		if err != nil {
			return nil, err
		}
		ids := make([]string, len(page))
		for i, st := range page {
			ids[i] = st.UserID
		}
		closing := v.pending.users(ids)
		for _, st := range page {
			if closing[st.UserID] {
				if st.Connections = v.live(st.UserID); st.Connections == 0 {
					continue
				}
			}
			if len(out) < limit {
				out = append(out, st)
			}
		}
		if len(closing) == 0 || len(page) < limit || len(out) >= limit {
			if out == nil {
				out = []presence.Status{}
			}
			return out, nil
		}
		after = page[len(page)-1].UserID
	}
}

func (v closingView) OnlineCount(ctx context.Context) (int, error) {
	n, err := v.presenceView.OnlineCount(ctx)
	if err != nil {
		return 0, err
	}
	for _, u := range v.pending.allUsers() {
		if len(v.presenceView.LiveConnectionsOf([]string{u})[u]) > 0 && v.live(u) == 0 {
			n--
		}
	}
	return n, nil
}

func (v closingView) LiveConnectionsOf(users []string) map[string][]string {
	out := v.presenceView.LiveConnectionsOf(users)
	for u := range v.pending.users(users) {
		out[u] = v.pending.without(out[u])
	}
	return out
}

func (v closingView) AllLiveConnections(ctx context.Context) ([]presence.Conn, error) {
	all, err := v.presenceView.AllLiveConnections(ctx)
	if err != nil || v.pending.count() == 0 {
		return all, err
	}
	ids := make([]string, len(all))
	for i, c := range all {
		ids[i] = c.ID
	}
	keep := map[string]bool{}
	for _, id := range v.pending.without(ids) {
		keep[id] = true
	}
	out := all[:0:0]
	for _, c := range all {
		if keep[c.ID] {
			out = append(out, c)
		}
	}
	return out, nil
}

// appendClose records a connection's close. A close the store cannot write now (a full
// disk) is kept pending: the connection is shown closed at once, and writeCloses writes it
// once the store can. A closed store (shutdown) drops it: the next start closes the
// connections the log still holds open.
func (s *Server) appendClose(ctx context.Context, e events.ConnectionEvent) {
	if _, err := s.events.Append(ctx, e); err != nil && !errors.Is(err, sqlite.ErrClosed) {
		s.keepCloses(err, e)
	}
}

// keepCloses keeps evs, closes the store could not write (err), pending.
func (s *Server) keepCloses(err error, evs ...events.ConnectionEvent) {
	if s.closing.count() == 0 {
		s.log.Warn("closes not written: shown closed, written once the store can write", "count", len(evs), "err", err)
	}
	s.closing.add(evs...)
}

// writeCloses writes the pending closes, all in one append, when one is added and every
// retryDelay while some are left, until ctx ends.
func (s *Server) writeCloses(ctx context.Context) {
	t := time.NewTicker(retryDelay)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.closing.kick:
		case <-t.C:
		}
		s.flushCloses(ctx)
	}
}

// flushCloses tries once to write the pending closes; it reports whether none is left.
func (s *Server) flushCloses(ctx context.Context) bool {
	evs := s.closing.all()
	if len(evs) == 0 {
		return true
	}
	if _, err := s.events.Append(context.WithoutCancel(ctx), evs...); err != nil {
		return false
	}
	s.closing.written(evs)
	s.log.Info("pending closes written", "count", len(evs))
	return s.closing.count() == 0
}
