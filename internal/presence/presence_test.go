package presence_test

import (
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
	"pgregory.net/rapid"
)

// TestMain makes every property run at least 1,000 cases unless -rapid.checks says otherwise.
func TestMain(m *testing.M) {
	flag.Parse()
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "rapid.checks" })
	if !set && os.Getenv("RAPID_CHECKS") == "" {
		if err := flag.Set("rapid.checks", "1000"); err != nil {
			panic(err)
		}
	}
	os.Exit(m.Run())
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

const grace = 5 * time.Second

// store is an in-memory view the fold writes to, as a store adapter would.
type store struct {
	users map[string]presence.User
	conns map[string]presence.Conn
	// announcements records, per user, the published transitions in order.
	announcements map[string][]events.DetailType
}

func newStore() *store {
	return &store{users: map[string]presence.User{}, conns: map[string]presence.Conn{}, announcements: map[string][]events.DetailType{}}
}

func (s *store) apply(t *rapid.T, e events.ConnectionEvent) presence.Effects {
	u, c := s.users[e.UserID], s.conns[e.ConnectionID]
	nu, nc, eff := presence.Apply(u, c, e, grace)
	s.users[e.UserID], s.conns[e.ConnectionID] = nu, nc
	for _, p := range eff.Publish {
		// A UserOffline from Apply ends a grace period that was over before e: it is
		// judged against the rows as they were before e, a UserOnline against after.
		at := nu
		if p.DetailType() == events.DetailUserOffline {
			at = u
		}
		s.record(t, p, at)
	}
	if eff.GraceStarted && (!nu.GracePending() || nu.OfflineSince.IsZero()) {
		t.Fatalf("grace started but no grace pending: %+v", nu)
	}
	return eff
}

func (s *store) expire(t *rapid.T, userID string, now time.Time) {
	nu, off, ok := presence.ExpireGrace(s.users[userID], now, grace)
	if ok {
		s.users[userID] = nu
		s.record(t, off, nu)
	}
}

func (s *store) record(t *rapid.T, p events.Published, after presence.User) {
	var uid string
	switch e := p.(type) {
	case events.UserOnline:
		uid = e.UserID
		if after.Live == 0 {
			t.Fatalf("UserOnline published with no live connection")
		}
	case events.UserOffline:
		uid = e.UserID
		if after.Live != 0 {
			t.Fatalf("UserOffline published while %d connections are live", after.Live)
		}
	default:
		t.Fatalf("fold published %T", p)
	}
	s.announcements[uid] = append(s.announcements[uid], p.DetailType())
}

// genEvents draws a log of opens, closes and activity over a few users and connections,
// with duplicates, in time order.
func genEvents(t *rapid.T) []events.ConnectionEvent {
	nConns := rapid.IntRange(1, 6).Draw(t, "conns")
	owner := make([]string, nConns)
	for i := range owner {
		owner[i] = fmt.Sprintf("u%d", rapid.IntRange(0, 2).Draw(t, "owner"))
	}
	n := rapid.IntRange(0, 40).Draw(t, "events")
	at := t0
	out := make([]events.ConnectionEvent, 0, n)
	for range n {
		at = at.Add(time.Duration(rapid.IntRange(0, 8000).Draw(t, "gapMs")) * time.Millisecond)
		if len(out) > 0 && rapid.IntRange(0, 5).Draw(t, "dup") == 0 {
			out = append(out, out[rapid.IntRange(0, len(out)-1).Draw(t, "dupOf")])
			continue
		}
		ci := rapid.IntRange(0, nConns-1).Draw(t, "conn")
		cid := fmt.Sprintf("c%d", ci)
		switch rapid.IntRange(0, 2).Draw(t, "kind") {
		case 0:
			out = append(out, events.Opened(owner[ci], cid, at, "", ""))
		case 1:
			out = append(out, events.Closed(owner[ci], cid, at, events.ReasonClient))
		default:
			out = append(out, events.Activity(owner[ci], cid, at))
		}
	}
	return out
}

// model is the simple meaning of the log: live = opened and never closed.
type model struct {
	opened, closed map[string]bool
	owner          map[string]string
	last           map[string]time.Time
}

func modelOf(log []events.ConnectionEvent) model {
	m := model{opened: map[string]bool{}, closed: map[string]bool{}, owner: map[string]string{}, last: map[string]time.Time{}}
	for _, e := range log {
		m.owner[e.ConnectionID] = e.UserID
		switch e.Type {
		case events.TypeConnectionOpened:
			m.opened[e.ConnectionID] = true
		case events.TypeConnectionClosed:
			m.closed[e.ConnectionID] = true
		}
		if e.At.After(m.last[e.UserID]) {
			m.last[e.UserID] = e.At
		}
	}
	return m
}

func (m model) live(userID string) int {
	n := 0
	for c, u := range m.owner {
		if u == userID && m.opened[c] && !m.closed[c] {
			n++
		}
	}
	return n
}

func checkView(t *rapid.T, s *store, m model) {
	for uid, last := range m.last {
		u := s.users[uid]
		if u.Live != m.live(uid) {
			t.Fatalf("user %s: view has %d live connections, model %d", uid, u.Live, m.live(uid))
		}
		if !u.LastActivity.Equal(last) {
			t.Fatalf("user %s: lastActivity %v, model %v", uid, u.LastActivity, last)
		}
	}
	for cid := range m.owner {
		if got, want := s.conns[cid].Live(), m.opened[cid] && !m.closed[cid]; got != want {
			t.Fatalf("connection %s: live %v, model %v", cid, got, want)
		}
	}
}

func checkAlternation(t *rapid.T, s *store) {
	for uid, seq := range s.announcements {
		for i, d := range seq {
			want := events.DetailUserOnline
			if i%2 == 1 {
				want = events.DetailUserOffline
			}
			if d != want {
				t.Fatalf("user %s: transitions %v do not alternate from UserOnline", uid, seq)
			}
		}
	}
}

// TestFoldMatchesModelInAnyOrder: any permutation of a log with duplicates, with grace
// timers firing at random points, folds to the model's view, and the announced
// transitions alternate strictly per user.
func TestFoldMatchesModelInAnyOrder(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		log := genEvents(t)
		perm := rapid.Permutation(log).Draw(t, "order")
		s := newStore()
		for _, e := range perm {
			if rapid.IntRange(0, 3).Draw(t, "fire") == 0 {
				now := t0.Add(time.Duration(rapid.IntRange(0, 400).Draw(t, "nowS")) * time.Second)
				s.expire(t, e.UserID, now)
			}
			s.apply(t, e)
		}
		m := modelOf(log)
		checkView(t, s, m)
		checkAlternation(t, s)
		// Once every grace period has run out, the announced state is the live truth.
		for uid := range m.last {
			s.expire(t, uid, t0.Add(24*time.Hour))
			if got, want := s.users[uid].Announced == presence.AnnouncedOnline, m.live(uid) > 0; got != want {
				t.Fatalf("user %s: announced online %v, live %v", uid, got, want)
			}
		}
		checkAlternation(t, s)
	})
}

// TestFoldIsIdempotent: applying an event again right after itself changes no row and
// publishes nothing.
func TestFoldIsIdempotent(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		s := newStore()
		for _, e := range genEvents(t) {
			s.apply(t, e)
			u, c := s.users[e.UserID], s.conns[e.ConnectionID]
			eff := s.apply(t, e)
			if len(eff.Publish) != 0 || eff.GraceStarted {
				t.Fatalf("second apply of %+v had effects %+v", e, eff)
			}
			if s.users[e.UserID] != u || s.conns[e.ConnectionID] != c {
				t.Fatalf("second apply of %+v changed the view", e)
			}
		}
	})
}

func TestReconnectInsideGraceIsSilent(t *testing.T) {
	u, c, eff := presence.Apply(presence.User{}, presence.Conn{}, events.Opened("a", "c1", t0, "", ""), grace)
	if len(eff.Publish) != 1 || eff.Publish[0].DetailType() != events.DetailUserOnline {
		t.Fatalf("first open published %v", eff.Publish)
	}
	u, _, eff = presence.Apply(u, c, events.Closed("a", "c1", t0.Add(time.Second), events.ReasonClient), grace)
	if !eff.GraceStarted || len(eff.Publish) != 0 {
		t.Fatalf("last close: %+v", eff)
	}
	u, _, eff = presence.Apply(u, presence.Conn{}, events.Opened("a", "c2", t0.Add(3*time.Second), "", ""), grace)
	if len(eff.Publish) != 0 {
		t.Fatalf("reconnect inside grace published %v", eff.Publish)
	}
	if _, _, ok := presence.ExpireGrace(u, t0.Add(time.Hour), grace); ok {
		t.Fatal("grace expired while a connection is live")
	}
}

func TestGraceExpiresOnlyAfterDeadline(t *testing.T) {
	u, c, _ := presence.Apply(presence.User{}, presence.Conn{}, events.Opened("a", "c1", t0, "", ""), grace)
	closedAt := t0.Add(time.Second)
	u, _, _ = presence.Apply(u, c, events.Closed("a", "c1", closedAt, events.ReasonClient), grace)
	if _, _, ok := presence.ExpireGrace(u, closedAt.Add(grace-time.Millisecond), grace); ok {
		t.Fatal("grace expired before its deadline")
	}
	nu, off, ok := presence.ExpireGrace(u, closedAt.Add(grace), grace)
	if !ok || nu.Announced != presence.AnnouncedOffline || !off.At.Equal(closedAt) || off.LastActivity == nil {
		t.Fatalf("expire at deadline: ok=%v user=%+v event=%+v", ok, nu, off)
	}
	if _, _, ok := presence.ExpireGrace(nu, closedAt.Add(time.Hour), grace); ok {
		t.Fatal("grace expired twice")
	}
	// The id is stable: a second run of the timer would publish the same event id.
	_, again, _ := presence.ExpireGrace(u, closedAt.Add(2*grace), grace)
	if again.EventID != off.EventID {
		t.Fatalf("event id changed between runs: %s vs %s", off.EventID, again.EventID)
	}
}

func TestLateCloseOfOldConnectionKeepsUserOnline(t *testing.T) {
	u, c1, _ := presence.Apply(presence.User{}, presence.Conn{}, events.Opened("a", "old", t0, "", ""), grace)
	u, _, _ = presence.Apply(u, presence.Conn{}, events.Opened("a", "new", t0.Add(time.Second), "", ""), grace)
	u, _, eff := presence.Apply(u, c1, events.Closed("a", "old", t0.Add(2*time.Second), events.ReasonClient), grace)
	if !u.Online() || eff.GraceStarted || len(eff.Publish) != 0 {
		t.Fatalf("late close of old connection: user %+v effects %+v", u, eff)
	}
}
