package main

import (
	"slices"
	"testing"
)

// TestPostClockTimesAPostOnItsConnection: a connection's goroutine that is woken by its
// read, blocks for its group commit, is answered, runs and reads again is one POST: the
// whole from the wake to the next read, the store's part from the block to the answer, the
// CPU's from the answer to running. A request that never blocks for the store (a GET) is
// not one.
func TestPostClockTimesAPostOnItsConnection(t *testing.T) {
	read := []string{"internal/poll.(*FD).Read", "net/http.(*connReader).Read", "bufio.(*Reader).fill", "bufio.(*Reader).Peek", "net/http.(*conn).serve"}
	submit := []string{"runtime.chanrecv1", "github.com/wspresence/wspresence/internal/store/sqlite.(*Store).submit", "github.com/wspresence/wspresence/internal/store/sqlite.(*Store).Enqueue", "github.com/wspresence/wspresence/internal/localrt.(*Server).enqueue"}
	var p postTimes
	var c postClock
	steps := []struct {
		from, to string
		at       int64
		stack    []string
	}{
		{"Running", "Waiting", 0, read},
		{"Waiting", "Runnable", 1_000_000, nil}, // a GET arrives
		{"Runnable", "Running", 1_100_000, nil},
		{"Running", "Waiting", 1_500_000, read}, // answered without the store
		{"Waiting", "Runnable", 2_000_000, nil}, // the POST arrives
		{"Runnable", "Running", 2_200_000, nil},
		{"Running", "Waiting", 2_400_000, submit}, // blocked for its commit
		{"Waiting", "Runnable", 5_400_000, nil},   // answered
		{"Runnable", "Running", 6_000_000, nil},
		{"Running", "Waiting", 6_100_000, read},
	}
	for _, s := range steps {
		c.add(&p, s.from, s.to, s.at, s.stack)
	}
	if want := []float64{4.1}; !slices.Equal(p.total, want) {
		t.Fatalf("whole %v, want %v", p.total, want)
	}
	if want := []float64{3}; !slices.Equal(p.store, want) {
		t.Fatalf("store %v, want %v", p.store, want)
	}
	if want := []float64{0.6}; !slices.Equal(p.cpu, want) {
		t.Fatalf("CPU wait %v, want %v", p.cpu, want)
	}
}
