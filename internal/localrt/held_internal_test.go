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
