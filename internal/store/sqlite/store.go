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
	// Grace is the offline grace period the fold applies (default 5s).
	Grace time.Duration
	// MaxBatch is the most write requests group-committed in one transaction (default 512).
	MaxBatch int
	// SnapshotInterval is how often the view's changed rows are written to the snapshot
	// (default 1s); SnapshotEvents the most log records folded between two snapshots
	// (default 100,000), which bounds what a start replays.
	SnapshotInterval time.Duration
	SnapshotEvents   int
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
	// OnProjected, if set, is called for every event a commit folded, with the time from
	// the event to the commit.
	OnProjected func(lag time.Duration)
	// OnFolded, if set, is called after each group commit that folded log records into
	// the view with what the fold did: the events published, the grace periods started.
	// It runs on the writer's goroutine, in commit order, and must not block.
	OnFolded func(Projection)
	// OnQueued, if set, is called after each commit that enqueued messages, with those
	// messages (their sequence numbers set), in commit order, on the writer's goroutine;
	// it must not block. The deliverer takes them from memory, not from the queue table.
	OnQueued func([]QueuedMessage)
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
	if o.SnapshotInterval <= 0 {
		o.SnapshotInterval = time.Second
	}
	if o.SnapshotEvents <= 0 {
		o.SnapshotEvents = 100_000
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

// Store is the local runtime's durable log (connection events, grace decisions, accepted
// messages, the outbox) and the view as a memory image of it. One writer goroutine
// group-commits every write and folds what it appends, in log order, before it returns;
// the view's rows are snapshotted every SnapshotInterval so a start replays only the tail.
type Store struct {
	w, r *sql.DB
	// ck is the checkpointer's connection; ckDone is closed when it has stopped.
	ck     *sql.DB
	ckDone chan struct{}
	// wc is the writer goroutine's connection and its prepared statements.
	wc    *sql.Conn
	stmts writerStmts
	opts  Options
	img   *image
	reqs  chan *writeReq
	stop  chan struct{}
	done  chan struct{}
	// recovered is what Open's replay of the log's tail folded.
	recovered Projection
	// sinceSnapshot counts the records folded since the last snapshot; lastSnapshot is
	// when it was written (the writer's alone).
	sinceSnapshot int
	lastSnapshot  time.Time
}

type writerStmts struct {
	log, msg, pub, done *sql.Stmt
}

// Projection reports what a fold did.
type Projection struct {
	// Events is the number of log records folded.
	Events int
	// Published is the number of events written to the outbox.
	Published int
	// Graces lists the grace periods the fold started: run ExpireGrace(UserID, Since) at
	// Since plus the grace period.
	Graces []presence.Grace
	// Checkpoint is the log position the view has folded up to.
	Checkpoint int64
}

// QueuedMessage is a message waiting in the local queue for one user.
type QueuedMessage struct {
	Seq        int64
	MessageID  string
	UserID     string
	Body       string
	EnqueuedAt time.Time
}

// writeReq is one caller's write, committed with the others of its group.
type writeReq struct {
	events   []events.ConnectionEvent
	messages []QueuedMessage
	// completes and outcomes, if set, are delivered messages to mark done and their
	// outcome events (Complete); published counts the outcome events that were new.
	completes []int64
	outcomes  []events.Published
	published int
	// grace, if set, is a grace timer's decision to fold, and to log if it decides.
	grace   *graceDecision
	decided presence.Effects
	// exec, if set, runs inside the group's transaction (small writes off the hot path).
	exec func(ctx context.Context) error
	// alone, if set, runs on the writer's goroutine outside any group (rebuild, pruning).
	alone func(ctx context.Context) error
	// appended counts the new events; written marks which were new; queued lists the
	// messages that were new, with their sequence numbers.
	appended int
	written  []bool
	queued   []QueuedMessage
	done     chan error
}

func (r *writeReq) reset() {
	r.appended, r.written, r.queued, r.published, r.decided = 0, nil, nil, 0, presence.Effects{}
}

// graceDecision is the log record of a grace timer that fired: the user's period that
// began at Since, decided at At. The fold runs presence.ExpireGracePeriod on it in log
// order, so a rebuild replays what the timer decided.
type graceDecision struct {
	UserID string    `json:"userId"`
	Since  time.Time `json:"since"`
	At     time.Time `json:"at"`
}

// graceRecordType is the type of a grace decision's record in the log.
const graceRecordType = "GraceExpired"

// Open opens (creating if needed) the store in the SQLite file at path, loads the view's
// last snapshot, replays the log past it (a snapshot of another version, or none, means
// the whole log), and starts the writer.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	opts.setDefaults()
	dsn := func(extra string) string {
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(10000)")
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous("+strings.ToUpper(opts.Sync)+")")
		if extra != "" {
			q.Add("_pragma", extra)
		}
		return "file:" + path + "?" + q.Encode()
	}
	// The writer never checkpoints the WAL itself (a checkpoint copies pages to the
	// database and fsyncs it, which would stall the commits queued behind it): the
	// checkpointer does, on its own connection, beside the writer.
	w, err := sql.Open("sqlite", dsn("wal_autocheckpoint(0)"))
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
	ck, err := sql.Open("sqlite", dsn(""))
	if err != nil {
		w.Close()
		r.Close()
		return nil, fmt.Errorf("open %s for checkpoints: %w", path, err)
	}
	ck.SetMaxOpenConns(1)
	s := &Store{w: w, r: r, ck: ck, opts: opts, img: newImage(), reqs: make(chan *writeReq, 4096),
		stop: make(chan struct{}), done: make(chan struct{}), ckDone: make(chan struct{})}
	if err := s.start(ctx); err != nil {
		errs := []error{err, r.Close(), ck.Close()}
		if s.wc != nil {
			errs = append(errs, s.wc.Close())
		}
		return nil, errors.Join(append(errs, w.Close())...)
	}
	go s.writer()
	go s.checkpointer()
	return s, nil
}

// checkpointInterval spaces the WAL checkpoints.
const checkpointInterval = time.Second

// checkpointer copies the WAL's committed pages into the database every
// checkpointInterval (a passive checkpoint: it never blocks the writer or the readers),
// so the WAL does not grow without bound; the writer restarts the WAL from its start once
// it has all been copied.
func (s *Store) checkpointer() {
	defer close(s.ckDone)
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		if _, err := s.ck.Exec(`PRAGMA wal_checkpoint(PASSIVE)`); err != nil {
			s.opts.Logger.Error("checkpoint the WAL", "err", err)
		}
	}
}

// start takes the writer's connection, prepares its statements, loads the snapshot and
// replays the tail of the log.
func (s *Store) start(ctx context.Context) error {
	wc, err := s.w.Conn(ctx)
	if err != nil {
		return fmt.Errorf("writer connection: %w", err)
	}
	s.wc = wc
	for _, st := range []struct {
		dst   **sql.Stmt
		query string
	}{
		{&s.stmts.log, `INSERT INTO log (type, data) VALUES (?, ?)`},
		{&s.stmts.msg, `INSERT INTO messages (message_id, user_id, body, enqueued_at) VALUES (?, ?, ?, ?)
			ON CONFLICT (message_id, user_id) DO NOTHING`},
		// OR IGNORE: a file of an earlier version has a unique index on event_id.
		{&s.stmts.pub, `INSERT OR IGNORE INTO published (event_id, detail_type, envelope) VALUES (?, ?, ?)`},
		{&s.stmts.done, `UPDATE messages SET done_at = ?, body = '' WHERE seq = ? AND done_at IS NULL`},
	} {
		if *st.dst, err = wc.PrepareContext(ctx, st.query); err != nil {
			return fmt.Errorf("prepare %q: %w", st.query, err)
		}
	}
	if err := s.loadSnapshot(ctx); err != nil {
		return err
	}
	p, err := s.replay(ctx)
	if err != nil {
		return err
	}
	s.recovered = p
	if p.Events > 0 {
		if err := s.snapshot(ctx); err != nil {
			return err
		}
	}
	s.lastSnapshot = time.Now()
	return nil
}

// Recovered reports what Open's replay of the log past the snapshot folded (nothing after
// a clean Close, which writes the snapshot). The grace periods it lists are those started
// by the replayed records; PendingGraces lists every pending one.
func (s *Store) Recovered() Projection { return s.recovered }

// Close stops the writer once the requests already queued are committed, writes the
// snapshot, and closes the database. Writes after Close return ErrClosed.
func (s *Store) Close() error {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	<-s.ckDone
	for _, st := range []*sql.Stmt{s.stmts.log, s.stmts.msg, s.stmts.pub, s.stmts.done} {
		_ = st.Close()
	}
	_, ckErr := s.ck.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`)
	if ckErr != nil {
		ckErr = fmt.Errorf("checkpoint the WAL: %w", ckErr)
	}
	return errors.Join(ckErr, s.r.Close(), s.ck.Close(), s.wc.Close(), s.w.Close())
}

// Append appends evs to the log, skipping any already folded (the natural key: a
// connection's open, its close, an activity no newer than the connection's last seen
// time), and returns once they are durable and folded into the view. Concurrent calls
// share transactions. It returns the number of events actually appended.
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

// Enqueue stores msgs in the local queue and returns once they are durable; OnQueued gets
// them right after the commit. A message whose (MessageID, UserID) is already queued, or
// was delivered within the retention of PruneMessages, is not queued again.
func (s *Store) Enqueue(ctx context.Context, msgs ...QueuedMessage) error {
	return s.submit(ctx, &writeReq{messages: msgs, done: make(chan error, 1)})
}

// ExpireGrace runs the timer of userID's grace period that began at since, at now: the
// decision is folded (presence.ExpireGracePeriod) in the writer's sequence, so it is decided
// against a state that holds every event committed before it, and a decision that changes
// the view is a record of the log, so a rebuild replays it. It returns what it decided: a
// UserOffline, written to the outbox in the same commit, or nothing when the period is not
// pending any more (the user came back, or the timer already decided it) or not over.
func (s *Store) ExpireGrace(ctx context.Context, userID string, since, now time.Time) (presence.Effects, error) {
	req := &writeReq{grace: &graceDecision{UserID: userID, Since: since.UTC(), At: now.UTC()}, done: make(chan error, 1)}
	if err := s.submit(ctx, req); err != nil {
		return presence.Effects{}, err
	}
	return req.decided, nil
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

// writeExec runs fn inside a group commit of the writer.
func (s *Store) writeExec(ctx context.Context, fn func(ctx context.Context) error) error {
	return s.submit(ctx, &writeReq{exec: fn, done: make(chan error, 1)})
}

// writeAlone runs fn on the writer's goroutine, alone.
func (s *Store) writeAlone(ctx context.Context, fn func(ctx context.Context) error) error {
	return s.submit(ctx, &writeReq{alone: fn, done: make(chan error, 1)})
}

func (s *Store) writer() {
	defer close(s.done)
	tick := time.NewTicker(s.opts.SnapshotInterval)
	defer tick.Stop()
	for {
		var first *writeReq
		select {
		case first = <-s.reqs:
		case <-tick.C:
			s.maybeSnapshot(false)
			continue
		case <-s.stop:
			// Drain what was queued before the stop, then write the snapshot.
			for {
				select {
				case req := <-s.reqs:
					s.run([]*writeReq{req})
				default:
					s.maybeSnapshot(true)
					return
				}
			}
		}
		batch := []*writeReq{first}
	fill:
		for len(batch) < s.opts.MaxBatch && first.alone == nil {
			select {
			case req := <-s.reqs:
				if req.alone != nil {
					s.run(batch)
					batch = []*writeReq{req}
					break fill
				}
				batch = append(batch, req)
			default:
				break fill
			}
		}
		s.run(batch)
		s.maybeSnapshot(false)
	}
}

// run commits batch (or runs its one alone request) and answers its callers.
func (s *Store) run(batch []*writeReq) {
	if len(batch) == 1 && batch[0].alone != nil {
		batch[0].done <- batch[0].alone(context.Background())
		return
	}
	s.commit(batch)
}

func (s *Store) commit(batch []*writeReq) {
	f, p, err := s.writeBatch(batch)
	if err != nil && len(batch) > 1 {
		// One bad request must not fail the others: retry each alone.
		for _, req := range batch {
			req.reset()
			s.commit([]*writeReq{req})
		}
		return
	}
	if err == nil {
		f.apply(p.Checkpoint)
		s.sinceSnapshot += p.Events
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
		s.observeFolded(f.folded)
		if s.opts.OnFolded != nil && p.Events > 0 {
			s.opts.OnFolded(p)
		}
		if s.opts.OnQueued != nil {
			var queued []QueuedMessage
			for _, req := range batch {
				queued = append(queued, req.queued...)
			}
			if len(queued) > 0 {
				s.opts.OnQueued(queued)
			}
		}
	}
	for _, req := range batch {
		req.done <- err
	}
}

// observeFolded reports the fold lag of events just committed.
func (s *Store) observeFolded(folded []events.ConnectionEvent) {
	if s.opts.OnProjected == nil {
		return
	}
	now := s.opts.Now()
	for _, e := range folded {
		s.opts.OnProjected(now.Sub(e.At))
	}
}

// begin starts an immediate transaction on the writer's connection; end commits it (err
// nil) or rolls it back.
func (s *Store) begin(ctx context.Context) error {
	if _, err := s.wc.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	return nil
}

func (s *Store) end(ctx context.Context, err error) error {
	if err != nil {
		_, _ = s.wc.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
		return err
	}
	if _, err := s.wc.ExecContext(ctx, "COMMIT"); err != nil {
		_, _ = s.wc.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// writeBatch folds what batch holds over the image and writes, in one transaction, the
// records that are new (connection events, grace decisions that decided, messages,
// outcomes) and the events they publish: one durable write per fact. The fold reaches the
// image (apply) only once the commit is durable.
func (s *Store) writeBatch(batch []*writeReq) (f *fold, p Projection, err error) {
	ctx := context.Background()
	f = newFold(s.img, s.opts.Grace)
	if s.opts.Fault != nil {
		if err := s.opts.Fault(); err != nil {
			return f, p, fmt.Errorf("commit: %w", err)
		}
	}
	if err := s.begin(ctx); err != nil {
		return f, p, err
	}
	defer func() { err = s.end(ctx, err) }()
	seq := s.img.seq
	appendRecord := func(typ string, v any) error {
		data, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode %s: %w", typ, err)
		}
		res, err := s.stmts.log.ExecContext(ctx, typ, string(data))
		if err != nil {
			return fmt.Errorf("append %s: %w", typ, err)
		}
		if seq, err = res.LastInsertId(); err != nil {
			return fmt.Errorf("append %s: %w", typ, err)
		}
		return nil
	}
	for _, req := range batch {
		req.written = make([]bool, len(req.events))
		for i, e := range req.events {
			if f.known(e) {
				continue
			}
			if err := appendRecord(string(e.Type), e); err != nil {
				return f, p, err
			}
			f.event(e)
			req.appended++
			req.written[i] = true
		}
		for _, m := range req.messages {
			res, err := s.stmts.msg.ExecContext(ctx, m.MessageID, m.UserID, m.Body, m.EnqueuedAt.UnixNano())
			if err != nil {
				return f, p, fmt.Errorf("enqueue %s: %w", m.MessageID, err)
			}
			if n, _ := res.RowsAffected(); n == 1 {
				if m.Seq, err = res.LastInsertId(); err != nil {
					return f, p, fmt.Errorf("enqueue %s: %w", m.MessageID, err)
				}
				req.queued = append(req.queued, m)
			}
		}
		if len(req.completes) > 0 {
			n, err := s.complete(ctx, req.completes, req.outcomes)
			if err != nil {
				return f, p, fmt.Errorf("complete: %w", err)
			}
			req.published = n
		}
		if g := req.grace; g != nil {
			req.decided = f.grace(*g)
			if len(req.decided.Publish) > 0 {
				if err := appendRecord(graceRecordType, g); err != nil {
					return f, p, fmt.Errorf("log grace decision of %s: %w", g.UserID, err)
				}
			}
		}
		if req.exec != nil {
			if err := req.exec(ctx); err != nil {
				return f, p, err
			}
		}
	}
	published, err := s.publish(ctx, f.outbox)
	if err != nil {
		return f, p, err
	}
	return f, f.projection(published, seq), nil
}

// publish writes rows to the outbox and returns how many it wrote. Each is decided once:
// by the fold of a new record, or by the completion of a pending message.
func (s *Store) publish(ctx context.Context, rows []outboxRow) (int, error) {
	n := 0
	for _, r := range rows {
		ok, err := s.insertPublished(ctx, r.p, r.at)
		if err != nil {
			return n, err
		}
		if ok {
			n++
		}
	}
	return n, nil
}

// Local values of the EventBridge envelope fields that name an AWS account and region.
const (
	LocalAccount = "000000000000"
	LocalRegion  = "local"
)

// insertPublished writes p to the outbox.
func (s *Store) insertPublished(ctx context.Context, p events.Published, at time.Time) (bool, error) {
	env, err := events.NewEnvelope(p, LocalAccount, LocalRegion, at)
	if err != nil {
		return false, err
	}
	data, err := json.Marshal(env)
	if err != nil {
		return false, fmt.Errorf("encode %s envelope: %w", p.DetailType(), err)
	}
	res, err := s.stmts.pub.ExecContext(ctx, p.ID(), string(p.DetailType()), string(data))
	if err != nil {
		return false, fmt.Errorf("publish %s %s: %w", p.DetailType(), p.ID(), err)
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}
