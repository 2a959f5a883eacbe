package localrt

import "sync"

// outcomeQueue holds the decided outcomes the completer has not taken yet, at most
// outcomeQueueCap (a decider waits for room beyond that, as the completer catches up);
// take removes what the completer records. It wakes the completer only at the first
// outcome of a window and when a batch is full, not at every outcome: the completer
// waits out the window on its timer whatever arrives meanwhile.
type outcomeQueue struct {
	mu      sync.Mutex
	room    sync.Cond
	pending []completion
	// wake holds at most one wake-up for the completer; a stale one makes it look again.
	wake chan struct{}
}

// outcomeQueueCap is how many decided outcomes wait for the completer at most.
const outcomeQueueCap = 4 * deliverBatch

func newOutcomeQueue() *outcomeQueue {
	q := &outcomeQueue{wake: make(chan struct{}, 1)}
	q.room.L = &q.mu
	return q
}

// add queues c, waiting while the queue is full, and wakes the completer if c begins a
// window (the queue was empty) or fills a batch.
func (q *outcomeQueue) add(c completion) {
	q.mu.Lock()
	for len(q.pending) >= outcomeQueueCap {
		q.room.Wait()
	}
	q.pending = append(q.pending, c)
	n := len(q.pending)
	q.mu.Unlock()
	if n == 1 || n == completionBatch {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

// len is how many outcomes wait.
func (q *outcomeQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending)
}

// take appends up to max of the oldest outcomes to dst (all of them if max <= 0),
// removes them from the queue, and returns dst.
func (q *outcomeQueue) take(dst []completion, max int) []completion {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := len(q.pending)
	if max > 0 && n > max {
		n = max
	}
	dst = append(dst, q.pending[:n]...)
	rest := copy(q.pending, q.pending[n:])
	clear(q.pending[rest:])
	q.pending = q.pending[:rest]
	if n > 0 {
		q.room.Broadcast()
	}
	return dst
}
