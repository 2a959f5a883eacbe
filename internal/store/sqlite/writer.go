package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	sqlitedriver "modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
)

// The writer: one goroutine that group-commits every write request, folds what it
// appends over the memory image, and writes the snapshot between commits; and the
// checkpointer beside it.

// writeReq is one caller's write, committed with the others of its group.
type writeReq struct {
	events   []events.ConnectionEvent
	messages []QueuedMessage
	// completes and outcomes, if set, are delivered messages to mark done and their
	// outcome events (Complete); published counts the outcome events that were new.
	completes []QueuedMessage
	outcomes  []events.Published
	keeps     []bool
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

// checkpointInterval spaces the WAL checkpoints.
const checkpointInterval = time.Second

// checkpointer copies the WAL's committed pages into the database every
// checkpointInterval (a passive checkpoint: it never blocks the writer or the readers),
// and reports the WAL's size. The WAL is written from its start again once it has all been
// copied: under sustained writes a commit lands while the checkpointer copies, so the
// writer then copies what the commits added (finishCheckpoint), and its next commit
// restarts the WAL. The writer asks for a checkpoint between two ticks when the WAL grows
// fast (ckNow, boundWAL). A WAL that still outgrows its limit (readers holding it) is bounded by
// the writer (boundWAL).
func (s *Store) checkpointer() {
	defer close(s.ckDone)
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	for tick := 0; ; tick++ {
		select {
		case <-s.stop:
			return
		case <-s.ckNow:
			tick-- // not a tick: no integrity check, no WAL report
			s.checkpoint()
			continue
		case <-t.C:
		}
		if tick%integrityEvery == 0 {
			s.checkIntegrity()
		}
		s.room.watch()
		s.checkpoint()
		if s.opts.OnWAL != nil {
			s.opts.OnWAL(s.walSize())
		}
	}
}

// checkpoint runs the checkpointer's checkpoint: passive while the store writes; while it
// is refused for want of space, one that truncates the WAL, to give its space back. A
// passive checkpoint that left frames behind (those a reader held back, or those of a
// commit that landed while it copied) sets walTail, for the writer to finish it.
func (s *Store) checkpoint() {
	s.ckMu.Lock()
	defer s.ckMu.Unlock()
	before := s.commits.Load()
	mode := "PASSIVE"
	if s.room.full.Load() {
		mode = "TRUNCATE"
	}
	var busy, logPages, done int
	if err := s.ck.QueryRow(`PRAGMA wal_checkpoint(`+mode+`)`).Scan(&busy, &logPages, &done); err != nil {
		if !s.room.full.Load() {
			s.opts.Logger.Error("checkpoint the WAL", "err", err)
		}
		return
	}
	if mode == "PASSIVE" && busy == 0 && (done < logPages || s.commits.Load() != before) {
		s.walTail.Store(true)
	}
}

// finishCheckpoint copies, between two commits, the frames that commits added while the
// checkpointer copied (a few pages; no commit lands meanwhile): the WAL is then wholly in
// the database, and the next commit writes it from its start again instead of appending.
// Without it, under sustained commits the WAL only grows, until boundWAL copies and
// truncates it between two commits, a stall of every write queued behind it. A
// checkpoint of the checkpointer in progress is not waited for: the copy is tried again
// after the next commit.
func (s *Store) finishCheckpoint() {
	if !s.walTail.Load() || s.room.full.Load() || !s.ckMu.TryLock() {
		return
	}
	defer s.ckMu.Unlock()
	s.walTail.Store(false)
	var busy, logPages, done int
	if err := s.wc.QueryRowContext(context.Background(), `PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &logPages, &done); err != nil {
		s.opts.Logger.Error("checkpoint the WAL's tail", "err", err)
	}
}

// integrityEvery is how many checkpoint intervals separate two integrity checks (10
// minutes); the first runs a second after Open.
const integrityEvery = 600

// checkIntegrity runs SQLite's quick check of the whole file and records what it finds
// (Health).
func (s *Store) checkIntegrity() {
	done := make(chan struct{})
	s.checking.Store(&done)
	defer func() {
		s.checking.Store(nil)
		close(done)
	}()
	var res string
	err := s.ck.QueryRow(`PRAGMA quick_check(1)`).Scan(&res)
	switch {
	case err != nil:
		s.noteRead(err)
	case res != "ok":
		err := fmt.Errorf("%w: %s", ErrDamaged, res)
		s.opts.Logger.Error("the store's file is damaged", "check", res)
		s.damage.Store(&err)
	}
}

// walSize is the size of the write-ahead log file (0 if there is none).
func (s *Store) walSize() int64 {
	st, err := os.Stat(s.path + "-wal")
	if err != nil {
		return 0
	}
	return st.Size()
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
			if !s.room.full.Load() {
				s.maybeSnapshot(false)
			}
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
		batch = s.gather(batch)
		if batch[0].alone == nil {
			now := time.Now()
			s.lastCommit, s.lastBatch = now, waited(batch)
			s.company.add(now, max(s.lastBatch-1, 0))
		}
		s.run(batch)
		if !s.room.full.Load() {
			s.maybeSnapshot(false)
		}
		s.finishCheckpoint()
		s.boundWAL()
	}
}

// gather holds a group commit back while writers are concurrent, so that the commits are
// fewer and fuller: a commit costs its fsync and its pages whatever it holds. The next
// commit starts no sooner than spacing after the previous one and takes every request
// that arrives meanwhile (up to MaxBatch). A batch of outcomes alone (nobody waits for
// them) is not held. It returns the batch to run: the one given, grown, or an alone
// request that arrived (the batch before it is run first).
func (s *Store) gather(batch []*writeReq) []*writeReq {
	if batch[0].alone != nil || len(batch) >= s.opts.MaxBatch || waited(batch) == 0 {
		return batch
	}
	now := time.Now()
	wait := s.lastCommit.Add(s.spacing(now)).Sub(now)
	if wait <= 0 {
		return batch
	}
	if s.gatherTimer == nil {
		s.gatherTimer = time.NewTimer(wait)
	} else {
		s.gatherTimer.Reset(wait)
	}
	defer s.gatherTimer.Stop()
	for len(batch) < s.opts.MaxBatch {
		select {
		case req := <-s.reqs:
			if req.alone != nil {
				s.run(batch)
				return []*writeReq{req}
			}
			batch = append(batch, req)
		case <-s.gatherTimer.C:
			return batch
		case <-s.stop:
			return batch
		}
	}
	return batch
}

// spacing is the least time between the starts of the last group commit and the next.
// While requests find the writer busy (company) at a gap under CommitDelay, it is
// commitTarget such gaps, between CommitSpacing and CommitDelay: the commit waits for the
// requests the rate says are coming, as long as they come sooner than the bound (the way
// a database's commit delay works, with the delay following the measured rate). Else it is
// CommitSpacing when the last commit held several requests, and none otherwise: a writer
// alone, or one whose requests come one after another (each waiting for its answer before
// the next), never has company and never waits.
func (s *Store) spacing(now time.Time) time.Duration {
	var d time.Duration
	if s.lastBatch >= 2 {
		d = s.opts.CommitSpacing
	}
	if gap := s.company.gap(now); s.opts.CommitDelay > 0 && gap < s.opts.CommitDelay {
		d = max(d, min(s.opts.CommitDelay, max(s.opts.CommitSpacing, commitTarget*gap)))
	}
	return d
}

// commitTarget is how many requests a held group commit waits for (spacing), at most
// CommitDelay: about eight shares a commit's cost (400 µs of CPU, a third of it the fsync)
// down to a tenth of a message's.
const commitTarget = 8

// waited counts the requests of batch a caller waits for: all but the outcomes (Complete),
// which nobody waits for.
func waited(batch []*writeReq) int {
	n := 0
	for _, req := range batch {
		if req.alone == nil && !outcomesOnly(req) {
			n++
		}
	}
	return n
}

// arrivals is the writer's measure of the requests that arrive while it commits or waits
// (the second and later requests of each group commit): a count decayed with time
// (arrivalDecay), so count/arrivalDecay is their rate over the last tens of milliseconds.
// Requests that always find the writer idle (a writer alone, or one waiting for each
// answer before its next request) add nothing to it.
type arrivals struct {
	count float64
	at    time.Time
}

// arrivalDecay is the time constant of arrivals' decay.
const arrivalDecay = 50 * time.Millisecond

func (a *arrivals) decayed(now time.Time) float64 {
	if a.count == 0 {
		return 0
	}
	return a.count * math.Exp(-float64(now.Sub(a.at))/float64(arrivalDecay))
}

// add counts n requests that arrived by now.
func (a *arrivals) add(now time.Time, n int) {
	a.count, a.at = a.decayed(now)+float64(n), now
}

// gap is the mean time between two such requests as of now (a long time when none came).
func (a *arrivals) gap(now time.Time) time.Duration {
	c := a.decayed(now)
	if c < 1e-3 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(float64(arrivalDecay) / c)
}

// boundWAL runs, between two commits, a checkpoint that truncates the write-ahead log once
// it has passed its limit (Options.WALLimit, or a share of the free space: room.walLimit):
// the background checkpoints do not catch up under sustained writes, and the log would
// grow without end. The log outgrows the limit by at most one group commit. It waits for
// a checkpoint of the checkpointer in progress (one at a time); a checkpoint that readers
// keep from truncating (busy) is a state, logged when it begins and ends, and retried
// after the next commit. Each time the WAL has grown by another walNudge it asks the
// checkpointer for a checkpoint at once (ckNow).
//
// The WAL file's size is read (a system call) only when it may be past the limit: the
// file ends where its last committed frame does (the wal-index tells, walIndex) or, below
// walKept, where a restart of the log cut it, so the larger of the two bounds it from above
// and has the same count of walNudge steps (walKept is below walNudge).
func (s *Store) boundWAL() {
	if end, ok := s.walIdx.end(s.path); ok {
		if b := max(end, walKept); b <= s.room.walLimit(s.opts.WALLimit, b) {
			if s.walGrew(b) {
				s.nudgeCheckpoint()
			}
			return
		}
	}
	size := s.walSize()
	if s.walGrew(size) {
		s.nudgeCheckpoint()
	}
	if size <= s.room.walLimit(s.opts.WALLimit, size) {
		return
	}
	ctx := context.Background()
	s.ckMu.Lock()
	// A reader on an older snapshot holds the truncation back: the writer waits for it
	// briefly (walBusyWait), not the connection's 10 s, and tries again after the next
	// commits.
	var busy, logPages, done int
	_, err := s.wc.ExecContext(ctx, fmt.Sprintf(`PRAGMA busy_timeout = %d`, walBusyWait.Milliseconds()))
	if err == nil {
		err = s.wc.QueryRowContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &logPages, &done)
		_, _ = s.wc.ExecContext(ctx, fmt.Sprintf(`PRAGMA busy_timeout = %d`, busyTimeout.Milliseconds()))
	}
	s.ckMu.Unlock()
	switch {
	case err != nil && !s.room.full.Load():
		s.opts.Logger.Error("truncate the WAL", "bytes", size, "err", err)
	case err == nil && busy != 0:
		if !s.walBusy {
			s.walBusy = true
			s.opts.Logger.Warn("the WAL is not truncated yet: readers hold its pages; retried after the next commits", "bytes", size, "copiedPages", done, "pages", logPages)
		}
	case err == nil && s.walBusy:
		s.walBusy = false
		s.opts.Logger.Info("the WAL is truncated again", "bytes", size)
	}
}

// nudgeCheckpoint asks the checkpointer for a checkpoint before its next tick.
func (s *Store) nudgeCheckpoint() {
	select {
	case s.ckNow <- struct{}{}:
	default:
	}
}

// walGrew reports whether the WAL, now size bytes, has grown by another walNudge since it
// last did (a WAL written from its start again, and cut, grows anew).
func (s *Store) walGrew(size int64) bool {
	step := size / walNudge
	grew := step > s.walStep
	s.walStep = step
	return grew
}

// walNudge is how much the WAL grows between two checkpoints the writer asks for ahead of
// the checkpointer's tick: under a burst of writes (a prune's chunks) the WAL is copied and
// written from its start again at a few times walNudge, instead of growing for a whole
// checkpointInterval, to its limit, whose truncation stalls every write queued behind it.
const walNudge = 8 << 20

// boundWAL counts the steps of walNudge on a bound of the WAL's size that is at least
// walKept: the same count as the size's only while walKept is below walNudge.
const _ uint = walNudge - walKept - 1

// queuedBufCap is the largest slice the writer keeps for OnQueued from one commit to the
// next.
const queuedBufCap = 4096

// walBusyWait is how long boundWAL's checkpoint waits for the readers that hold the WAL.
const walBusyWait = 200 * time.Millisecond

// run commits batch (or runs its one alone request) and answers its callers. A batch that
// holds message outcomes beside other writes commits the others first and the outcomes
// next, in a commit of their own: a caller that waits for its write (a POST /messages, a
// connection's open) does not wait for the outcomes' rows, which nobody waits for, and
// the outcomes' commit is not synced by itself (setSync).
func (s *Store) run(batch []*writeReq) {
	if len(batch) == 1 && batch[0].alone != nil {
		batch[0].done <- batch[0].alone(context.Background())
		return
	}
	var others, outcomes []*writeReq
	for _, req := range batch {
		if outcomesOnly(req) {
			outcomes = append(outcomes, req)
		} else {
			others = append(others, req)
		}
	}
	if len(others) > 0 && len(outcomes) > 0 {
		s.commit(others)
		s.commit(outcomes)
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
	if err != nil {
		s.noteRead(err)
		s.room.failed(err)
	}
	s.noteWrite(err)
	for _, req := range batch {
		if len(req.completes) > 0 {
			if err != nil {
				s.outcomesFailing.Store(&err)
			} else {
				s.outcomesFailing.Store(nil)
			}
		}
	}
	if err == nil {
		s.queueTop = max(s.queueTop, s.queueTent)
		// The mark follows the commit: never ahead of what is durable.
		if merr := s.mark.write(s.tent, false); merr != nil {
			s.opts.Logger.Error("the store's high-water mark", "err", merr)
		}
		f.apply(p.Checkpoint)
		s.applyStreams(s.batchStreams)
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
			queued := s.queuedBuf[:0]
			for _, req := range batch {
				queued = append(queued, req.queued...)
			}
			if len(queued) > 0 {
				s.opts.OnQueued(queued)
			}
			// The slice serves the next commit: emptied, so that no message outlives its
			// commit in it, and dropped when a burst made it larger than a batch's worth.
			clear(queued)
			if cap(queued) > queuedBufCap {
				queued = nil
			}
			s.queuedBuf = queued[:0]
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
// nil) or rolls it back. Their statements are prepared once.
func (s *Store) begin(ctx context.Context) error {
	if _, err := s.stmts.begin.ExecContext(ctx); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	return nil
}

func (s *Store) end(ctx context.Context, err error) error {
	if err != nil {
		_, _ = s.stmts.rollback.ExecContext(context.WithoutCancel(ctx))
		return err
	}
	start := time.Now()
	if _, err := s.stmts.commit.ExecContext(ctx); err != nil {
		_, _ = s.stmts.rollback.ExecContext(context.WithoutCancel(ctx))
		return fmt.Errorf("commit: %w", err)
	}
	if s.syncMode == "full" && s.opts.OnSynced != nil {
		s.opts.OnSynced(time.Since(start))
	}
	s.commits.Add(1)
	return nil
}

// onlyOutcomes reports whether batch records message outcomes and nothing else.
func onlyOutcomes(batch []*writeReq) bool {
	for _, req := range batch {
		if !outcomesOnly(req) {
			return false
		}
	}
	return true
}

// outcomesOnly reports whether req records message outcomes and nothing else (Complete).
func outcomesOnly(req *writeReq) bool {
	return len(req.completes) > 0 && len(req.events) == 0 && len(req.messages) == 0 && req.grace == nil && req.exec == nil && req.alone == nil
}

// setSync sets the writer connection's synchronous mode for its next commit: the store's
// (Options.Sync) for every commit, except that a commit of outcomes only (Complete) is not
// synced to disk by itself when the store's mode is full. Such a commit survives a crash of
// the process as it returns (the WAL is in the operating system's hands), and a power loss
// from the next synced commit on, which syncs the WAL up to itself (outcomes are never
// waited for: a message's 202 was answered when its enqueue was synced). A power loss
// before that forgets the outcomes and their events together (the WAL keeps whole
// transactions, in order): their messages are pending again and delivered at the next
// start, never lost.
func (s *Store) setSync(ctx context.Context, outcomesOnly bool) error {
	mode := s.opts.Sync
	if outcomesOnly {
		mode = "normal"
	}
	if mode == s.syncMode {
		return nil
	}
	if _, err := s.wc.ExecContext(ctx, "PRAGMA synchronous = "+strings.ToUpper(mode)); err != nil {
		return fmt.Errorf("synchronous %s: %w", mode, err)
	}
	s.syncMode = mode
	return nil
}

// writeBatch folds what batch holds over the image and writes, in one transaction, the
// records that are new (connection events, grace decisions that decided, messages,
// outcomes) and the events they publish: one durable write per fact. The fold reaches the
// image (apply) only once the commit is durable.
func (s *Store) writeBatch(batch []*writeReq) (f *fold, p Projection, err error) {
	ctx := context.Background()
	f = newFold(s.img, s.opts.Grace, s)
	if s.opts.Fault != nil {
		if err := s.opts.Fault(); err != nil {
			return f, p, fmt.Errorf("commit: %w", err)
		}
	}
	if err := s.room.admit(); err != nil {
		return f, p, err
	}
	if err := s.setSync(ctx, onlyOutcomes(batch)); err != nil {
		return f, p, err
	}
	if err := s.begin(ctx); err != nil {
		return f, p, err
	}
	defer func() { err = s.end(ctx, err) }()
	s.tent = s.mark.last
	seq := s.img.seq
	s.batchStreams.reset()
	if err := s.enqueue(ctx, batch); err != nil {
		return f, p, err
	}
	appendRecord := func(typ string, v any) error {
		data, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode %s: %w", typ, err)
		}
		res, err := s.stmts.log.ExecContext(ctx, typ, string(data), rowCRC(typ, data))
		if err != nil {
			return fmt.Errorf("append %s: %w", typ, err)
		}
		if seq, err = res.LastInsertId(); err != nil {
			return fmt.Errorf("append %s: %w", typ, err)
		}
		s.tent.Log = max(s.tent.Log, seq)
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
		if len(req.completes) > 0 {
			n, err := s.complete(ctx, req.completes, req.outcomes, req.keeps)
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
		if f.err != nil {
			return f, p, f.err
		}
	}
	published, err := s.publish(ctx, f.outbox)
	if err != nil {
		return f, p, err
	}
	return f, f.projection(published, seq), nil
}

// enqueue writes the queue rows of batch's messages, in the order of batch, each at the
// next queue position (the writer hands them out: queueTop) and the next position of its
// user's stream, queueRows to an INSERT. A message already queued (its MessageID for its
// user, in the queue or earlier in batch) fails its INSERT as a whole: the batch's rows are
// then written one at a time instead (enqueueEach), those already queued skipped.
func (s *Store) enqueue(ctx context.Context, batch []*writeReq) error {
	streams := s.batchStreams
	top := s.queueTop
	args := s.queueArgs[:0]
	n := 0
	flush := func() error {
		if n == 0 {
			return nil
		}
		st, err := s.queueStmt(ctx, n)
		if err != nil {
			return err
		}
		s.queueInserts++
		_, err = st.ExecContext(ctx, args...)
		clear(args)
		args, n = args[:0], 0
		return err
	}
	var err error
	for _, req := range batch {
		for _, m := range req.messages {
			st := s.position(streams, &m)
			offset, gen := m.positions(s.opts.RecoveryWindow > 0)
			at := m.EnqueuedAt.UnixNano()
			top++
			m.Seq = top
			args = append(args, m.Seq, m.MessageID, m.UserID, m.Body, at, offset, gen,
				messageCRC(m.MessageID, m.UserID, at, offset, gen, m.Body))
			req.queued = append(req.queued, m)
			streams.took(st, &m)
			if n++; n == queueRows {
				if err = flush(); err != nil {
					break
				}
			}
		}
		if err != nil {
			break
		}
	}
	if err == nil {
		err = flush()
	}
	s.queueArgs = args[:0]
	if err == nil {
		s.tent.Messages = max(s.tent.Messages, top)
		s.queueTent = top
		return nil
	}
	if !isConstraint(err) {
		// Anything but a duplicate (a full disk, an I/O error) may have ended the
		// transaction: nothing more is written, the batch fails as a whole.
		return fmt.Errorf("enqueue: %w", err)
	}
	// The statements written so far are undone with the rest (a savepoint's cost is not
	// worth it for a duplicate, which is rare): the rows are written again one at a time.
	if _, rerr := s.wc.ExecContext(ctx, `DELETE FROM messages WHERE seq > ?`, s.queueTop); rerr != nil {
		return fmt.Errorf("enqueue: %w", errors.Join(err, rerr))
	}
	streams.reset()
	for _, req := range batch {
		req.queued = req.queued[:0]
	}
	return s.enqueueEach(ctx, batch)
}

// enqueueEach writes the queue rows of batch's messages one at a time, skipping a message
// already queued (enqueue).
func (s *Store) enqueueEach(ctx context.Context, batch []*writeReq) error {
	streams := s.batchStreams
	top := s.queueTop
	for _, req := range batch {
		for _, m := range req.messages {
			st := s.position(streams, &m)
			offset, gen := m.positions(s.opts.RecoveryWindow > 0)
			at := m.EnqueuedAt.UnixNano()
			res, err := s.stmts.msg.ExecContext(ctx, top+1, m.MessageID, m.UserID, m.Body, at, offset, gen,
				messageCRC(m.MessageID, m.UserID, at, offset, gen, m.Body))
			if err != nil {
				return fmt.Errorf("enqueue %s: %w", m.MessageID, err)
			}
			if n, _ := res.RowsAffected(); n == 1 {
				top++
				m.Seq = top
				req.queued = append(req.queued, m)
				streams.took(st, &m)
			}
		}
	}
	s.tent.Messages = max(s.tent.Messages, top)
	s.queueTent = top
	return nil
}

// isConstraint reports whether err is SQLite's refusal of a row that breaks a constraint
// (a message already queued, for the queue's INSERT): the statement alone is undone, the
// transaction goes on.
func isConstraint(err error) bool {
	var se *sqlitedriver.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_CONSTRAINT
}

// queueRows is the most queue rows one INSERT writes (enqueue).
const queueRows = 64

// queueStmt is the writer's INSERT of n queue rows, prepared the first time it is needed.
func (s *Store) queueStmt(ctx context.Context, n int) (*sql.Stmt, error) {
	if st := s.stmts.queue[n-1]; st != nil {
		return st, nil
	}
	q := `INSERT INTO messages (seq, message_id, user_id, body, enqueued_at, stream_offset, stream_gen, crc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)` +
		strings.Repeat(`, (?, ?, ?, ?, ?, ?, ?, ?)`, n-1)
	st, err := s.wc.PrepareContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("prepare the queue's insert of %d rows: %w", n, err)
	}
	s.stmts.queue[n-1] = st
	return st, nil
}

// publish writes rows to the outbox and returns how many it wrote. Each is decided once:
// by the fold of a new record, or by the completion of a pending message. The rows are
// written pubRows to an INSERT, in order (their positions follow it).
func (s *Store) publish(ctx context.Context, rows []outboxRow) (int, error) {
	n, rows, err := s.publishAboveFloor(ctx, rows)
	if err != nil {
		return n, err
	}
	for len(rows) > 0 {
		k := min(len(rows), pubRows)
		args := s.pubArgs[:0]
		for _, r := range rows[:k] {
			data, err := events.AppendEnvelope(s.envBuf[:0], r.p, LocalAccount, LocalRegion, r.at)
			if err != nil {
				return n, fmt.Errorf("encode %s envelope: %w", r.p.DetailType(), err)
			}
			s.envBuf = data
			stored, sec, prefix := compact(s.prefixBuf, data, r.p.ID(), string(r.p.DetailType()), r.at)
			s.prefixBuf = prefix
			args = append(args, r.p.ID(), string(r.p.DetailType()), string(stored), sec, rowCRC(string(r.p.DetailType()), data))
		}
		s.pubArgs = args
		st, err := s.pubStmt(ctx, k)
		if err != nil {
			return n, err
		}
		res, err := st.ExecContext(ctx, args...)
		clear(args)
		if err != nil {
			return n, fmt.Errorf("publish %s %s and %d more: %w", rows[0].p.DetailType(), rows[0].p.ID(), k-1, err)
		}
		// OR IGNORE skips a row a file of an earlier version already holds: the rows written
		// are counted, the last one's position is the highest.
		if c, _ := res.RowsAffected(); c > 0 {
			n += int(c)
			if id, err := res.LastInsertId(); err == nil {
				s.tent.Published = max(s.tent.Published, id)
			}
		}
		rows = rows[k:]
	}
	return n, nil
}

// pubRows is the most outbox rows one INSERT writes (publish).
const pubRows = 16

// pubStmt is the writer's INSERT of n outbox rows, prepared the first time it is needed.
// OR IGNORE: a file of an earlier version has a unique index on event_id.
func (s *Store) pubStmt(ctx context.Context, n int) (*sql.Stmt, error) {
	if st := s.stmts.pub[n-1]; st != nil {
		return st, nil
	}
	q := `INSERT OR IGNORE INTO published (event_id, detail_type, envelope, at, crc) VALUES (?, ?, ?, ?, ?)` + strings.Repeat(`, (?, ?, ?, ?, ?)`, n-1)
	st, err := s.wc.PrepareContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("prepare the outbox's insert of %d rows: %w", n, err)
	}
	s.stmts.pub[n-1] = st
	return st, nil
}

// Local values of the EventBridge envelope fields that name an AWS account and region.
const (
	LocalAccount = "000000000000"
	LocalRegion  = "local"
)

// noteWrite records whether the last group commit could write (Writable), and logs the
// changes of that state only, not every failed request.
func (s *Store) noteWrite(err error) {
	if err == nil {
		if s.writeFailing.Swap(nil) != nil {
			s.opts.Logger.Info("the store writes again")
		}
		return
	}
	failing := fmt.Errorf("%w: %w", ErrCannotWrite, err)
	if s.writeFailing.Swap(&failing) == nil {
		s.opts.Logger.Error("the store cannot write (a full disk?): writes are refused until it can", "err", err)
	}
}

// ErrCannotWrite is wrapped by Writable while the store's commits fail (a full disk).
var ErrCannotWrite = errors.New("the store cannot write")

// Writable reports whether the last group commit failed, or writes are refused for want
// of space (an error wrapping ErrCannotWrite), nil when the store writes. It reads the
// free space now: a filesystem filled while nothing was written is found full.
func (s *Store) Writable() error {
	if p := s.writeFailing.Load(); p != nil {
		return *p
	}
	s.room.watch()
	if s.room.full.Load() {
		return s.room.refusal()
	}
	return nil
}

// ProbeWrite commits a small write (the time of the probe, in the meta table): a store
// that could not write is found writable again without waiting for a client's write.
func (s *Store) ProbeWrite(ctx context.Context) error {
	return s.writeExec(ctx, func(ctx context.Context) error {
		_, err := s.wc.ExecContext(ctx, `INSERT INTO meta (key, value) VALUES ('write_probe', ?)
			ON CONFLICT (key) DO UPDATE SET value = excluded.value`, time.Now().UTC().Format(time.RFC3339Nano))
		return err
	})
}
