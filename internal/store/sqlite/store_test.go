package sqlite_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/schematest"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }
func (c *clock) Set(t time.Time)     { c.mu.Lock(); c.t = t; c.mu.Unlock() }

var t0 = time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)

// folds accumulates what the store's commits folded (Options.OnFolded).
type folds struct {
	mu sync.Mutex
	p  sqlite.Projection
}

func (f *folds) add(p sqlite.Projection) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.p.Events += p.Events
	f.p.Published += p.Published
	f.p.Graces = append(f.p.Graces, p.Graces...)
	f.p.Checkpoint = max(f.p.Checkpoint, p.Checkpoint)
}

func (f *folds) take() sqlite.Projection {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.p
	f.p = sqlite.Projection{}
	return p
}

var (
	foldsMu sync.Mutex
	foldsOf = map[*sqlite.Store]*folds{}
)

func open(t *testing.T, path string, clk *clock, onCommit func(int)) *sqlite.Store {
	t.Helper()
	f := &folds{}
	s, err := sqlite.Open(context.Background(), path, sqlite.Options{Grace: 5 * time.Second, Now: clk.Now, OnCommit: onCommit, OnFolded: f.add})
	if err != nil {
		t.Fatal(err)
	}
	foldsMu.Lock()
	foldsOf[s] = f
	foldsMu.Unlock()
	return s
}

func mustAppend(t *testing.T, s *sqlite.Store, evs ...events.ConnectionEvent) int {
	t.Helper()
	n, err := s.Append(context.Background(), evs...)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// mustProject returns what the commits folded since the last call (every commit folds its
// own events: there is no projector to run).
func mustProject(t *testing.T, s *sqlite.Store) sqlite.Projection {
	t.Helper()
	foldsMu.Lock()
	f := foldsOf[s]
	foldsMu.Unlock()
	return f.take()
}

func detailTypes(t *testing.T, s *sqlite.Store) []events.DetailType {
	t.Helper()
	recs, err := s.PublishedSince(context.Background(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []events.DetailType
	for _, r := range recs {
		var env events.Envelope
		if err := json.Unmarshal(r.Envelope, &env); err != nil {
			t.Fatal(err)
		}
		if env.DetailType != r.DetailType || env.Source != events.Source {
			t.Fatalf("envelope %s does not match its row", r.Envelope)
		}
		schematest.CheckEnvelope(t, r.Envelope)
		out = append(out, r.DetailType)
	}
	return out
}

func TestAppendIsIdempotentOnNaturalKey(t *testing.T) {
	clk := &clock{t: t0}
	s := open(t, filepath.Join(t.TempDir(), "db"), clk, nil)
	defer s.Close()
	open := events.Opened("u1", "c1", t0, "127.0.0.1", "test")
	if n := mustAppend(t, s, open, open); n != 1 {
		t.Fatalf("appended %d, want 1", n)
	}
	if n := mustAppend(t, s, open, events.Closed("u1", "c1", t0.Add(time.Second), events.ReasonClient)); n != 1 {
		t.Fatalf("second append appended %d, want 1", n)
	}
	// A close reported again for another reason is the same close.
	if n := mustAppend(t, s, events.Closed("u1", "c1", t0.Add(2*time.Second), events.ReasonGone)); n != 0 {
		t.Fatalf("second close appended %d, want 0", n)
	}
	log, err := s.Log(context.Background())
	if err != nil || len(log) != 2 {
		t.Fatalf("log = %v, %v", log, err)
	}
	if _, err := s.Append(context.Background(), events.ConnectionEvent{Type: "Bogus"}); err == nil {
		t.Fatal("invalid event appended")
	}
}

func TestConcurrentAppendsShareTransactions(t *testing.T) {
	clk := &clock{t: t0}
	var commits, requests atomic.Int64
	s := open(t, filepath.Join(t.TempDir(), "db"), clk, func(n int) { commits.Add(1); requests.Add(int64(n)) })
	defer s.Close()
	const n = 400
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Append(context.Background(), events.Opened(fmt.Sprintf("u%d", i%50), fmt.Sprintf("c%d", i), t0, "", "")); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if requests.Load() != n {
		t.Fatalf("%d requests committed, want %d", requests.Load(), n)
	}
	if commits.Load() >= n {
		t.Fatalf("%d commits for %d concurrent appends: no group commit", commits.Load(), n)
	}
	t.Logf("%d appends in %d commits", n, commits.Load())
	p := mustProject(t, s)
	if p.Events != n {
		t.Fatalf("projected %d events, want %d", p.Events, n)
	}
	online, err := s.OnlineUsers(context.Background(), "", 1000)
	if err != nil || len(online) != 50 {
		t.Fatalf("online = %d users, %v", len(online), err)
	}
}

func TestProjectionTransitionsAndGrace(t *testing.T) {
	clk := &clock{t: t0}
	s := open(t, filepath.Join(t.TempDir(), "db"), clk, nil)
	defer s.Close()
	ctx := context.Background()
	mustAppend(t, s, events.Opened("a", "a1", t0, "", ""), events.Opened("a", "a2", t0, "", ""), events.Opened("b", "b1", t0, "", ""))
	mustProject(t, s)
	users, _ := s.Users(ctx, []string{"a", "b", "nobody"})
	if users[0].Connections != 2 || users[1].Connections != 1 || users[2].Online() || !users[2].LastActivity.IsZero() {
		t.Fatalf("users = %+v", users)
	}
	mustAppend(t, s, events.Closed("a", "a1", t0.Add(time.Second), events.ReasonClient))
	if p := mustProject(t, s); len(p.Graces) != 0 {
		t.Fatalf("grace started with a connection left: %+v", p.Graces)
	}
	mustAppend(t, s, events.Closed("a", "a2", t0.Add(2*time.Second), events.ReasonClient))
	p := mustProject(t, s)
	since := t0.Add(2 * time.Second)
	if len(p.Graces) != 1 || p.Graces[0].UserID != "a" || !p.Graces[0].Since.Equal(since) {
		t.Fatalf("graces = %+v", p.Graces)
	}
	if eff, err := s.ExpireGrace(ctx, "a", since, t0.Add(6*time.Second)); err != nil || len(eff.Publish) > 0 {
		t.Fatalf("early expiry published=%v err=%v", eff.Publish, err)
	}
	if eff, err := s.ExpireGrace(ctx, "a", since, t0.Add(7*time.Second)); err != nil || len(eff.Publish) != 1 {
		t.Fatalf("expiry published=%v err=%v", eff.Publish, err)
	}
	if eff, _ := s.ExpireGrace(ctx, "a", since, t0.Add(8*time.Second)); len(eff.Publish) > 0 {
		t.Fatal("second expiry published again")
	}
	got := detailTypes(t, s)
	want := []events.DetailType{events.DetailUserOnline, events.DetailUserOnline, events.DetailUserOffline}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("published %v, want %v", got, want)
	}
}

func TestRestartResumesFromCheckpointAndRebuildEqualsLive(t *testing.T) {
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	s := open(t, path, clk, nil)
	ctx := context.Background()
	for i := range 30 {
		uid := fmt.Sprintf("u%d", i%7)
		cid := fmt.Sprintf("c%d", i)
		at := t0.Add(time.Duration(i) * time.Second)
		mustAppend(t, s, events.Opened(uid, cid, at, "", ""), events.Activity(uid, cid, at.Add(time.Millisecond)))
		if i%3 == 0 {
			mustAppend(t, s, events.Closed(uid, cid, at.Add(2*time.Second), events.ReasonClient))
		}
	}
	mustProject(t, s)
	// Appended but not projected before the restart.
	mustAppend(t, s, events.Closed("u1", "c1", t0.Add(time.Minute), events.ReasonExpired))
	s.Close()

	s = open(t, path, clk, nil)
	defer s.Close()
	// Close wrote the snapshot: the start replays nothing.
	if p := s.Recovered(); p.Events != 0 {
		t.Fatalf("after a clean restart the start replayed %d records, want none", p.Events)
	}
	clk.Set(t0.Add(time.Hour))
	graces, _ := s.PendingGraces(ctx)
	for _, g := range graces {
		if _, err := s.ExpireGrace(ctx, g.UserID, g.Since, clk.Now()); err != nil {
			t.Fatal(err)
		}
	}
	live, err := s.Dump(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := detailTypes(t, s)
	if _, err := s.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	rebuilt, err := s.Dump(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(live, rebuilt) {
		t.Fatalf("rebuilt view differs:\nlive    %+v\nrebuilt %+v", live, rebuilt)
	}
	if after := detailTypes(t, s); !reflect.DeepEqual(before, after) {
		t.Fatalf("rebuild published again: %v -> %v", before, after)
	}
}

func TestLiveConnectionsOf(t *testing.T) {
	clk := &clock{t: t0}
	s := open(t, filepath.Join(t.TempDir(), "db"), clk, nil)
	defer s.Close()
	mustAppend(t, s, events.Opened("a", "a1", t0, "", ""), events.Opened("a", "a2", t0, "", ""),
		events.Opened("b", "b1", t0, "", ""), events.Closed("b", "b1", t0.Add(time.Second), events.ReasonClient))
	mustProject(t, s)
	users := []string{"a", "b", "ghost"}
	for i := range 600 {
		users = append(users, fmt.Sprintf("x%d", i))
	}
	got := s.LiveConnectionsOf(users)
	if len(got) != len(users) || !reflect.DeepEqual(got["a"], []string{"a1", "a2"}) || len(got["b"]) != 0 || got["ghost"] == nil {
		t.Fatalf("LiveConnectionsOf = %v entries, a %v, b %v", len(got), got["a"], got["b"])
	}
}

func TestQueueAndOutbox(t *testing.T) {
	clk := &clock{t: t0}
	s := open(t, filepath.Join(t.TempDir(), "db"), clk, nil)
	defer s.Close()
	ctx := context.Background()
	m := sqlite.QueuedMessage{MessageID: "m1", UserID: "u", Body: "hi", EnqueuedAt: t0}
	if err := s.Enqueue(ctx, m, m, sqlite.QueuedMessage{MessageID: "m1", UserID: "v", Body: "hi", EnqueuedAt: t0}); err != nil {
		t.Fatal(err)
	}
	q, err := s.PendingMessages(ctx, 0, 10)
	if err != nil || len(q) != 2 || q[0].UserID != "u" || q[1].UserID != "v" {
		t.Fatalf("queue = %+v, %v", q, err)
	}
	out := []events.Published{events.NewMessageDelivered("m1", "u", 1, t0), events.NewMessageUndeliverable("m1", "v", events.UndeliverableOffline, t0)}
	if n, err := s.Complete(ctx, q[:2], out); err != nil || n != 2 {
		t.Fatalf("Complete = %d, %v", n, err)
	}
	if n, err := s.Complete(ctx, q[:2], out); err != nil || n != 0 {
		t.Fatalf("completing the same messages again published %d (%v)", n, err)
	}
	if _, err := s.Complete(ctx, q[:1], out); !errors.Is(err, sqlite.ErrMismatch) {
		t.Fatalf("two outcomes for one message: %v", err)
	}
	if q, _ := s.PendingMessages(ctx, 0, 10); len(q) != 0 {
		t.Fatalf("queue not emptied: %+v", q)
	}
	head, _ := s.LastPublishedSeq(ctx)
	recs, _ := s.PublishedSince(ctx, head-1, 10)
	if len(recs) != 1 || recs[0].DetailType != events.DetailMessageUndeliverable {
		t.Fatalf("PublishedSince(head-1) = %+v", recs)
	}
}

// TestMissingViewIsRebuiltOnOpen: a store whose view is gone (or of a version from before
// the log was compacted, with the whole log kept) is
// folded again from the log when opened, to the same view.
func TestMissingViewIsRebuiltOnOpen(t *testing.T) {
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	s := open(t, path, clk, nil)
	ctx := context.Background()
	mustAppend(t, s, events.Opened("a", "a1", t0, "", ""), events.Opened("b", "b1", t0, "", ""),
		events.Closed("b", "b1", t0.Add(time.Second), events.ReasonClient))
	mustProject(t, s)
	want, _ := s.Dump(ctx)
	s.Close()

	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`DROP TABLE view_users; UPDATE meta SET value = '3' WHERE key = 'view_version'`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s = open(t, path, clk, nil)
	defer s.Close()
	if p := s.Recovered(); p.Events != 3 {
		t.Fatalf("re-folded %d events, want all 3", p.Events)
	}
	got, _ := s.Dump(ctx)
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("view after rebuild on open:\nwant %+v\ngot  %+v", want, got)
	}
}

// TestAppendIsFoldedBeforeItReturns: an append returns once the events and their fold are
// one durable commit, so a grace timer that runs right after a reconnect was appended
// decides against a state that holds it (no flap), and readers see it at once.
func TestAppendIsFoldedBeforeItReturns(t *testing.T) {
	clk := &clock{t: t0}
	s := open(t, filepath.Join(t.TempDir(), "db"), clk, nil)
	defer s.Close()
	ctx := context.Background()
	mustAppend(t, s, events.Opened("a", "a1", t0, "", ""))
	mustAppend(t, s, events.Closed("a", "a1", t0.Add(time.Second), events.ReasonClient))
	since := t0.Add(time.Second)
	// The reconnect, 1 ms before the deadline; no projector runs in between.
	mustAppend(t, s, events.Opened("a", "a2", since.Add(5*time.Second-time.Millisecond), "", ""))
	if live, err := s.LiveConnections(ctx, "a"); err != nil || len(live) != 1 || live[0] != "a2" {
		t.Fatalf("live right after the append: %v, %v", live, err)
	}
	eff, err := s.ExpireGrace(ctx, "a", since, since.Add(5*time.Second))
	if err != nil || len(eff.Publish) != 0 {
		t.Fatalf("the grace timer decided %v (%v) against a state without the reconnect", eff.Publish, err)
	}
	if got := detailTypes(t, s); !reflect.DeepEqual(got, []events.DetailType{events.DetailUserOnline}) {
		t.Fatalf("published %v, want the one UserOnline", got)
	}
}

// TestRebuildReplaysTheTimersDecisions: a grace timer's decision is a record of the log, so
// a rebuild replays what was decided (a's UserOffline) and decides nothing a timer did not
// (b's period, whose deadline passed while no timer ran, stays pending for the next start's
// timer), whatever the clock says at rebuild time.
func TestRebuildReplaysTheTimersDecisions(t *testing.T) {
	clk := &clock{t: t0}
	s := open(t, filepath.Join(t.TempDir(), "db"), clk, nil)
	defer s.Close()
	ctx := context.Background()
	mustAppend(t, s, events.Opened("a", "a1", t0, "", ""), events.Opened("b", "b1", t0, "", ""))
	mustAppend(t, s, events.Closed("a", "a1", t0.Add(time.Second), events.ReasonClient), events.Closed("b", "b1", t0.Add(time.Second), events.ReasonClient))
	since := t0.Add(time.Second)
	if eff, err := s.ExpireGrace(ctx, "a", since, since.Add(5*time.Second)); err != nil || len(eff.Publish) != 1 {
		t.Fatalf("a's timer: %v, %v", eff.Publish, err)
	}
	before, _ := s.Dump(ctx)
	published := detailTypes(t, s)
	clk.Set(t0.Add(time.Hour)) // long past b's deadline; b's timer never ran
	if _, err := s.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	after, _ := s.Dump(ctx)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("the rebuild differs from the live view:\nlive    %+v\nrebuilt %+v", before, after)
	}
	if got := detailTypes(t, s); !reflect.DeepEqual(got, published) {
		t.Fatalf("the rebuild published %v, the live runs %v", got, published)
	}
	graces, _ := s.PendingGraces(ctx)
	if len(graces) != 1 || graces[0].UserID != "b" {
		t.Fatalf("pending graces after the rebuild: %+v, want b's", graces)
	}
}

// TestRebuildFoldsWithTheServedGrace: a store served with a 1 s grace period records it;
// a rebuild that names none (wspresence rebuild) folds with it. With the default 5 s, the
// timer's logged decision (at 1 s past the close) would decide nothing on replay, leaving
// the user's grace period pending, and the next start would publish a second UserOffline.
func TestRebuildFoldsWithTheServedGrace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	ctx := context.Background()
	clk := &clock{t: t0}
	s, err := sqlite.Open(ctx, path, sqlite.Options{Grace: time.Second, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s, events.Opened("r", "r1", t0, "", ""))
	since := t0.Add(time.Second)
	mustAppend(t, s, events.Closed("r", "r1", since, events.ReasonClient))
	if eff, err := s.ExpireGrace(ctx, "r", since, since.Add(time.Second)); err != nil || len(eff.Publish) != 1 {
		t.Fatalf("the timer: %v, %v", eff.Publish, err)
	}
	published := detailTypes(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := sqlite.Open(ctx, path, sqlite.Options{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if _, err := again.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	if graces, _ := again.PendingGraces(ctx); len(graces) != 0 {
		t.Fatalf("pending graces after the rebuild: %+v: the next start would announce the user offline again", graces)
	}
	if got := detailTypes(t, again); !reflect.DeepEqual(got, published) {
		t.Fatalf("the rebuild published %v, the live run %v", got, published)
	}
}

// TestWALStaysBounded: under sustained writes (48 MiB of 64 KB messages from 8 writers,
// no pause) the write-ahead log stays near its limit (2 MiB here): the truncating
// checkpoint between commits catches up where the background ones do not. The log's size
// is reported.
func TestWALStaysBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	ctx := context.Background()
	var reported atomic.Int64
	s, err := sqlite.Open(ctx, path, sqlite.Options{Grace: 5 * time.Second, WALLimit: 2 << 20, Sync: "normal",
		OnWAL: func(n int64) { reported.Store(n + 1) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stop := make(chan struct{})
	var peak atomic.Int64
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if st, err := os.Stat(path + "-wal"); err == nil && st.Size() > peak.Load() {
				peak.Store(st.Size())
			}
		}
	}()
	body := strings.Repeat("x", 64<<10)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 96 {
				if err := s.Enqueue(ctx, sqlite.QueuedMessage{MessageID: fmt.Sprintf("w%d-%d", w, i), UserID: "u", Body: body, EnqueuedAt: t0}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	time.Sleep(1200 * time.Millisecond) // a checkpoint interval: the size is reported
	close(stop)
	if p := peak.Load(); p > 8<<20 {
		t.Fatalf("the WAL reached %d bytes with a 2 MiB limit, after 48 MiB of writes", p)
	}
	if reported.Load() == 0 {
		t.Fatal("the WAL's size was never reported")
	}
	t.Logf("WAL peak %.1f MiB with a 2 MiB limit, after 48 MiB of writes", float64(peak.Load())/(1<<20))
}

// TestWALTruncateHeldByAReader: a reader on an older snapshot keeps the WAL's bound from
// truncating it: that is a state, logged once (a warning, not an error per commit), the
// writes go on, and the WAL is truncated once the reader is done.
func TestWALTruncateHeldByAReader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db")
	ctx := context.Background()
	logs := &syncBuilder{}
	logger := slog.New(slog.NewJSONHandler(logs, nil))
	s, err := sqlite.Open(ctx, path, sqlite.Options{Grace: 5 * time.Second, WALLimit: 1, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	release := sqlite.HoldSnapshot(t, path)
	for i := range 5 {
		if _, err := s.Append(ctx, events.Opened("u", fmt.Sprintf("c%d", i), t0, "", "")); err != nil {
			t.Fatal(err)
		}
	}
	release()
	if _, err := s.Append(ctx, events.Opened("u", "after", t0, "", "")); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(logs.String(), "the WAL is not truncated yet"); got != 1 {
		t.Fatalf("%d warnings for a held WAL, want 1: %s", got, logs.String())
	}
	if strings.Contains(logs.String(), `"level":"ERROR"`) || !strings.Contains(logs.String(), "the WAL is truncated again") {
		t.Fatalf("the WAL is not truncated once the reader is done: %s", logs.String())
	}
}

// syncBuilder is a strings.Builder safe for concurrent use (a logger's output).
type syncBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *syncBuilder) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuilder) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestOutcomesArePublishedInOrder: the outcomes of one Complete, more than one INSERT
// holds, reach the outbox in the order given, at increasing positions, each the envelope
// json.Marshal writes; those of messages already done are not published again, nor is an
// event a file of an earlier version (its unique index on event ids) already holds.
func TestOutcomesArePublishedInOrder(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: t0}
	path := filepath.Join(t.TempDir(), "db")
	s := open(t, path, clk, nil)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	dup := events.NewMessageDelivered("m20", "u", 1, t0)
	execOn(t, path, `CREATE UNIQUE INDEX published_event ON published (event_id)`,
		`INSERT INTO published (event_id, detail_type, envelope) VALUES ('`+dup.ID()+`', 'MessageDelivered', '{}')`)
	s = open(t, path, clk, nil)
	defer s.Close()
	var msgs []sqlite.QueuedMessage
	for i := range 40 {
		msgs = append(msgs, sqlite.QueuedMessage{MessageID: fmt.Sprint("m", i), UserID: "u", Body: "b", EnqueuedAt: t0})
	}
	if err := s.Enqueue(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	q, err := s.PendingMessages(ctx, 0, 100)
	if err != nil || len(q) != 40 {
		t.Fatalf("queue %d %v", len(q), err)
	}
	var outs []events.Published
	for _, m := range q {
		outs = append(outs, events.NewMessageDelivered(m.MessageID, m.UserID, 1, t0))
	}
	if n, err := s.Complete(ctx, q[:5], outs[:5]); err != nil || n != 5 {
		t.Fatalf("complete the first 5: %d %v", n, err)
	}
	if n, err := s.Complete(ctx, q, outs); err != nil || n != 34 {
		t.Fatalf("complete all 40: published %d, want 34 (%v)", n, err)
	}
	recs, err := s.PublishedSince(ctx, 0, 100)
	if err != nil || len(recs) != 40 {
		t.Fatalf("outbox %d rows, want 40: %v", len(recs), err)
	}
	want := append(append([]events.Published{nil}, outs[:20]...), outs[21:]...)
	for i, r := range recs {
		if i > 0 && r.Seq <= recs[i-1].Seq {
			t.Fatalf("row %d at position %d, after %d", i, r.Seq, recs[i-1].Seq)
		}
		if want[i] == nil {
			continue // the earlier version's row
		}
		env, err := events.NewEnvelope(want[i], sqlite.LocalAccount, sqlite.LocalRegion, t0)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(env)
		if !bytes.Equal(r.Envelope, b) {
			t.Fatalf("row %d: %s, want %s", i, r.Envelope, b)
		}
	}
	if head, err := s.LastPublishedSeq(ctx); err != nil || head != recs[39].Seq {
		t.Fatalf("last position %d %v", head, err)
	}
}
