package sqlite

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// busyTimeout is how long a connection of the store waits for a lock another holds.
const busyTimeout = 10 * time.Second

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("store closed")

// Options tune a Store. The zero value of each field takes its default.
type Options struct {
	// Grace is the offline grace period the fold applies. It is recorded in the store; zero
	// means the one recorded (a rebuild folds as the store was served), or 5s for a new
	// store.
	Grace time.Duration
	// MaxBatch is the most write requests group-committed in one transaction (default 512).
	MaxBatch int
	// CommitSpacing is the least time between the starts of two group commits while writers
	// are concurrent (the last commit held several requests): requests arriving within it
	// share the next commit (default 2ms). A writer alone never waits for it.
	CommitSpacing time.Duration
	// CommitDelay bounds how long a group commit is held for the requests the arrival rate
	// says are coming (default 5ms; negative: never, only CommitSpacing's pacing): while
	// requests arrive during the commits and waits of others at a gap under CommitDelay, a
	// commit starts commitTarget gaps after the previous one, no sooner than
	// CommitSpacing and no later than CommitDelay, and takes every request that arrived
	// meanwhile. A writer alone, or one whose requests come one after another, never waits.
	CommitDelay time.Duration
	// SnapshotInterval is how often the view's changed rows are written to the snapshot
	// (default 1s); SnapshotEvents the most log records folded between two snapshots
	// (default 2,048), which bounds what a start replays and how long one snapshot holds
	// the writer (the rows of about a thousand visits, tens of milliseconds).
	SnapshotInterval time.Duration
	SnapshotEvents   int
	// Now is the clock (default time.Now).
	Now func() time.Time
	// WALLimit bounds the write-ahead log (default 64 MiB): past it, a checkpoint that
	// truncates the log runs between two group commits (writes wait for it), so the log
	// cannot outgrow it under sustained load, when the background checkpoints never catch
	// up. OnWAL, if set, is given the log's size after each checkpoint (a metric).
	// The bound in force is the smaller of WALLimit and a quarter of the filesystem's free
	// space (the WAL's own bytes counted as free), never under 1 MiB (Space).
	WALLimit int64
	OnWAL    func(bytes int64)
	// Reserve is the size of the reserve file kept beside the store (path + ReserveSuffix):
	// when the filesystem runs short of space (less than a quarter of the reserve free, at
	// least 256 KiB, or a write that finds it full) writes are refused (ErrNoSpace,
	// ErrCannotWrite) and the reserve is given back, so the store can still checkpoint its
	// WAL and a restart can open it and serve reads; once the free space holds the reserve
	// and twice that quarter again, the reserve is retaken and writes resume. Zero means a
	// 32nd of the filesystem, between 1 MiB and 16 MiB; negative, none.
	Reserve int64
	// Logger receives the store's logs (default slog.Default()).
	Logger *slog.Logger
	// Sync is SQLite's synchronous mode: "full" (default) makes every commit durable
	// against power loss (an fsync per commit); "normal" keeps commits durable against a
	// crash of the process (the WAL is fsynced at checkpoints) for far fewer fsyncs.
	Sync string
	// OnCommit, if set, is called after each group commit with the number of requests it
	// held (for metrics).
	OnCommit func(requests int)
	// OnSynced, if set, is called after each commit synced to disk (every commit in the
	// mode "full" but those of outcomes only) with how long its COMMIT took: its pages
	// written to the write-ahead log and the fsync, the disk's share of what a write's
	// caller waits for (for metrics). It runs on the writer's goroutine and must not block.
	OnSynced func(took time.Duration)
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
	// The slice is the writer's, reused by the next commit: OnQueued copies what it keeps.
	OnQueued func([]QueuedMessage)
	// RecoveryWindow is how long accepted messages keep their stream positions and bodies
	// for recovering connections (StreamRange); PruneStreams forgets them after that. Zero
	// keeps none: positions are handed out, nothing is kept to replay.
	RecoveryWindow time.Duration
	// AcceptLoss serves a store found behind its high-water mark (its committed tail lost
	// after an unclean stop) instead of refusing it (ErrTailLost): the loss is logged and
	// a new epoch starts.
	AcceptLoss bool
	// Fault, if set, is called before every group commit; an error it returns fails the
	// commit as a full or failing disk would (fault-injection tests).
	Fault func() error
}

// walKept is what the WAL file is cut to when the writer writes it from its start again.
const walKept = 4 << 20

func (o *Options) setDefaults() {
	if o.WALLimit <= 0 {
		o.WALLimit = 64 << 20
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 512
	}
	if o.CommitSpacing <= 0 {
		o.CommitSpacing = 2 * time.Millisecond
	}
	if o.CommitDelay == 0 {
		o.CommitDelay = 5 * time.Millisecond
	}
	if o.SnapshotInterval <= 0 {
		o.SnapshotInterval = time.Second
	}
	if o.SnapshotEvents <= 0 {
		o.SnapshotEvents = 2048
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
	// path is the store file's.
	path string
	// room is the store's account of its filesystem's space and its reserve.
	room *room
	// ckMu serializes the checkpoints of the checkpointer and of the writer (boundWAL);
	// walBusy is set while a checkpoint that should truncate the WAL could not (the
	// writer's alone).
	ckMu    sync.Mutex
	walBusy bool
	// commits counts the writer's transactions (the checkpointer reads it to tell whether
	// one landed while it copied); walTail is set when one did (finishCheckpoint).
	commits atomic.Uint64
	walTail atomic.Bool
	// ckNow asks the checkpointer for a checkpoint before its next tick: the writer sends
	// when the WAL has grown by another walNudge (walStep, the writer's alone, is how many
	// it had grown by at the last send).
	ckNow   chan struct{}
	walStep int64
	// walIdx reads the WAL's committed end from the wal-index (the writer's alone).
	walIdx walIndex
	// queuedBuf is the writer's slice for OnQueued, emptied after each commit
	// (queuedBufCap bounds what it keeps).
	queuedBuf []QueuedMessage
	// checking is closed when the running integrity check ends (nil while none runs): the
	// prunes wait for it (pruneStep).
	checking atomic.Pointer[chan struct{}]
	// damage is the last sign of a damaged file (Health); outboxDamage the last sign of
	// damage found reading the outbox (OutboxHealth).
	damage       atomic.Pointer[error]
	outboxDamage atomic.Pointer[error]
	// outcomesFailing holds the error of the last commit that could not record message
	// outcomes, nil once one could: Enqueue refuses new messages meanwhile.
	outcomesFailing atomic.Pointer[error]
	// writeFailing holds the error of the last group commit when it failed (Writable).
	writeFailing atomic.Pointer[error]
	// rebuilt is set when Open found the snapshot damaged and folded the whole log.
	rebuilt bool
	// id is the store's identity (Identity); idCreated says Open wrote it.
	id        string
	idCreated bool
	// syncMode is the synchronous mode the writer's connection is in (setSync).
	syncMode string
	// lastCommit and lastBatch are when the last group commit started and how many
	// requests it held that a caller waits for; company counts the requests that found
	// the writer committing or waiting; gatherTimer is gather's (the writer's alone).
	lastCommit  time.Time
	lastBatch   int
	company     arrivals
	gatherTimer *time.Timer
	// epoch is the store's epoch (Epoch).
	epoch atomic.Pointer[string]
	// mark is the high-water mark file; tent the positions the commit being written
	// reached (the writer's alone).
	mark *markFile
	tent positions
	// sinceSnapshot counts the records folded since the last snapshot; lastSnapshot is
	// when it was written (the writer's alone).
	sinceSnapshot int
	lastSnapshot  time.Time
	// streams is each user's stream in memory; streamsPruned the stream floor, the queue
	// position at or below which no row holds a stream position (streamFloorKey).
	streams       streamTable
	streamsPruned atomic.Int64
	// queueFloor is the queue position at or below which no message is pending
	// (raiseQueueFloor).
	queueFloor atomic.Int64
	// outboxLow is set while the outbox may hold no row above its floor (PrunePublished):
	// the writer writes its next row above the floor (publishAboveFloor).
	outboxLow atomic.Bool
	// batchStreams holds what the commit being written did to the streams (the writer's
	// alone).
	batchStreams *streamBatch
	// unpacked holds the users the writer's folds read from their packed entries since the
	// last snapshot, which deletes the entries of those whose hot rows it writes (the
	// writer's alone).
	unpacked map[string]struct{}
	// envBuf, prefixBuf and pubArgs are the writer's buffers for the outbox rows (publish,
	// compact), queueArgs
	// for the queue rows (enqueue).
	envBuf    []byte
	prefixBuf []byte
	pubArgs   []any
	queueArgs []any
	// queueTop is the newest queue position committed, queueTent the newest the commit
	// being written took (the writer hands the positions out: enqueue); queueInserts
	// counts the INSERTs that wrote queue rows (the writer's alone).
	queueTop, queueTent int64
	queueInserts        int
}

// writerStmts are prepared once on the writer's connection: the hot path's inserts and
// updates, and the snapshot's upserts and deletes.
type writerStmts struct {
	log, msg, done, doneKeep *sql.Stmt
	doneKnown                *sql.Stmt
	// pub[n-1] writes n outbox rows (pubStmt), queue[n-1] n queue rows (queueStmt).
	pub                            [pubRows]*sql.Stmt
	queue                          [queueRows]*sql.Stmt
	saveUser, saveConn, forgetConn *sql.Stmt
	begin, commit, rollback        *sql.Stmt
	// getUser and getConn read the rows the image does not hold; getPacked the block that
	// would hold a packed user.
	getUser, getConn, getPacked *sql.Stmt
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
	// From is the log position a Rebuild folded the log after: 0 for the whole log, else
	// the checkpoint of the snapshot it started from.
	From int64
}

// QueuedMessage is a message waiting in the local queue for one user.
type QueuedMessage struct {
	Seq        int64
	MessageID  string
	UserID     string
	Body       string
	EnqueuedAt time.Time
	// Gen and Offset are the message's position in its user's stream, set by Enqueue
	// (Offset 0: none, a message of a store with no recovery window read back at a start).
	Gen, Offset int64
}

// Open opens (creating if needed) the store in the SQLite file at path, loads the view's
// last snapshot, replays the log past it (a snapshot of another version, or none, means
// the whole log), and starts the writer.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	opts.setDefaults()
	// First: on a full filesystem the reserve is given back, so the opening's own writes
	// (the WAL index, a few pages) find room.
	room := newRoom(path, opts.Reserve, opts.Logger)
	dsn := func(extra ...string) string {
		q := url.Values{}
		q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous("+strings.ToUpper(opts.Sync)+")")
		for _, e := range extra {
			q.Add("_pragma", e)
		}
		return "file:" + path + "?" + q.Encode()
	}
	// The writer never checkpoints the WAL itself (a checkpoint copies pages to the
	// database and fsyncs it, which would stall the commits queued behind it): the
	// checkpointer does, on its own connection, beside the writer. When the writer writes
	// the WAL from its start again, it cuts the file to walKept: what a burst grew it to
	// is given back at the next restart instead of staying the file's size.
	w, err := sql.Open("sqlite", dsn("wal_autocheckpoint(0)", fmt.Sprintf("journal_size_limit(%d)", walKept)))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetConnMaxIdleTime(0)
	if err := migrate(ctx, w); err != nil {
		w.Close()
		return nil, fmt.Errorf("prepare %s: %w", path, err)
	}
	if opts.Grace, err = recordGrace(ctx, w, opts.Grace); err != nil {
		w.Close()
		return nil, fmt.Errorf("prepare %s: %w", path, err)
	}
	id, idCreated, err := ensureIdentity(ctx, w)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("prepare %s: %w", path, err)
	}
	epoch, err := ensureEpoch(ctx, w)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("prepare %s: %w", path, err)
	}
	have, renew, damage, err := checkMark(ctx, w, path, idCreated, opts.AcceptLoss, &opts)
	if err != nil {
		w.Close()
		return nil, err
	}
	if renew {
		epoch = newEpoch()
		if _, err := w.ExecContext(ctx, `UPDATE meta SET value = ? WHERE key = 'epoch'`, epoch); err != nil {
			w.Close()
			return nil, fmt.Errorf("renew the store's epoch: %w", err)
		}
	}
	mark, err := openMark(path, have)
	if err != nil {
		w.Close()
		return nil, err
	}
	r, err := sql.Open("sqlite", dsn("query_only(1)"))
	if err != nil {
		mark.close()
		w.Close()
		return nil, fmt.Errorf("open %s for reading: %w", path, err)
	}
	r.SetMaxOpenConns(8)
	ck, err := sql.Open("sqlite", dsn())
	if err != nil {
		mark.close()
		w.Close()
		r.Close()
		return nil, fmt.Errorf("open %s for checkpoints: %w", path, err)
	}
	ck.SetMaxOpenConns(1)
	s := &Store{path: path, room: room, w: w, r: r, ck: ck, opts: opts, syncMode: opts.Sync, id: id, idCreated: idCreated, img: newImage(), reqs: make(chan *writeReq, 4096),
		stop: make(chan struct{}), done: make(chan struct{}), ckDone: make(chan struct{}),
		ckNow: make(chan struct{}, 1)}
	s.epoch.Store(&epoch)
	s.batchStreams = &streamBatch{tops: map[string]streamState{}}
	s.unpacked = map[string]struct{}{}
	s.mark, s.tent = mark, have
	if damage != nil {
		s.damage.Store(&damage)
	}
	if err := s.start(ctx); err != nil {
		errs := []error{err, r.Close(), ck.Close(), mark.close()}
		if s.wc != nil {
			errs = append(errs, s.wc.Close())
		}
		return nil, errors.Join(append(errs, w.Close())...)
	}
	go s.writer()
	go s.checkpointer()
	return s, nil
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
		{&s.stmts.log, `INSERT INTO log (type, data, crc) VALUES (?, ?, ?)`},
		{&s.stmts.msg, `INSERT INTO messages (seq, message_id, user_id, body, enqueued_at, stream_offset, stream_gen, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (message_id, user_id) DO NOTHING`},
		// A done message's body is forgotten, its stream position marked gone (a negative
		// generation), unless it is kept for the recovery window (doneKeep; PruneStreams).
		// Its checksum follows (msgcrc.go).
		{&s.stmts.done, `UPDATE messages SET done_at = ?, body = '', stream_gen = -stream_gen,
			crc = CASE WHEN crc = ` + messageCRCFunc + `(message_id, user_id, enqueued_at, stream_offset, stream_gen, body)
				THEN ` + messageCRCFunc + `(message_id, user_id, enqueued_at, stream_offset, -stream_gen, '') ELSE crc END
			WHERE seq = ? AND done_at IS NULL RETURNING user_id, stream_offset`},
		// doneKnown is done for a row whose checksum is the one given (the caller computed the
		// row's new checksum from what it holds of the row: forget).
		{&s.stmts.doneKnown, `UPDATE messages SET done_at = ?, body = '', stream_gen = -stream_gen, crc = ?
			WHERE seq = ? AND done_at IS NULL AND crc = ?`},
		{&s.stmts.doneKeep, `UPDATE messages SET done_at = ? WHERE seq = ? AND done_at IS NULL`},
		{&s.stmts.saveUser, `INSERT INTO view_users (user_id, live, last_activity, announced, offline_gap, crc)
			VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET live = excluded.live, last_activity = excluded.last_activity,
			announced = excluded.announced, offline_gap = excluded.offline_gap, crc = excluded.crc`},
		{&s.stmts.saveConn, `INSERT INTO view_connections (connection_id, user_id, opened_at, closed_at, reason, last_seen, crc)
			VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (connection_id) DO UPDATE SET user_id = excluded.user_id, opened_at = excluded.opened_at,
			closed_at = excluded.closed_at, reason = excluded.reason, last_seen = excluded.last_seen, crc = excluded.crc`},
		{&s.stmts.forgetConn, `DELETE FROM view_connections WHERE connection_id = ?`},
		{&s.stmts.begin, `BEGIN IMMEDIATE`},
		{&s.stmts.commit, `COMMIT`},
		{&s.stmts.rollback, `ROLLBACK`},
		{&s.stmts.getUser, selectUser + ` WHERE user_id = ?`},
		{&s.stmts.getConn, selectConn + ` WHERE connection_id = ?`},
		{&s.stmts.getPacked, selectBlock},
	} {
		if *st.dst, err = wc.PrepareContext(ctx, st.query); err != nil {
			return fmt.Errorf("prepare %q: %w", st.query, err)
		}
	}
	var floor string
	switch err := s.wc.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = ?`, queueFloorKey).Scan(&floor); {
	case err == nil:
		n, perr := strconv.ParseInt(floor, 10, 64)
		if perr != nil {
			return fmt.Errorf("the queue floor %q is not a position", floor)
		}
		s.queueFloor.Store(n)
	case !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("read the queue floor: %w", err)
	}
	if err := s.wc.QueryRowContext(ctx, `SELECT IFNULL(MAX(seq), 0) FROM messages`).Scan(&s.queueTop); err != nil {
		return fmt.Errorf("read the queue's newest position: %w", err)
	}
	if err := s.checkOutboxFloor(ctx); err != nil {
		// A damaged file is reported (Health), not refused: the next event is written above
		// the floor whatever the outbox holds, or fails with the damage.
		s.opts.Logger.Error("the outbox floor cannot be read", "err", s.noteRead(err))
	}
	if err := s.loadStreams(ctx); err != nil {
		// A damaged file is reported (Health), not refused: the streams start again, in
		// new generations, so clients are told their positions are gone.
		s.opts.Logger.Error("the stream positions cannot be read: streams start again", "err", s.noteRead(err))
		s.streams.m = map[string]*userStream{}
	}
	if err := s.loadSnapshot(ctx); errors.Is(err, ErrSnapshotDamaged) {
		// Never served: the view is folded again from the log, and its snapshot rewritten.
		s.opts.Logger.Error("the view's snapshot is damaged: folding the whole log again", "err", err)
		if _, err := s.wc.ExecContext(ctx, dropSnapshot+snapshotSchema); err != nil {
			return fmt.Errorf("reset the damaged snapshot: %w", err)
		}
		s.img = newImage()
		s.rebuilt = true
	} else if err != nil {
		return err
	}
	p, err := s.replay(ctx)
	if err != nil {
		return err
	}
	s.recovered = p
	if p.Events > 0 || s.rebuilt {
		if err := s.snapshot(ctx); err != nil {
			if !s.room.full.Load() && !isNoSpace(err) {
				return err
			}
			// On a full disk the store opens without it: the log holds what was folded,
			// and the snapshot is written once writes resume.
			s.room.failed(err)
			s.opts.Logger.Warn("the view's snapshot is not written at start: the disk is full", "err", err)
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
	s.walIdx.close()
	for _, st := range append(append(s.stmts.pub[:], s.stmts.queue[:]...), s.stmts.log, s.stmts.msg, s.stmts.done, s.stmts.doneKnown, s.stmts.doneKeep, s.stmts.saveUser, s.stmts.saveConn, s.stmts.forgetConn,
		s.stmts.begin, s.stmts.commit, s.stmts.rollback, s.stmts.getUser, s.stmts.getConn, s.stmts.getPacked) {
		if st != nil {
			_ = st.Close()
		}
	}
	_, ckErr := s.ck.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`)
	if ckErr != nil {
		ckErr = fmt.Errorf("checkpoint the WAL: %w", ckErr)
	}
	return errors.Join(ckErr, s.r.Close(), s.ck.Close(), s.wc.Close(), s.w.Close(), s.mark.close())
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
//
// A store that cannot finish the work it would accept refuses it: Enqueue returns an error
// wrapping ErrDamaged while the file is damaged (Health), and ErrOutcomesBlocked while the
// outcomes of delivered messages cannot be recorded.
func (s *Store) Enqueue(ctx context.Context, msgs ...QueuedMessage) error {
	if err := s.Health(); err != nil {
		return err
	}
	if p := s.outcomesFailing.Load(); p != nil {
		return fmt.Errorf("%w: %w", ErrOutcomesBlocked, *p)
	}
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

// DefaultGrace is the grace period of a store never served with another.
const DefaultGrace = 5 * time.Second

// recordGrace returns the grace period to fold with: grace when set (recorded in the
// store's meta table for the next opening), else the one recorded, else DefaultGrace.
func recordGrace(ctx context.Context, db *sql.DB, grace time.Duration) (time.Duration, error) {
	if grace > 0 {
		// Written only when it changes: a start on a full disk writes nothing here.
		_, err := db.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('offline_grace', ?)
			ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE value <> excluded.value`, strconv.FormatInt(int64(grace), 10))
		return grace, err
	}
	var v string
	switch err := db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'offline_grace'`).Scan(&v); {
	case errors.Is(err, sql.ErrNoRows):
		return DefaultGrace, nil
	case err != nil:
		return 0, err
	}
	ns, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ns <= 0 {
		return 0, fmt.Errorf("the recorded grace period %q is not a duration", v)
	}
	return time.Duration(ns), nil
}

// Identity returns the store's id, a random one written into the store when Open found
// none (created true then): a data dir records it beside the store, so a store replaced by
// an empty or another one is told apart from the one it held.
func (s *Store) Identity() (id string, created bool) { return s.id, s.idCreated }

// ensureIdentity reads the store's id, writing a new one if it has none.
func ensureIdentity(ctx context.Context, db *sql.DB) (id string, created bool, err error) {
	switch err := db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'store_id'`).Scan(&id); {
	case err == nil:
		return id, false, nil
	case !errors.Is(err, sql.ErrNoRows):
		return "", false, fmt.Errorf("read the store's id: %w", err)
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	id = hex.EncodeToString(b)
	if _, err := db.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('store_id', ?)`, id); err != nil {
		return "", false, fmt.Errorf("record the store's id: %w", err)
	}
	return id, true, nil
}

// Backup writes a consistent copy of the store at path to the new file to (VACUUM INTO),
// while a server may be writing it: the copy is the store as of one commit.
func Backup(ctx context.Context, path, to string) error {
	if _, err := os.Stat(to); err == nil {
		return fmt.Errorf("backup: %s exists", to)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return fmt.Errorf("backup: open %s: %w", path, err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `VACUUM INTO ?`, to); err != nil {
		return fmt.Errorf("backup %s to %s: %w", path, to, err)
	}
	return nil
}

// carriedPrefix marks the meta rows a backup carries for its data dir (Backup's extra),
// taken out again by TakeCarried when the backup is restored.
const carriedPrefix = "carried:"

// BackupWith is Backup that also writes extra (name → value; the data dir's secrets, say)
// into the copy, for TakeCarried to read back when it is restored. A copy that carries
// anything is readable by its owner only.
func BackupWith(ctx context.Context, path, to string, extra map[string]string) error {
	if err := Backup(ctx, path, to); err != nil {
		return err
	}
	if len(extra) == 0 {
		return nil
	}
	if err := os.Chmod(to, 0o600); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	db, err := sql.Open("sqlite", "file:"+to+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return fmt.Errorf("backup: open %s: %w", to, err)
	}
	defer db.Close()
	for k, v := range extra {
		if _, err := db.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES (?, ?)`, carriedPrefix+k, v); err != nil {
			return fmt.Errorf("backup: write %s into %s: %w", k, to, err)
		}
	}
	return nil
}

// TakeCarried reads and deletes what a backup carried (BackupWith's extra) from the store
// file at path, which no server has open: once restored, the data dir holds it.
func TakeCarried(ctx context.Context, path string) (map[string]string, error) {
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer db.Close()
	out := map[string]string{}
	err = scanEach(ctx, db, `SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?`, func(r *sql.Rows) error {
		var k, v string
		if err := r.Scan(&k, &v); err != nil {
			return err
		}
		out[strings.TrimPrefix(k, carriedPrefix)] = v
		return nil
	}, len(carriedPrefix), carriedPrefix)
	if err != nil {
		return nil, fmt.Errorf("read what %s carries: %w", path, err)
	}
	if _, err := db.ExecContext(ctx, `DELETE FROM meta WHERE substr(key, 1, ?) = ?`, len(carriedPrefix), carriedPrefix); err != nil {
		return nil, fmt.Errorf("take what %s carries: %w", path, err)
	}
	return out, nil
}

// Check opens the store file at path read-only and runs SQLite's integrity check, a read
// of every log record and of every block of packed users (each against its checksum): nil
// means the file can serve.
func Check(ctx context.Context, path string) error {
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	var res string
	if err := db.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&res); err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	if res != "ok" {
		return fmt.Errorf("check %s: %s", path, res)
	}
	var n int64
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM log`).Scan(&n); err != nil {
		return fmt.Errorf("check %s: the log cannot be read: %w", path, err)
	}
	var packedTable int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'view_users_packed'`).Scan(&packedTable); err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	if packedTable > 0 {
		if err := eachPacked(ctx, db, func(packed) {}); err != nil {
			return fmt.Errorf("check %s: the packed users cannot be read: %w", path, err)
		}
	}
	return nil
}

// rowCRC is the checksum a log or outbox row carries, over its kind and its text.
func rowCRC(kind string, text []byte) int64 {
	// kind and the zero byte after it, byte by byte (as crc32.Update does, without a copy of
	// kind), then text.
	c := ^uint32(0)
	for i := 0; i < len(kind); i++ {
		c = crc32.IEEETable[byte(c)^kind[i]] ^ c>>8
	}
	c = crc32.IEEETable[byte(c)] ^ c>>8
	return int64(crc32.Update(^c, crc32.IEEETable, text))
}

// checkRow returns nil when a row's checksum matches (or it has none: a row written
// before checksums); else it records the damage (Health), logs the table and position,
// and returns an error wrapping ErrDamaged. A damaged row is never served or folded.
func (s *Store) checkRow(table string, seq int64, kind string, text []byte, crc sql.NullInt64) error {
	if !crc.Valid || crc.Int64 == rowCRC(kind, text) {
		return nil
	}
	return s.damagedRow(table, seq)
}

// damagedRow records that the row of table at position seq does not match its checksum
// (Health), logs the table and position, and returns an error wrapping ErrDamaged.
func (s *Store) damagedRow(table string, seq int64) error {
	err := fmt.Errorf("%w: the %s row at position %d does not match its checksum: restore a backup", ErrDamaged, table, seq)
	// Logged before it is recorded: whoever sees the store unhealthy finds the reason logged.
	s.opts.Logger.Error("a damaged row of the store", "table", table, "position", seq)
	s.damage.Store(&err)
	if table == outboxTable {
		s.outboxDamage.Store(&err)
	}
	return err
}

// isDamage reports whether err is SQLite's sign of a damaged file.
func isDamage(err error) bool {
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "malformed") || strings.Contains(msg, "corrupt") || strings.Contains(msg, "not a database")
}

// ErrOutcomesBlocked is wrapped by Enqueue while the outcomes of delivered messages cannot
// be recorded: a message accepted then could never be finished.
var ErrOutcomesBlocked = errors.New("the outcomes of delivered messages cannot be recorded")

// ErrDamaged is wrapped by Health for a store file that cannot be read whole.
var ErrDamaged = errors.New("the store's file is damaged")

// Health reports a store that cannot read its own rows: the last integrity check (a
// second after Open, then every 10 minutes) or a read that met a malformed page; nil when
// neither found damage.
func (s *Store) Health() error {
	if p := s.damage.Load(); p != nil {
		return *p
	}
	return nil
}

// outboxTable is the table of the outbox, the one /events serves.
const outboxTable = "published"

// OutboxHealth reports damage found in the outbox (a row that does not match its checksum,
// a damaged page met reading it): what /events serves. Damage elsewhere in the file (a log
// or queue row) is reported by Health and does not stop the outbox from being served: its
// rows are checked as they are read.
func (s *Store) OutboxHealth() error {
	if p := s.outboxDamage.Load(); p != nil {
		return *p
	}
	return nil
}

// noteOutboxRead is noteRead for a read of the outbox: damage it meets is the outbox's.
func (s *Store) noteOutboxRead(err error) error {
	if err != nil && isDamage(err) {
		damaged := fmt.Errorf("%w: the outbox: %w", ErrDamaged, err)
		s.outboxDamage.Store(&damaged)
	}
	return s.noteRead(err)
}

// noteRead records err (of a read or a write) if it is the sign of a damaged file, and
// returns it.
func (s *Store) noteRead(err error) error {
	if err == nil {
		return nil
	}
	if isDamage(err) {
		damaged := fmt.Errorf("%w: %w", ErrDamaged, err)
		s.opts.Logger.Error("the store's file is damaged", "err", err)
		s.damage.Store(&damaged)
	}
	return err
}
