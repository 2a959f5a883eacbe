package presence

import (
	"time"

	"github.com/wspresence/wspresence/events"
)

// Announced is the state last announced to subscribers.
type Announced string

// The announced states. The zero value means offline.
const (
	AnnouncedOffline Announced = "offline"
	AnnouncedOnline  Announced = "online"
)

// User is one user's row of the view.
type User struct {
	ID string
	// Live is the number of live connections.
	Live int
	// LastActivity is the latest event time seen for the user (zero if none).
	LastActivity time.Time
	// Announced is the state last announced to subscribers.
	Announced Announced
	// OfflineSince is when the live set last became empty; zero while live or never online.
	OfflineSince time.Time
}

// Online reports the live truth: at least one live connection.
func (u User) Online() bool { return u.Live > 0 }

// GracePending reports whether a grace timer should be running for u: the live set is
// empty but subscribers were last told the user is online.
func (u User) GracePending() bool {
	return u.Live == 0 && u.Announced == AnnouncedOnline
}

// GraceDeadline is when the pending grace period ends.
func (u User) GraceDeadline(grace time.Duration) time.Time { return u.OfflineSince.Add(grace) }

// Status is what the view answers about one user.
type Status struct {
	UserID string
	// Connections is the number of live connections.
	Connections int
	// LastActivity is the latest event time seen (zero if never seen).
	LastActivity time.Time
}

// Online reports whether the user has a live connection.
func (s Status) Online() bool { return s.Connections > 0 }

// Conn is one connection's row of the view: live, or a tombstone once closed.
type Conn struct {
	ID     string
	UserID string
	// OpenedAt is when the connection opened; zero if its open has not been seen.
	OpenedAt time.Time
	// ClosedAt is when the connection closed; zero while it has not.
	ClosedAt time.Time
	// Reason is why it closed.
	Reason events.CloseReason
	// LastSeen is the latest open or activity time of the connection.
	LastSeen time.Time
}

// Live reports whether the connection is opened and not closed.
func (c Conn) Live() bool { return !c.OpenedAt.IsZero() && c.ClosedAt.IsZero() }

// Prunable reports whether c is a tombstone old enough to forget: no reordered record of
// it can arrive any more once retention has passed since it closed.
func (c Conn) Prunable(now time.Time, retention time.Duration) bool {
	return !c.ClosedAt.IsZero() && now.Sub(c.ClosedAt) > retention
}

// Effects are what applying an event asks the caller to do, atomically with persisting
// the new rows.
type Effects struct {
	// Publish lists the events to publish, in order.
	Publish []events.Published
	// GraceStarted is set when the live set just became empty while announced online:
	// the caller must arrange for ExpireGrace to run at User.GraceDeadline.
	GraceStarted bool
}

// Apply folds e into the user's and connection's rows (u and c, zero values with their
// ids set when not stored yet) and returns the new rows and the effects. Before applying
// e it expires a grace period that e's time shows has ended, as if the timer had fired.
func Apply(u User, c Conn, e events.ConnectionEvent, grace time.Duration) (User, Conn, Effects) {
	var eff Effects
	u.ID, c.ID, c.UserID = e.UserID, e.ConnectionID, e.UserID
	if nu, off, ok := ExpireGrace(u, e.At, grace); ok {
		u = nu
		eff.Publish = append(eff.Publish, off)
	}
	wasLive := c.Live()
	switch e.Type {
	case events.TypeConnectionOpened:
		if c.OpenedAt.IsZero() {
			c.OpenedAt = e.At
		}
	case events.TypeConnectionClosed:
		if c.ClosedAt.IsZero() {
			c.ClosedAt, c.Reason = e.At, e.Reason
		}
	}
	if e.Type != events.TypeConnectionClosed && e.At.After(c.LastSeen) {
		c.LastSeen = e.At
	}
	if e.At.After(u.LastActivity) {
		u.LastActivity = e.At
	}
	switch nowLive := c.Live(); {
	case !wasLive && nowLive:
		u.Live++
		if u.Live == 1 {
			u.OfflineSince = time.Time{}
			if u.Announced != AnnouncedOnline {
				u.Announced = AnnouncedOnline
				eff.Publish = append(eff.Publish, events.NewUserOnline(u.ID, c.ID, e.At))
			}
		}
	case wasLive && !nowLive:
		u.Live--
		if u.Live == 0 {
			u.OfflineSince = e.At
			eff.GraceStarted = u.Announced == AnnouncedOnline
		}
	}
	return u, c, eff
}

// ExpireGrace ends u's grace period if it is pending and over at now: the announced state
// becomes offline and the UserOffline event to publish is returned with ok set. Otherwise
// u is returned unchanged with ok false. It is the conditional update "live set empty AND
// announced online AND deadline passed → announced offline" of the design.
func ExpireGrace(u User, now time.Time, grace time.Duration) (User, events.UserOffline, bool) {
	if !u.GracePending() || now.Before(u.GraceDeadline(grace)) {
		return u, events.UserOffline{}, false
	}
	u.Announced = AnnouncedOffline
	return u, events.NewUserOffline(u.ID, u.OfflineSince, u.LastActivity), true
}
