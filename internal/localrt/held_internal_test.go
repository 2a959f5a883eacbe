package localrt

import (
	"testing"
	"time"

	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// TestHeldOrderStaysBounded: messages held and taken by replays, many more than are ever
// held at once, leave the acceptance order bounded by the ones held, and expire still
// finds the ones left, oldest first.
func TestHeldOrderStaysBounded(t *testing.T) {
	h := newHeldMessages()
	at := time.Unix(1_700_000_000, 0)
	const rounds = 20_000
	for i := range int64(rounds) {
		h.add(sqlite.QueuedMessage{Seq: i, MessageID: "m", UserID: "u", EnqueuedAt: at.Add(time.Duration(i) * time.Millisecond)})
		if i%10 != 0 {
			h.take(i) // replayed at once; every tenth stays held
		}
	}
	if got, want := h.count(), rounds/10; got != want {
		t.Fatalf("%d held, want %d", got, want)
	}
	if n := len(h.order); n > 2*h.count()+1024 {
		t.Fatalf("order keeps %d sequence numbers for %d held", n, h.count())
	}
	out := h.expire(at.Add(rounds/2*time.Millisecond), at)
	if len(out) != rounds/20 || out[0].Seq != 0 || out[len(out)-1].Seq != rounds/2-10 {
		t.Fatalf("expire returned %d messages (%v ... %v), want the %d held before the cutoff, oldest first", len(out), out[0], out[len(out)-1], rounds/20)
	}
	if got, want := h.count(), rounds/20; got != want {
		t.Fatalf("%d held after expire, want %d", got, want)
	}
}

// TestHeldPerUserCounts: each user's count of held messages follows adds, replays and
// expiries, a user at its bound is full while another is not, and a user whose count
// reaches zero leaves the counts (they hold users with held messages only).
func TestHeldPerUserCounts(t *testing.T) {
	h := newHeldMessages()
	at := time.Unix(1_700_000_000, 0)
	msg := func(user string) []sqlite.QueuedMessage { return []sqlite.QueuedMessage{{UserID: user}} }
	var seq int64
	for _, u := range []string{"a", "a", "a", "b", "c", "c"} {
		seq++
		h.add(sqlite.QueuedMessage{Seq: seq, MessageID: "m", UserID: u, EnqueuedAt: at.Add(time.Duration(seq) * time.Second)})
	}
	h.add(sqlite.QueuedMessage{Seq: 1, MessageID: "m", UserID: "a", EnqueuedAt: at}) // held again: counted once
	if !h.userFull(msg("a"), 3) || h.userFull(msg("b"), 3) || h.userFull(msg("c"), 3) || h.userFull(msg("new"), 1) {
		t.Fatalf("per-user counts %v: want only a at a bound of 3", h.perUser)
	}
	if !h.userFull(append(msg("b"), msg("c")...), 2) {
		t.Fatalf("per-user counts %v: a request to b and c, c at a bound of 2, is not full", h.perUser)
	}
	h.take(4)  // b's only message, replayed
	h.take(4)  // a take of one no longer held changes nothing
	h.take(99) // nor does one never held
	if _, ok := h.perUser["b"]; ok || h.perUser["a"] != 3 || h.perUser["c"] != 2 {
		t.Fatalf("per-user counts %v after b's replay, want a:3 c:2", h.perUser)
	}
	h.take(2)
	if h.userFull(msg("a"), 3) {
		t.Fatalf("per-user counts %v: a still full after a replay", h.perUser)
	}
	if out := h.expire(at.Add(time.Hour), at.Add(time.Hour)); len(out) != 4 {
		t.Fatalf("expire returned %d messages, want the 4 held", len(out))
	}
	if len(h.perUser) != 0 || h.count() != 0 {
		t.Fatalf("after expiry: %d held, per-user counts %v, want none", h.count(), h.perUser)
	}
}
