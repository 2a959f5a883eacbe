package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("store closed")

// Options tune a Store. The zero value of each field takes its default.
type Options struct {
	// Grace is the offline grace period the projector applies (default 5s).
	Grace time.Duration
	// MaxBatch is the most write requests group-committed in one transaction (default 512).
	MaxBatch int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives the store's logs (default slog.Default()).
	Logger *slog.Logger
	// Sync is SQLite's synchronous mode: "full" (default) makes every commit durable
	// against power loss (an fsync per commit); "normal" keeps commits durable against a
	// crash of the process (the WAL is fsynced at checkpoints) for far fewer fsyncs.
	Sync string
	// OnCommit, if set, is called after each group commit with the number of requests it
	// held (for metrics).
	OnCommit func(requests int)
	// OnAppended, if set, is called after each commit for every event it appended.
	OnAppended func(t events.Type)
	// OnProjected, if set, is called for every event the projector folded, with the time
	// from the event to the commit of its fold.
	OnProjected func(lag time.Duration)
	// OnFolded, if set, is called after each group commit that folded events into the view
	// (in the commit itself: readers never see the log ahead of the view) with what the
	// fold did: the events published, the grace periods started. It runs on the writer's
	// goroutine, in commit order, and must not block.
	OnFolded func(Projection)
	// Fault, if set, is called before every group commit; an error it returns fails the
	// commit as a full or failing disk would (fault-injection tests).
	Fault func() error
}

func (o *Options) setDefaults() {
	if o.Grace <= 0 {
		o.Grace = 5 * time.Second
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 512
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Sync == "" {
		o.Sync = "full"
	}
}

// Store is the SQLite event store, view, outbox and message queue.
type Store struct {
	w, r   *sql.DB
	opts   Options
	reqs   chan *writeReq
	stop   chan struct{}
	done   chan struct{}
	wakeup chan struct{}
}

// QueuedMessage is a message waiting in the local queue for one user.
type QueuedMessage struct {
	Seq        int64
	MessageID  string
	UserID     string
	Body       string
	EnqueuedAt time.Time
}

type writeReq struct {
	events   []events.ConnectionEvent
	messages []QueuedMessage
	// completes and outcomes, if set, are delivered messages to mark done and their
	// outcome events (Complete); published counts the outcome events that were new.
	completes []int64
	outcomes  []events.Published
	published int
	// grace, if set, is a grace timer's decision to log and fold in this commit.
	grace *graceDecision
	// decided is what the fold decided for grace.
	decided  presence.Effects
	appended int
	// written marks which events were new.
	written []bool
	done    chan error
}

// graceDecision is the log record of a grace timer that fired: the user's period that
// began at Since, decided at At. The fold runs presence.ExpireGracePeriod on it in log
// order, so a rebuild replays what the timer decided.
type graceDecision struct {
	UserID string    `json:"userId"`
	Since  time.Time `json:"since"`
	At     time.Time `json:"at"`
}

// graceRecordType is the type of a grace decision's row in the log.
const graceRecordType = "GraceExpired"

func (g graceDecision) key() string {
	return fmt.Sprintf("%s#%s#%d#%d", graceRecordType, g.UserID, g.Since.UnixNano(), g.At.UnixNano())
}

// Open opens (creating if needed) the store in the SQLite file at path and starts its
// writer. A view of another version, or none, is rebuilt from the log by the projector.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	opts.setDefaults()
	dsn := func(extra string) string {
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(10000)")
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous("+strings.ToUpper(opts.Sync)+")")
		q.Add("_pragma", "foreign_keys(ON)")
		if extra != "" {
			q.Add("_pragma", extra)
		}
		return "file:" + path + "?" + q.Encode() + "&_txlock=immediate"
	}
	w, err := sql.Open("sqlite", dsn(""))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetConnMaxIdleTime(0)
	if err := migrate(ctx, w); err != nil {
		w.Close()
		return nil, fmt.Errorf("prepare %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", dsn("query_only(1)"))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open %s for reading: %w", path, err)
	}
	r.SetMaxOpenConns(8)
	s := &Store{w: w, r: r, opts: opts, reqs: make(chan *writeReq, 4096), stop: make(chan struct{}),
		done: make(chan struct{}), wakeup: make(chan struct{}, 1)}
	go s.writer()
	return s, nil
}

func migrate(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, logSchema); err != nil {
		return fmt.Errorf("create log tables: %w", err)
	}
	var version string
	err := db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'view_version'`).Scan(&version)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("read view version: %w", err)
	}
	if version != viewVersion {
		if _, err := db.ExecContext(ctx, dropView); err != nil {
			return fmt.Errorf("drop old view: %w", err)
		}
	}
	if _, err := db.ExecContext(ctx, viewSchema); err != nil {
		return fmt.Errorf("create view tables: %w", err)
	}
	_, err = db.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('view_version', ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value`, viewVersion)
	return err
}

// Close stops the writer once the requests already queued are committed, then closes the
// database. Writes after Close return ErrClosed.
func (s *Store) Close() error {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	return errors.Join(s.r.Close(), s.w.Close())
}

// Appended is signalled (without blocking, coalesced) after every commit that appended
// events or enqueued messages: the projector and the deliverer wait on it.
func (s *Store) Appended() <-chan struct{} { return s.wakeup }

// Append appends evs to the log, skipping any whose natural key is already there, and
// returns once they are durable. Concurrent calls share transactions. It returns the
// number of events actually appended.
func (s *Store) Append(ctx context.Context, evs ...events.ConnectionEvent) (int, error) {
	for _, e := range evs {
		if err := e.Validate(); err != nil {
			return 0, err
		}
	}
	req := &writeReq{events: evs, done: make(chan error, 1)}
	if err := s.submit(ctx, req); err != nil {
		return 0, err
	}
	return req.appended, nil
}

// Enqueue stores msgs in the local queue and returns once they are durable. A message
// whose (MessageID, UserID) is already queued, or was delivered within the retention of
// PruneMessages, is not queued again.
func (s *Store) Enqueue(ctx context.Context, msgs ...QueuedMessage) error {
	return s.submit(ctx, &writeReq{messages: msgs, done: make(chan error, 1)})
}

func (s *Store) submit(ctx context.Context, req *writeReq) error {
	select {
	case <-s.stop:
		return ErrClosed
	default:
	}
	select {
	case s.reqs <- req:
	case <-s.stop:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	// Once queued the request is committed even if ctx ends: wait for the answer so the
	// caller never reports failure for a write that lands.
	return <-req.done
}

func (s *Store) writer() {
	defer close(s.done)
	for {
		var first *writeReq
		select {
		case first = <-s.reqs:
		case <-s.stop:
			// Drain what was queued before the stop.
			for {
				select {
				case req := <-s.reqs:
					s.commit([]*writeReq{req})
				default:
					return
				}
			}
		}
		batch := []*writeReq{first}
	fill:
		for len(batch) < s.opts.MaxBatch {
			select {
			case req := <-s.reqs:
				batch = append(batch, req)
			default:
				break fill
			}
		}
		s.commit(batch)
	}
}

func (s *Store) commit(batch []*writeReq) {
	p, folded, err := s.writeBatch(batch)
	if err != nil && len(batch) > 1 {
		// One bad request must not fail the others: retry each alone.
		for _, req := range batch {
			req.appended = 0
			s.commit([]*writeReq{req})
		}
		return
	}
	if err == nil {
		if s.opts.OnCommit != nil {
			s.opts.OnCommit(len(batch))
		}
		if s.opts.OnAppended != nil {
			for _, req := range batch {
				for i, e := range req.events {
					if req.written[i] {
						s.opts.OnAppended(e.Type)
					}
				}
			}
		}
		s.observeFolded(folded)
		if s.opts.OnFolded != nil && p.Events > 0 {
			s.opts.OnFolded(p)
		}
		select {
		case s.wakeup <- struct{}{}:
		default:
		}
	}
	for _, req := range batch {
		req.done <- err
	}
}

// writeBatch appends and enqueues what batch holds and folds the new events into the view,
// all in one transaction: one durable write for the facts and what they decided.
func (s *Store) writeBatch(batch []*writeReq) (p Projection, folded []events.ConnectionEvent, err error) {
	ctx := context.Background()
	if s.opts.Fault != nil {
		if err := s.opts.Fault(); err != nil {
			return p, nil, fmt.Errorf("commit: %w", err)
		}
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return p, nil, fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	insEvent, err := tx.PrepareContext(ctx, `INSERT INTO events (key, type, user_id, connection_id, at, data)
		VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING`)
	if err != nil {
		return p, nil, fmt.Errorf("prepare append: %w", err)
	}
	defer insEvent.Close()
	insMsg, err := tx.PrepareContext(ctx, `INSERT INTO messages (message_id, user_id, body, enqueued_at)
		VALUES (?, ?, ?, ?) ON CONFLICT (message_id, user_id) DO NOTHING`)
	if err != nil {
		return p, nil, fmt.Errorf("prepare enqueue: %w", err)
	}
	defer insMsg.Close()
	for _, req := range batch {
		req.written = make([]bool, len(req.events))
		for i, e := range req.events {
			data, err := json.Marshal(e)
			if err != nil {
				return p, nil, fmt.Errorf("encode %s: %w", e.Key(), err)
			}
			res, err := insEvent.ExecContext(ctx, e.Key(), string(e.Type), e.UserID, e.ConnectionID, e.At.UnixNano(), string(data))
			if err != nil {
				return p, nil, fmt.Errorf("append %s: %w", e.Key(), err)
			}
			n, _ := res.RowsAffected()
			req.appended += int(n)
			req.written[i] = n == 1
		}
		for _, m := range req.messages {
			if _, err := insMsg.ExecContext(ctx, m.MessageID, m.UserID, m.Body, m.EnqueuedAt.UnixNano()); err != nil {
				return p, nil, fmt.Errorf("enqueue %s: %w", m.MessageID, err)
			}
		}
		if len(req.completes) > 0 {
			n, err := s.complete(ctx, tx, req.completes, req.outcomes)
			if err != nil {
				return p, nil, fmt.Errorf("complete: %w", err)
			}
			req.published = n
		}
		if g := req.grace; g != nil {
			data, err := json.Marshal(g)
			if err != nil {
				return p, nil, fmt.Errorf("encode grace decision: %w", err)
			}
			if _, err := insEvent.ExecContext(ctx, g.key(), graceRecordType, g.UserID, "", g.At.UnixNano(), string(data)); err != nil {
				return p, nil, fmt.Errorf("log grace decision of %s: %w", g.UserID, err)
			}
		}
	}
	if p, folded, err = s.foldFeed(ctx, tx, 0); err != nil {
		return p, nil, err
	}
	for _, req := range batch {
		if req.grace != nil {
			req.decided = p.decided[req.grace.key()]
		}
	}
	if err := tx.Commit(); err != nil {
		return p, nil, fmt.Errorf("commit: %w", err)
	}
	return p, folded, nil
}
