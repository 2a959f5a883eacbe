package localrt_test

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/httperr"
	"github.com/wspresence/wspresence/internal/localrt"
	"github.com/wspresence/wspresence/internal/store/sqlite"
)

// TestStoreFailureLeavesNoGhost: while the store cannot write (a full disk), new
// connections and POST /messages get 503 with Retry-After and nothing is accepted; a
// connection that ends meanwhile is shown closed at once (its user offline in every read),
// its close kept pending and written once the store writes again, when its UserOffline is
// published, once; and the server takes connections again.
func TestStoreFailureLeavesNoGhost(t *testing.T) {
	var full atomic.Bool
	errFull := errors.New("no space left on device")
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) {
		c.OfflineGrace = 200 * time.Millisecond
		localrt.SetStoreFault(c, func() error {
			if full.Load() {
				return errFull
			}
			return nil
		})
	})
	sub := ts.subscribe("0")
	c := ts.dial("ghost")
	waitFor(t, "ghost online", func() bool { s, _ := ts.online("userIds=ghost"); return s[0].IsOnline })

	full.Store(true)
	// New connections are refused with 503 before the upgrade.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, resp, err := websocket.Dial(ctx, ts.ws+"/?Authorization="+ts.token("other"), nil)
	cancel()
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("connect while the store cannot write: %v %v", err, resp)
	}
	// Messages are refused with 503 and Retry-After.
	r := ts.do(http.MethodPost, "/messages", testKey, []byte(`{"UserId":"ghost","Body":"x"}`))
	expectError(t, r, http.StatusServiceUnavailable, httperr.CodeUnavailable)
	if r.header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
	// The user's only connection closes while the close cannot be written.
	// It is shown closed at once (no ghost), its close kept pending: nothing is published
	// while it cannot be written.
	c.close(t)
	waitFor(t, "the close pending", func() bool { return ts.metrics()["wspresence_closes_pending"] == 1 })
	if s, _ := ts.online("userIds=ghost"); s[0].IsOnline {
		t.Fatal("a user whose close could not be written is shown online")
	}
	if list, _ := ts.online(""); len(list) != 0 {
		t.Fatalf("the list shows %v online", list)
	}
	if n := ts.metrics()["wspresence_online_users"]; n != 0 {
		t.Fatalf("wspresence_online_users %v", n)
	}
	time.Sleep(500 * time.Millisecond) // past the grace period
	if n := len(sub.of(events.DetailUserOffline, "ghost")); n != 0 {
		t.Fatalf("%d UserOffline published although the close was not written", n)
	}

	full.Store(false) // space is freed: the close is written, and published once
	waitFor(t, "UserOffline", func() bool { return len(sub.of(events.DetailUserOffline, "ghost")) == 1 })
	waitFor(t, "no close pending", func() bool { return ts.metrics()["wspresence_closes_pending"] == 0 })
	if s, _ := ts.online("userIds=ghost"); s[0].IsOnline {
		t.Fatal("ghost online once the close is written")
	}
	// And the server works again.
	again := ts.dial("ghost")
	ts.send(`{"UserId":"ghost","Body":"back"}`)
	again.expectFrame(t, "back")
}

// TestReconciliationClosesGhosts: a connection the view holds live but no socket does (its
// close was never recorded) is closed by the periodic reconciliation, and its user goes
// offline; live sockets are left alone.
func TestReconciliationClosesGhosts(t *testing.T) {
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) {
		c.OfflineGrace = 100 * time.Millisecond
		localrt.SetReconcileInterval(c, 100*time.Millisecond)
	})
	sub := ts.subscribe("0")
	real := ts.dial("alive")
	if _, err := ts.srv.Store().Append(context.Background(), events.Opened("ghost", "no-socket", time.Now(), "", "")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ghost online in the view", func() bool { s, _ := ts.online("userIds=ghost"); return s[0].IsOnline })
	waitFor(t, "the ghost closed", func() bool { s, _ := ts.online("userIds=ghost"); return !s[0].IsOnline })
	waitFor(t, "UserOffline of the ghost", func() bool { return len(sub.of(events.DetailUserOffline, "ghost")) == 1 })
	if s, _ := ts.online("userIds=alive"); !s[0].IsOnline {
		t.Fatal("reconciliation closed a connection with a live socket")
	}
	ts.send(`{"UserId":"alive","Body":"still here"}`)
	real.expectFrame(t, "still here")
}

// TestRefusedHandshakeLeavesNoTrace: a handshake the WebSocket library refuses (a version
// it does not speak, a key that is not one) gets its 4xx, and nothing is appended or
// published: no UserOnline and UserOffline for a connection that never existed.
func TestRefusedHandshakeLeavesNoTrace(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	sub := ts.subscribe("0")
	for name, tweak := range map[string]func(h http.Header){
		"version": func(h http.Header) { h.Set("Sec-WebSocket-Version", "12") },
		"key":     func(h http.Header) { h.Set("Sec-WebSocket-Key", "not-a-key") },
	} {
		req, _ := http.NewRequest(http.MethodGet, ts.base+"/?Authorization="+ts.token("never-upgraded"), nil)
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		tweak(req.Header)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Fatalf("%s: %d, want the library's refusal", name, resp.StatusCode)
		}
	}
	c := ts.dial("probe-user") // published after anything the refusals would have published
	waitFor(t, "the probe's UserOnline", func() bool { return len(sub.of(events.DetailUserOnline, "probe-user")) == 1 })
	if on, off := sub.of(events.DetailUserOnline, "never-upgraded"), sub.of(events.DetailUserOffline, "never-upgraded"); len(on)+len(off) != 0 {
		t.Fatalf("a refused handshake published %v %v", on, off)
	}
	if s, _ := ts.online("userIds=never-upgraded"); s[0].IsOnline || !s[0].LastActivity.IsZero() {
		t.Fatalf("a refused handshake left %+v", s[0])
	}
	c.close(t)
}

// TestEmptiedStoreRefusesToStart: a data dir whose store held state and now holds an
// empty file (or another store) refuses to start, saying what happened and how to
// restore, instead of serving an empty history as if it were the one it held.
func TestEmptiedStoreRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, nil)
	ts.send(`{"UserId":"someone","Body":"history"}`)
	ts.stop()
	for _, f := range []string{localrt.StoreFile, localrt.StoreFile + "-wal", localrt.StoreFile + "-shm"} {
		if err := os.Truncate(filepath.Join(dir, f), 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
	}
	cfg := localrt.DefaultConfig()
	cfg.Addr, cfg.DataDir, cfg.JWTSecret, cfg.APIKey = "127.0.0.1:0", dir, testSecret, testKey
	srv, err := localrt.New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil {
		_ = srv.Shutdown(context.Background())
		t.Fatal("an emptied store started")
	}
	if !errors.Is(err, localrt.ErrStoreReplaced) || !strings.Contains(err.Error(), "restore") {
		t.Fatalf("refusal %v, want ErrStoreReplaced naming the restore", err)
	}
	// A new data dir starts, and starts again.
	fresh := t.TempDir()
	startServer(t, fresh, nil).stop()
	startServer(t, fresh, nil)
}

// TestMessageRightAfterTheUpgradeReachesIt: read-your-connect with no window: a message
// sent the moment the client's upgrade returns reaches that connection, every time (the
// connection is in the hub, pending, from the instant its open is durable).
func TestMessageRightAfterTheUpgradeReachesIt(t *testing.T) {
	ts := startServer(t, t.TempDir(), nil)
	for i := range 40 {
		user := "ryc-" + strconv.Itoa(i)
		c := ts.dial(user)
		ts.send(`{"UserId":"` + user + `","Body":"right after"}`)
		c.expectFrame(t, "right after")
	}
}

// TestDamagedStoreIsNotHealthy: a page of the outbox zeroed on disk (the server stopped)
// does not stop the start, but the store's integrity check finds it: /healthz answers 503
// "damaged" instead of ok, so an orchestrator stops routing to it.
func TestDamagedStoreIsNotHealthy(t *testing.T) {
	startWithADamagedPage(t, "published")
}

// startWithADamagedPage fills a store's outbox, zeroes the second leaf page of table on disk
// (the server stopped), starts the server again on it and waits for /healthz to answer 503
// "damaged".
func startWithADamagedPage(t *testing.T, table string) *testServer {
	t.Helper()
	dir := t.TempDir()
	fillOutbox(t, dir)
	zeroPage(t, dir, `SELECT pageno FROM dbstat WHERE name = '`+table+`' AND pagetype = 'leaf' ORDER BY pageno LIMIT 1 OFFSET 1`)

	again := startServer(t, dir, nil)
	waitFor(t, "/healthz to report the damage", func() bool {
		r := again.do(http.MethodGet, "/healthz", "", nil)
		return r.status == http.StatusServiceUnavailable && strings.Contains(string(r.body), "damaged")
	})
	return again
}

// zeroPage overwrites the page of the stopped store in dir that query (on dbstat) picks,
// or the file's last page when query is "".
func zeroPage(t *testing.T, dir, query string) {
	t.Helper()
	path := filepath.Join(dir, localrt.StoreFile)
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	var page, size int64
	if query == "" {
		query = `PRAGMA page_count`
	}
	if err := db.QueryRow(query).Scan(&page); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`PRAGMA page_size`).Scan(&size); err != nil {
		t.Fatal(err)
	}
	db.Close()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, size), (page-1)*size); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

// TestDamagedStoreRefusesMessages: a store whose last page was zeroed cannot finish the
// messages it would accept (their outcomes cannot be recorded): once the damage is known,
// POST /messages answers 503 damaged instead of 202, and nothing is acknowledged that the
// store cannot finish.
func TestDamagedStoreRefusesMessages(t *testing.T) {
	dir := t.TempDir()
	fillOutbox(t, dir)
	zeroPage(t, dir, "")

	again := startServer(t, dir, nil)
	accepted := 0
	waitFor(t, "POST /messages refused", func() bool {
		r := again.do(http.MethodPost, "/messages", testKey, []byte(`{"UserId":"someone","Body":"x"}`))
		if r.status == http.StatusAccepted {
			accepted++
			return false
		}
		expectError(t, r, http.StatusServiceUnavailable, httperr.CodeDamaged)
		return true
	})
	r := again.do(http.MethodGet, "/healthz", "", nil)
	if r.status != http.StatusServiceUnavailable || !strings.Contains(string(r.body), "damaged") {
		t.Fatalf("/healthz %d %s", r.status, r.body)
	}
	for range 5 {
		r := again.do(http.MethodPost, "/messages", testKey, []byte(`{"UserId":"someone","Body":"x"}`))
		expectError(t, r, http.StatusServiceUnavailable, httperr.CodeDamaged)
	}
	t.Logf("%d messages accepted before the damage was known", accepted)
}

// TestFlippedOutboxRowIsNotServed: an outbox row whose text was changed on disk (one byte:
// UserOffline made UserOnline, or a line that is no longer JSON) is never streamed:
// /events answers 503 damaged, /healthz reports it, and the log names the table and the
// row's position.
func TestFlippedOutboxRowIsNotServed(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, nil)
	for i := range 3 {
		ts.send(`{"UserId":"flip-` + strconv.Itoa(i) + `","Body":"x"}`)
	}
	if status, ids := ts.eventIDs("", 3); status != http.StatusOK || len(ids) != 3 {
		t.Fatalf("before: %d %v", status, ids)
	}
	ts.stop()
	db, err := sql.Open("sqlite", filepath.Join(dir, localrt.StoreFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE published SET envelope = replace(envelope, '"flip-1"', '"flip-7"') WHERE seq = 2`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	again := startServer(t, dir, nil)
	r := again.doWith(http.MethodGet, "/events?after=0", nil)
	expectError(t, r, http.StatusServiceUnavailable, httperr.CodeDamaged)
	if strings.Contains(string(r.body), "flip-7") {
		t.Fatalf("the damaged row was served: %s", r.body)
	}
	h := again.do(http.MethodGet, "/healthz", "", nil)
	if h.status != http.StatusServiceUnavailable || !strings.Contains(string(h.body), "damaged") {
		t.Fatalf("/healthz %d %s", h.status, h.body)
	}
	if logs := again.logs.String(); !strings.Contains(logs, `"table":"published"`) || !strings.Contains(logs, `"position":2`) {
		t.Fatalf("no log line names the damaged row: %s", logs)
	}
}

// TestFullDiskIsReported: while the store cannot write (a full disk, simulated by the
// store's fault hook: this test cannot mount a size-limited filesystem), /healthz answers
// 503 cannot_write, the failure is logged once (not once per refused request), and once
// the store can write again /healthz is ok and writes resume, without a restart.
func TestFullDiskIsReported(t *testing.T) {
	var full atomic.Bool
	ts := startServer(t, t.TempDir(), func(c *localrt.Config) {
		localrt.SetStoreFault(c, func() error {
			if full.Load() {
				return errors.New("database or disk is full")
			}
			return nil
		})
	})
	full.Store(true)
	for range 50 {
		r := ts.do(http.MethodPost, "/messages", testKey, []byte(`{"UserId":"someone","Body":"x"}`))
		expectError(t, r, http.StatusServiceUnavailable, httperr.CodeUnavailable)
	}
	h := ts.do(http.MethodGet, "/healthz", "", nil)
	if h.status != http.StatusServiceUnavailable || !strings.Contains(string(h.body), "cannot_write") {
		t.Fatalf("/healthz on a full disk: %d %s", h.status, h.body)
	}
	errorLines := 0
	for _, line := range strings.Split(ts.logs.String(), "\n") {
		// The periodic prunes log their own failed pass, once a pass.
		if strings.Contains(line, `"level":"ERROR"`) && !strings.Contains(line, `"msg":"prune"`) {
			errorLines++
		}
	}
	if errorLines != 1 {
		t.Fatalf("%d ERROR lines for 50 refused requests, want the one state change: %s", errorLines, ts.logs.String())
	}
	full.Store(false)
	waitFor(t, "/healthz ok once the store writes again", func() bool {
		return ts.do(http.MethodGet, "/healthz", "", nil).status == http.StatusOK
	})
	ts.send(`{"UserId":"someone","Body":"back"}`)
	if !strings.Contains(ts.logs.String(), "the store writes again") {
		t.Fatal("the recovery is not logged")
	}
}

// fillOutbox runs a server on dir that accepts 200 messages for users never seen and
// publishes their 200 outcomes (pages of queue and outbox rows to damage), then stops it.
func fillOutbox(t *testing.T, dir string) {
	t.Helper()
	ts := startServer(t, dir, nil)
	for i := range 200 {
		ts.send(`{"UserId":"nobody-` + strconv.Itoa(i) + `","Body":"` + strings.Repeat("x", 200) + `"}`)
	}
	waitFor(t, "the outcomes published", func() bool {
		r := ts.do(http.MethodGet, "/metrics", "", nil)
		return strings.Contains(string(r.body), `wspresence_messages_total{outcome="undeliverable"} 200`)
	})
	ts.stop()
}

// TestFlippedQueueRowIsNotDelivered: a pending queue row whose body was changed on disk
// (one byte) is never dispatched: the start's read of the queue finds it damaged, /healthz
// answers 503 damaged, the log names the table and the row's position, new messages are
// refused with 503 damaged, and the row is left as it was, with no outcome recorded.
func TestFlippedQueueRowIsNotDelivered(t *testing.T) {
	dir := t.TempDir()
	startServer(t, dir, nil).stop()
	path := filepath.Join(dir, localrt.StoreFile)
	ctx := context.Background()
	st, err := sqlite.Open(ctx, path, sqlite.Options{RecoveryWindow: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		n := strconv.Itoa(i)
		if err := st.Enqueue(ctx, sqlite.QueuedMessage{MessageID: "m-" + n, UserID: "held-" + n, Body: `"secret-` + n + `"`, EnqueuedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var seq int64
	if err := db.QueryRow(`UPDATE messages SET body = replace(body, 'secret-1', 'secret-7') WHERE message_id = 'm-1' RETURNING seq`).Scan(&seq); err != nil {
		t.Fatal(err)
	}

	again := startServer(t, dir, nil)
	waitFor(t, "the damaged queue row reported", func() bool {
		h := again.do(http.MethodGet, "/healthz", "", nil)
		return h.status == http.StatusServiceUnavailable && strings.Contains(string(h.body), "damaged")
	})
	if logs := again.logs.String(); !strings.Contains(logs, `"table":"messages"`) || !strings.Contains(logs, `"position":`+strconv.FormatInt(seq, 10)) {
		t.Fatalf("no log line names the damaged row: %s", logs)
	}
	r := again.do(http.MethodPost, "/messages", testKey, []byte(`{"UserId":"someone","Body":"x"}`))
	expectError(t, r, http.StatusServiceUnavailable, httperr.CodeDamaged)
	again.stop()
	var body string
	var done sql.NullInt64
	if err := db.QueryRow(`SELECT body, done_at FROM messages WHERE seq = ?`, seq).Scan(&body, &done); err != nil {
		t.Fatal(err)
	}
	if done.Valid || body != `"secret-7"` {
		t.Fatalf("the damaged row was completed: body %s, done at %v", body, done)
	}
}

// TestDamageElsewhereDoesNotStopEvents: /events answers 503 only for damage of what it
// serves. A store with a damaged page of the queue (its messages table) is reported by
// /healthz, but /events still streams the outbox's rows, each checked as it is read; a
// changed outbox row (TestFlippedOutboxRowIsNotServed) stops it.
func TestDamageElsewhereDoesNotStopEvents(t *testing.T) {
	again := startWithADamagedPage(t, "messages")
	status, ids := again.eventIDs("", 200)
	if status != http.StatusOK || len(ids) != 200 {
		t.Fatalf("/events with a damaged queue page: %d, %d of 200 events", status, len(ids))
	}
}
