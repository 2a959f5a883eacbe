package presence_test

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
	"pgregory.net/rapid"
)

// A State folded from any order of a log, with any record delivered twice, holds the same
// live set and user row as the log folded in order.
func TestStateIsOrderIndependent(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(1, 6).Draw(t, "connections")
		var log []events.ConnectionEvent
		want := map[string]bool{}
		for i := range n {
			id := fmt.Sprintf("c%d", i)
			open := t0.Add(time.Duration(rapid.IntRange(0, 60).Draw(t, "open")) * time.Second)
			log = append(log, events.Opened("u", id, open, "", ""))
			if rapid.Bool().Draw(t, "closes") {
				log = append(log, events.Closed("u", id, open.Add(time.Duration(rapid.IntRange(0, 30).Draw(t, "life"))*time.Second), events.ReasonClient))
			} else {
				want[id] = true
			}
		}
		ordered := presence.NewState("u")
		for _, e := range log {
			ordered, _ = ordered.Apply(e, grace)
		}
		shuffled := rapid.Permutation(log).Draw(t, "order")
		for _, i := range rapid.SliceOfN(rapid.IntRange(0, len(log)-1), 0, 4).Draw(t, "again") {
			shuffled = append(shuffled, log[i])
		}
		s := presence.NewState("u")
		for _, e := range shuffled {
			s, _ = s.Apply(e, grace)
		}
		var wantLive []string
		for i := range n {
			if id := fmt.Sprintf("c%d", i); want[id] {
				wantLive = append(wantLive, id)
			}
		}
		if got := s.Live(); !reflect.DeepEqual(got, wantLive) && !(len(got) == 0 && len(wantLive) == 0) {
			t.Fatalf("live %v, want %v", got, wantLive)
		}
		if s.User.Live != len(wantLive) || s.User.LastActivity != ordered.User.LastActivity || s.User.Live != ordered.User.Live {
			t.Fatalf("user %+v, in order %+v", s.User, ordered.User)
		}
	})
}

// Compaction keeps the state bounded in a reconnect loop and never brings a forgotten
// connection back: its open, delivered again late, is ignored.
func TestCompactionIsBoundedAndForgetsForGood(t *testing.T) {
	s := presence.NewState("u")
	var opens []events.ConnectionEvent
	for i := range 1000 {
		at := t0.Add(time.Duration(i) * time.Second)
		o := events.Opened("u", fmt.Sprintf("c%d", i), at, "", "")
		opens = append(opens, o)
		s, _ = s.Apply(o, grace)
		s, _ = s.Apply(events.Closed("u", o.ConnectionID, at.Add(500*time.Millisecond), events.ReasonClient), grace)
		s, _ = s.Compact(at.Add(-24*time.Hour), 50)
		if len(s.Conns) > 51 {
			t.Fatalf("after %d cycles the state remembers %d connections", i+1, len(s.Conns))
		}
	}
	live := events.Opened("u", "now", t0.Add(2000*time.Second), "", "")
	s, _ = s.Apply(live, grace)
	for _, o := range opens { // every open redelivered late
		s, _ = s.Apply(o, grace)
	}
	if got := s.Live(); !reflect.DeepEqual(got, []string{"now"}) || s.User.Live != 1 {
		t.Fatalf("live %v (%d) after late opens of forgotten connections", got, s.User.Live)
	}
	// Past the retention, tombstones go without raising the horizon.
	s, n := s.Compact(t0.Add(3000*time.Second), 0)
	if n == 0 || len(s.Conns) != 1 {
		t.Fatalf("compacted %d, %d rows left", n, len(s.Conns))
	}
}

// The grace timer of a period decides only that period.
func TestStateExpireGrace(t *testing.T) {
	s := presence.NewState("u")
	s, eff := s.Apply(events.Opened("u", "a", t0, "", ""), grace)
	if len(eff.Publish) != 1 {
		t.Fatalf("open published %v", eff.Publish)
	}
	s, eff = s.Apply(events.Closed("u", "a", t0.Add(time.Second), events.ReasonClient), grace)
	if !eff.GraceStarted {
		t.Fatal("no grace started")
	}
	since := s.User.OfflineSince
	if _, eff := s.ExpireGrace(since.Add(-time.Second), since.Add(grace), grace); len(eff.Publish) != 0 {
		t.Fatal("a timer of another period decided")
	}
	if _, eff := s.ExpireGrace(since, since.Add(grace-time.Millisecond), grace); len(eff.Publish) != 0 {
		t.Fatal("decided before the deadline")
	}
	after, eff := s.ExpireGrace(since, since.Add(grace), grace)
	if len(eff.Publish) != 1 || eff.Publish[0].DetailType() != events.DetailUserOffline || after.User.Announced != presence.AnnouncedOffline {
		t.Fatalf("expiry published %v, announced %s", eff.Publish, after.User.Announced)
	}
	if _, again := after.ExpireGrace(since, since.Add(grace), grace); len(again.Publish) != 0 {
		t.Fatal("a second run of the timer published again")
	}
	if s.User.Announced != presence.AnnouncedOnline {
		t.Fatal("ExpireGrace modified its receiver")
	}
}
