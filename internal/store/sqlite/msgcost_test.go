package sqlite_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// BenchmarkMessageCost measures the store's work per message on the local hot path: each
// message is enqueued by a request of its own (a POST of one message), writers alone or
// several at once (their requests share group commits), and its outcome is recorded in
// batches of outcomeBatch (the completer's window), as the server does. It reports the
// process's CPU time (user and system, fsync included) per message and the group commits
// per message (and the system's part of that time: the WAL's writes and fsyncs).
func BenchmarkMessageCost(b *testing.B) {
	for _, writers := range []int{1, 16} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) { benchMessageCost(b, writers) })
	}
}

// outcomeBatch is how many outcomes one Complete records (about a 10 ms window at
// 1,000 messages a second).
const outcomeBatch = 10

func benchMessageCost(b *testing.B, writers int) {
	ctx := context.Background()
	dir := b.TempDir()
	var commits int64
	var mu sync.Mutex
	var queued []sqlite.QueuedMessage
	s, err := sqlite.Open(ctx, filepath.Join(dir, "s.db"), sqlite.Options{
		RecoveryWindow: time.Minute,
		OnCommit:       func(int) { commits++ },
		OnQueued: func(m []sqlite.QueuedMessage) {
			mu.Lock()
			queued = append(queued, m...)
			mu.Unlock()
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	body := `{"text":"hello, a message of about a hundred bytes, as the bench's publishers send them"}`
	complete := func(force bool) {
		mu.Lock()
		if len(queued) < outcomeBatch && !(force && len(queued) > 0) {
			mu.Unlock()
			return
		}
		batch := queued
		queued = nil
		mu.Unlock()
		outs := make([]events.Published, len(batch))
		for i, m := range batch {
			outs[i] = events.NewMessageDelivered(m.MessageID, m.UserID, 1, time.Now())
		}
		if _, err := s.Complete(ctx, batch, outs); err != nil {
			b.Error(err)
		}
	}
	var before syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	commits = 0
	b.ResetTimer()
	var wg sync.WaitGroup
	per := (b.N + writers - 1) / writers
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				m := sqlite.QueuedMessage{MessageID: uuid.Must(uuid.NewV7()).String(), UserID: fmt.Sprintf("user-%d-%d", w, i%250), Body: body, EnqueuedAt: time.Now()}
				if err := s.Enqueue(ctx, m); err != nil {
					b.Error(err)
					return
				}
				if w == 0 {
					complete(false)
				}
			}
		}()
	}
	wg.Wait()
	complete(true)
	b.StopTimer()
	var after syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	user := time.Duration(after.Utime.Nano() - before.Utime.Nano())
	sys := time.Duration(after.Stime.Nano() - before.Stime.Nano())
	n := float64(per * writers)
	b.ReportMetric(float64((user+sys).Microseconds())/n, "cpu-µs/msg")
	b.ReportMetric(float64(sys.Microseconds())/n, "sys-µs/msg")
	b.ReportMetric(float64(commits)/n, "commits/msg")
}
