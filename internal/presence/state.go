package presence

import (
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/wspresence/wspresence/events"
)

// Grace is a grace period that began when UserID's live set became empty at Since; its
// timer must call ExpireGrace at Since plus the grace duration.
type Grace struct {
	UserID string
	Since  time.Time
}

// StaleConnection is a live connection not seen since LastSeen: worth asking the gateway
// whether it still exists.
type StaleConnection struct {
	UserID, ConnectionID string
	LastSeen             time.Time
}

// State is one user's whole state: the user row and every connection row still
// remembered. A store that keeps a user in one record (the AWS runtime's user item) loads a
// State, folds events into it with Apply and persists it with one conditional write.
//
// Horizon bounds what compaction forgot: the latest open time of a tombstone dropped
// before its retention ran out (Compact with a tombstone cap). An open older than the
// horizon of a connection the state does not know is one it forgot, arriving late: it is
// ignored, so a forgotten connection never comes back live.
type State struct {
	User    User
	Conns   map[string]Conn
	Horizon time.Time
}

// NewState returns the empty state of a user never seen.
func NewState(userID string) State {
	return State{User: User{ID: userID}, Conns: map[string]Conn{}}
}

// Apply folds e into the state with Apply (the one fold) and returns the new state and
// the effects. The receiver is not modified.
func (s State) Apply(e events.ConnectionEvent, grace time.Duration) (State, Effects) {
	out := s.clone()
	c, known := out.Conns[e.ConnectionID]
	if !known && e.Type == events.TypeConnectionOpened && !e.At.After(out.Horizon) && !out.Horizon.IsZero() {
		// An open of a connection compaction forgot: closed long ago, never live again.
		return out, Effects{}
	}
	if !known {
		c = Conn{ID: e.ConnectionID, UserID: e.UserID}
	}
	u, c, eff := Apply(out.User, c, e, grace)
	out.User = u
	out.Conns[c.ID] = c
	return out, eff
}

// ExpireGracePeriod is the timer of u's grace period that began at since, firing at now:
// ExpireGrace, unless the period is not the user's current one (the user came back and
// left again meanwhile, or the timer already decided it), which changes nothing. It is
// what every runtime's grace timer runs.
func ExpireGracePeriod(u User, since, now time.Time, grace time.Duration) (User, Effects) {
	if !u.OfflineSince.Equal(since) {
		return u, Effects{}
	}
	nu, off, ok := ExpireGrace(u, now, grace)
	if !ok {
		return u, Effects{}
	}
	return nu, Effects{Publish: []events.Published{off}}
}

// ExpireGrace runs ExpireGracePeriod on the state's user row.
func (s State) ExpireGrace(since, now time.Time, grace time.Duration) (State, Effects) {
	u, eff := ExpireGracePeriod(s.User, since, now, grace)
	if len(eff.Publish) == 0 {
		return s, eff
	}
	out := s.clone()
	out.User = u
	return out, eff
}

// Live lists the live connections, in id order.
func (s State) Live() []string {
	var out []string
	for id, c := range s.Conns {
		if c.Live() {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// Stale lists the live connections last seen before cutoff.
func (s State) Stale(cutoff time.Time) []StaleConnection {
	var out []StaleConnection
	for _, id := range s.Live() {
		if c := s.Conns[id]; c.LastSeen.Before(cutoff) {
			out = append(out, StaleConnection{UserID: s.User.ID, ConnectionID: id, LastSeen: c.LastSeen})
		}
	}
	return out
}

// Compact forgets tombstones closed before cutoff (no reordered record of them can
// arrive any more), then, past maxTombstones (0: no cap), the oldest closed ones, raising
// the horizon to their opens. It returns the new state and how many rows it forgot; live
// connections are never forgotten.
func (s State) Compact(cutoff time.Time, maxTombstones int) (State, int) {
	var closed []Conn
	for _, c := range s.Conns {
		if !c.ClosedAt.IsZero() {
			closed = append(closed, c)
		}
	}
	sort.Slice(closed, func(i, j int) bool {
		if !closed[i].ClosedAt.Equal(closed[j].ClosedAt) {
			return closed[i].ClosedAt.Before(closed[j].ClosedAt)
		}
		return closed[i].ID < closed[j].ID
	})
	var drop []Conn
	for i, c := range closed {
		expired := c.ClosedAt.Before(cutoff)
		overCap := maxTombstones > 0 && len(closed)-i > maxTombstones
		if expired || overCap {
			drop = append(drop, c)
		}
	}
	if len(drop) == 0 {
		return s, 0
	}
	out := s.clone()
	for _, c := range drop {
		delete(out.Conns, c.ID)
		if !c.ClosedAt.Before(cutoff) {
			// Forgotten before its retention ran out: its late open must stay ignored. A
			// connection whose open was never seen is bounded by its close.
			mark := c.OpenedAt
			if mark.IsZero() {
				mark = c.ClosedAt
			}
			if mark.After(out.Horizon) {
				out.Horizon = mark
			}
		}
	}
	return out, len(drop)
}

func (s State) clone() State {
	out := State{User: s.User, Conns: make(map[string]Conn, len(s.Conns)+1), Horizon: s.Horizon}
	for id, c := range s.Conns {
		out.Conns[id] = c
	}
	return out
}

// ErrConnectionCap is returned by Admit when the user already holds the most live
// connections allowed.
var ErrConnectionCap = errors.New("connection cap reached")

// Admit folds the open e like Apply unless the user already holds max live connections
// (max 0: no cap). Connections last seen before knownSince are not counted: their
// liveness is unknown (the gateway drops a connection idle longer than that, and the
// reconciler closes them). Admitting a connection the state already holds live is the
// same fact again, never a refusal. Run in one versioned write with the state it read,
// two simultaneous opens cannot both take the last slot: the second folds again on what
// the first wrote and is refused.
func (s State) Admit(e events.ConnectionEvent, max int, knownSince time.Time, grace time.Duration) (State, Effects, error) {
	if e.Type != events.TypeConnectionOpened {
		return s, Effects{}, fmt.Errorf("admit %s: not an open", e.Type)
	}
	if c, ok := s.Conns[e.ConnectionID]; max > 0 && !(ok && c.Live()) {
		counted := 0
		for _, id := range s.Live() {
			if !s.Conns[id].LastSeen.Before(knownSince) {
				counted++
			}
		}
		if counted >= max {
			return s, Effects{}, fmt.Errorf("%s holds %d live connections: %w", s.User.ID, counted, ErrConnectionCap)
		}
	}
	next, eff := s.Apply(e, grace)
	return next, eff, nil
}

// Record is what a store keeps of one user for its repair: the state, the transitions
// recorded and not yet published, and when the gateway last confirmed the live
// connections.
type Record struct {
	State State
	// Outbox lists the transitions not yet published, in the order recorded.
	Outbox []Unpublished
	// Checked is when the gateway last confirmed the live connections (zero: never).
	Checked time.Time
}

// Unpublished is a transition recorded at RecordedAt and not yet published.
type Unpublished struct {
	Event      events.Published
	RecordedAt time.Time
}
