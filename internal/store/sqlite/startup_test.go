package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// BenchmarkStartWithAMillionEvents measures a start (Open: the snapshot's load and the
// replay of the log past it) on a log of 1,010,000 events: 505,000 connections of 10,000
// users opened and closed, all within the tombstones' retention, so the snapshot holds
// every one of them. tail is how many records the start replays: 0 after a clean Close,
// up to Options.SnapshotEvents (2,048) after a crash, the whole log when there is no
// snapshot (the first start on a file of the earlier layout; what rebuild folds).
//
//	go test -run '^$' -bench StartWithAMillionEvents -benchtime 3x ./internal/store/sqlite/
func BenchmarkStartWithAMillionEvents(b *testing.B) {
	path := filepath.Join(b.TempDir(), "db")
	ctx := context.Background()
	clk := &clock{t: t0}
	s, err := sqlite.Open(ctx, path, sqlite.Options{Now: clk.Now})
	if err != nil {
		b.Fatal(err)
	}
	const conns, users, perAppend = 505_000, 10_000, 500
	built := time.Now()
	for i := 0; i < conns; i += perAppend {
		evs := make([]events.ConnectionEvent, 0, 2*perAppend)
		for j := i; j < i+perAppend; j++ {
			uid, cid, at := fmt.Sprintf("user-%05d", j%users), fmt.Sprintf("conn-%07d", j), t0.Add(time.Duration(j)*time.Millisecond)
			evs = append(evs, events.Opened(uid, cid, at, "203.0.113.10", "Mozilla/5.0 (X11; Linux x86_64)"),
				events.Closed(uid, cid, at.Add(time.Millisecond/2), events.ReasonClient))
		}
		if _, err := s.Append(ctx, evs...); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	b.Logf("log of %d events written in %s", 2*conns, time.Since(built).Round(time.Second))
	for _, tail := range []int{0, 100_000, 2 * conns} {
		b.Run(fmt.Sprintf("tail=%d", tail), func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				rewindCheckpoint(b, path, tail)
				b.StartTimer()
				s, err := sqlite.Open(ctx, path, sqlite.Options{Now: clk.Now})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if got := s.Recovered().Events; got != tail {
					b.Fatalf("the start replayed %d records, want %d", got, tail)
				}
				if err := s.Close(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// rewindCheckpoint sets the snapshot's checkpoint tail records before the log's end, as a
// crash tail records after the last snapshot leaves it (the replay over rows that hold
// them already costs what a replay costs: the fold is idempotent).
func rewindCheckpoint(b *testing.B, path string, tail int) {
	db, err := sql.Open("sqlite", path)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE checkpoints SET seq = (SELECT MAX(seq) FROM log) - ?`, tail); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkAppendsBesideCompaction measures what the log's compaction costs the hot path:
// the latency of single appends (each its own commit, synchronous=NORMAL) alone, then
// while CompactLog deletes 200,000 records behind the snapshot (pruneStep's chunks).
//
//	go test -run '^$' -bench AppendsBesideCompaction -benchtime 1x ./internal/store/sqlite/
func BenchmarkAppendsBesideCompaction(b *testing.B) {
	ctx := context.Background()
	for b.Loop() {
		path := filepath.Join(b.TempDir(), "db")
		clk := &clock{t: t0}
		s, err := sqlite.Open(ctx, path, sqlite.Options{Now: clk.Now, Sync: "normal"})
		if err != nil {
			b.Fatal(err)
		}
		const conns, perAppend = 100_000, 500
		for i := 0; i < conns; i += perAppend {
			evs := make([]events.ConnectionEvent, 0, 2*perAppend)
			for j := i; j < i+perAppend; j++ {
				uid, cid, at := fmt.Sprintf("user-%07d", j), fmt.Sprintf("conn-%07d", j), t0.Add(time.Duration(j)*time.Millisecond)
				evs = append(evs, events.Opened(uid, cid, at, "203.0.113.10", "Mozilla/5.0 (X11; Linux x86_64)"),
					events.Closed(uid, cid, at.Add(time.Millisecond/2), events.ReasonClient))
			}
			if _, err := s.Append(ctx, evs...); err != nil {
				b.Fatal(err)
			}
		}
		if err := s.Close(); err != nil { // the snapshot holds the whole log
			b.Fatal(err)
		}
		if s, err = sqlite.Open(ctx, path, sqlite.Options{Now: clk.Now, Sync: "normal"}); err != nil {
			b.Fatal(err)
		}
		var compacted int64
		var took time.Duration
		alone, beside := appendsBeside(b, s, func() {
			start := time.Now()
			n, err := s.CompactLog(ctx, t0.Add(time.Hour))
			if err != nil {
				b.Error(err)
			}
			compacted, took = n, time.Since(start)
		})
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		slow := 0
		for _, d := range beside {
			if d > 50*time.Millisecond {
				slow++
			}
		}
		b.Logf("slow appends beside: %d; WAL %d", slow, walOf(path))
		b.ReportMetric(pct(alone, 0.99), "p99-ms-alone")
		b.ReportMetric(pct(alone, 1), "max-ms-alone")
		b.ReportMetric(pct(beside, 0.99), "p99-ms-beside")
		b.ReportMetric(pct(beside, 1), "max-ms-beside")
		b.ReportMetric(float64(compacted), "records-compacted")
		b.ReportMetric(took.Seconds(), "compaction-s")
		b.ReportMetric(float64(len(beside)), "appends-beside")
	}
}

// appendsBeside times 2,000 single appends (each its own commit) alone, then those that
// run while work does, and returns both latencies.
func appendsBeside(b *testing.B, s *sqlite.Store, work func()) (alone, beside []time.Duration) {
	ctx := context.Background()
	appends := func(prefix string, stop <-chan struct{}, n int) []time.Duration {
		var lat []time.Duration
		for i := 0; ; i++ {
			if stop == nil && i == n {
				return lat
			}
			select {
			case <-stop:
				return lat
			default:
			}
			at := t0.Add(time.Hour + time.Duration(i)*time.Millisecond)
			start := time.Now()
			if _, err := s.Append(ctx, events.Opened(prefix+strconv.Itoa(i), prefix+"c"+strconv.Itoa(i), at, "", "")); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
	}
	alone = appends("alone-", nil, 2000)
	stop := make(chan struct{})
	go func() {
		defer close(stop)
		work()
	}()
	return alone, appends("beside-", stop, 0)
}

// pct is the p-quantile of lat, in milliseconds (it sorts lat).
func pct(lat []time.Duration, p float64) float64 {
	slices.Sort(lat)
	return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) / 1000
}

func walOf(path string) int64 {
	st, err := os.Stat(path + "-wal")
	if err != nil {
		return 0
	}
	return st.Size()
}
