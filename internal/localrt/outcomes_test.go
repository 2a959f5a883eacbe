package localrt

import (
	"fmt"
	"testing"

	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// TestOutcomesWakeTheCompleterOncePerBatch: of two batches' outcomes decided one after
// another, the completer is woken at the first of each window and when a batch is full,
// not at each outcome, and takes each outcome once, in the order decided.
func TestOutcomesWakeTheCompleterOncePerBatch(t *testing.T) {
	q := newOutcomeQueue()
	wakes := 0
	n := completionBatch + completionBatch/2
	for i := range n {
		q.add(completion{msg: sqlite.QueuedMessage{MessageID: fmt.Sprint(i)}})
		select {
		case <-q.wake:
			wakes++
		default:
		}
	}
	if wakes != 2 {
		t.Fatalf("%d outcomes woke the completer %d times, want 2 (the first, the full batch)", n, wakes)
	}
	first := q.take(nil, completionBatch)
	if len(first) != completionBatch || q.len() != n-completionBatch {
		t.Fatalf("took %d, %d left; want %d, %d", len(first), q.len(), completionBatch, n-completionBatch)
	}
	rest := q.take(nil, 0)
	if q.len() != 0 {
		t.Fatalf("%d left after taking all", q.len())
	}
	for i, c := range append(first, rest...) {
		if c.msg.MessageID != fmt.Sprint(i) {
			t.Fatalf("outcome %d is %s: taken out of order or twice", i, c.msg.MessageID)
		}
	}
	// The queue emptied, the next outcome begins a window and wakes the completer.
	q.add(completion{})
	select {
	case <-q.wake:
	default:
		t.Fatal("the first outcome after the queue emptied did not wake the completer")
	}
}

// TestOutcomeQueueWaitsForRoom: a decider that finds outcomeQueueCap outcomes waiting
// adds its own only once the completer has taken some.
func TestOutcomeQueueWaitsForRoom(t *testing.T) {
	q := newOutcomeQueue()
	for range outcomeQueueCap {
		q.add(completion{})
	}
	added := make(chan struct{})
	go func() { q.add(completion{msg: sqlite.QueuedMessage{MessageID: "last"}}); close(added) }()
	select {
	case <-added:
		t.Fatal("an outcome was added beyond the queue's bound")
	default:
	}
	if got := len(q.take(nil, 1)); got != 1 {
		t.Fatalf("took %d, want 1", got)
	}
	<-added
	if q.len() != outcomeQueueCap {
		t.Fatalf("%d waiting, want %d", q.len(), outcomeQueueCap)
	}
	all := q.take(nil, 0)
	if all[len(all)-1].msg.MessageID != "last" {
		t.Fatal("the outcome that waited for room is not the last taken")
	}
}
