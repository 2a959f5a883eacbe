package sqlite

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// pacedStore opens a store with the given commit delay that counts its group commits and
// the messages each commit made durable (OnQueued runs after the commit, before its
// callers are answered).
func pacedStore(t *testing.T, delay time.Duration) (s *Store, commits func() int, durable func(id string) bool) {
	t.Helper()
	var (
		mu   sync.Mutex
		n    int
		seen = map[string]bool{}
	)
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "s.db"), Options{
		CommitDelay: delay,
		OnCommit: func(int) {
			mu.Lock()
			n++
			mu.Unlock()
		},
		OnQueued: func(ms []QueuedMessage) {
			mu.Lock()
			for _, m := range ms {
				seen[m.MessageID] = true
			}
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	commits = func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
	durable = func(id string) bool {
		mu.Lock()
		defer mu.Unlock()
		return seen[id]
	}
	return s, commits, durable
}

// TestSteadyWritersShareHeldCommits: requests that arrive one at a time at a steady
// pace, each from a caller of its own, share group commits once the writer has seen
// requests arrive while it was busy: a commit is held for those the rate says are coming,
// even when the pace is slower than a commit. Each caller is answered only once its
// message is committed.
func TestSteadyWritersShareHeldCommits(t *testing.T) {
	ctx := context.Background()
	s, commits, durable := pacedStore(t, 300*time.Millisecond)
	msg := func(id string) QueuedMessage {
		return QueuedMessage{MessageID: id, UserID: "u-" + id, Body: "x", EnqueuedAt: time.Now()}
	}
	enqueue := func(id string, errs chan<- error) {
		err := s.Enqueue(ctx, msg(id))
		if err == nil && !durable(id) {
			err = fmt.Errorf("%s answered before its commit", id)
		}
		errs <- err
	}
	// Two requests that arrive while the writer is busy share a commit: the writer has
	// had company.
	busy, release := make(chan struct{}), make(chan struct{})
	held := make(chan error, 1)
	go func() {
		held <- s.writeAlone(ctx, func(context.Context) error { close(busy); <-release; return nil })
	}()
	<-busy
	seed := make(chan error, 2)
	go enqueue("seed-1", seed)
	go enqueue("seed-2", seed)
	for len(s.reqs) < 2 {
		time.Sleep(time.Millisecond)
	}
	before := commits()
	close(release)
	for range 2 {
		if err := <-seed; err != nil {
			t.Fatal(err)
		}
	}
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if got := commits() - before; got != 1 {
		t.Fatalf("the two seed requests took %d commits, want 1", got)
	}
	before = commits()
	// Then one request every 3 ms, longer than the 2 ms pacing of concurrent writers and
	// than a commit: each would find the writer idle and commit alone.
	const steady = 40
	errs := make(chan error, steady)
	for i := range steady {
		go enqueue(fmt.Sprintf("m-%d", i), errs)
		time.Sleep(3 * time.Millisecond)
	}
	for range steady {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := commits() - before; got > steady/4 {
		t.Fatalf("%d requests at a steady pace took %d commits, want at most %d", steady, got, steady/4)
	}
}

// TestWriterAloneNeverWaitsForCompany: a writer whose requests come one after another
// (each waiting for its answer) never has company, so no commit is held for it, however
// long the commit delay: each request is committed alone and answered.
func TestWriterAloneNeverWaitsForCompany(t *testing.T) {
	ctx := context.Background()
	s, commits, durable := pacedStore(t, time.Hour)
	const n = 30
	done := make(chan error, 1)
	go func() {
		for i := range n {
			id := fmt.Sprintf("m-%d", i)
			if err := s.Enqueue(ctx, QueuedMessage{MessageID: id, UserID: "u", Body: "x", EnqueuedAt: time.Now()}); err != nil {
				done <- err
				return
			}
			if !durable(id) {
				done <- fmt.Errorf("%s answered before its commit", id)
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatalf("a lone writer's requests are held for the hour's commit delay (%d of %d committed)", commits(), n)
	}
	if got := commits(); got != n {
		t.Fatalf("%d requests one after another took %d commits, want one each", n, got)
	}
}
