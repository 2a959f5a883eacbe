package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/wspresence/wspresence/events"
	"github.com/wspresence/wspresence/internal/presence"
)

const checkpointName = "presence"

// replayPage is how many log records one replay step folds.
const replayPage = 10_000

// ErrSnapshotDamaged is returned by loadSnapshot for a row whose checksum does not match
// its content: the start folds the whole log instead.
var ErrSnapshotDamaged = errors.New("snapshot damaged")

// userCRC and connCRC are the checksums a snapshot row carries, over its fields.
// A user row's checksum is stored as a signed 32-bit integer (4 bytes in the record).
func userCRC(id string, live int, last, gap sql.NullInt64, announced int) int64 {
	return int64(int32(crc32.ChecksumIEEE([]byte(fmt.Sprintf("%s\x00%d\x00%v\x00%v\x00%d", id, live, last, gap, announced)))))
}

// offlineGap encodes a user's offline_since as its distance before last_activity (NULL
// when not offline); offlineSince decodes it.
func offlineGap(last, since sql.NullInt64) sql.NullInt64 {
	if !since.Valid {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: last.Int64 - since.Int64, Valid: true}
}

func offlineSince(last, gap sql.NullInt64) sql.NullInt64 {
	if !gap.Valid {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: last.Int64 - gap.Int64, Valid: true}
}

// announcedCode is how a user row stores the announced state: 1 online, 0 offline.
func announcedCode(a presence.Announced) int {
	if a == presence.AnnouncedOnline {
		return 1
	}
	return 0
}

func connCRC(id, userID string, opened, closed sql.NullInt64, reason sql.NullString, seen sql.NullInt64) int64 {
	return int64(crc32.ChecksumIEEE([]byte(fmt.Sprintf("%s\x00%s\x00%v\x00%v\x00%v\x00%v", id, userID, opened, closed, reason, seen))))
}

// selectUser and selectConn read snapshot rows; scanUser and scanConn decode them, each
// checked against its checksum (ErrSnapshotDamaged on a mismatch).
const (
	selectUser = `SELECT user_id, live, last_activity, announced, offline_gap, crc FROM view_users`
	selectConn = `SELECT connection_id, user_id, opened_at, closed_at, reason, last_seen, crc FROM view_connections`
)

// rowScanner is a *sql.Row or *sql.Rows.
type rowScanner interface{ Scan(dest ...any) error }

func scanUser(r rowScanner) (presence.User, error) {
	var u presence.User
	var last, gap sql.NullInt64
	var announced int
	var crc int64
	if err := r.Scan(&u.ID, &u.Live, &last, &announced, &gap, &crc); err != nil {
		return u, err
	}
	if userCRC(u.ID, u.Live, last, gap, announced) != crc {
		return u, fmt.Errorf("%w: the row of user %q", ErrSnapshotDamaged, u.ID)
	}
	u.LastActivity, u.OfflineSince, u.Announced = fromNanos(last), fromNanos(offlineSince(last, gap)), presence.AnnouncedOffline
	if announced == 1 {
		u.Announced = presence.AnnouncedOnline
	}
	return u, nil
}

func scanConn(r rowScanner) (presence.Conn, error) {
	var c presence.Conn
	var opened, closed, seen sql.NullInt64
	var reason sql.NullString
	var crc int64
	if err := r.Scan(&c.ID, &c.UserID, &opened, &closed, &reason, &seen, &crc); err != nil {
		return c, err
	}
	if connCRC(c.ID, c.UserID, opened, closed, reason, seen) != crc {
		return c, fmt.Errorf("%w: the row of connection %q", ErrSnapshotDamaged, c.ID)
	}
	c.OpenedAt, c.ClosedAt, c.LastSeen = fromNanos(opened), fromNanos(closed), fromNanos(seen)
	c.Reason = events.CloseReason(reason.String)
	return c, nil
}

// storedUser reads a user's snapshot row on the writer's connection (rowReader): the
// writer's folds read the rows the image does not hold.
func (s *Store) storedUser(id string) (presence.User, bool, error) {
	u, err := scanUser(s.stmts.getUser.QueryRowContext(context.Background(), id))
	if !errors.Is(err, sql.ErrNoRows) {
		return storedRow(s, u, err)
	}
	u, found, err := packedUser(s.stmts.getPacked.QueryRowContext(context.Background(), id), id)
	if found {
		// Its hot row, once the snapshot writes it, replaces the packed entry (unpack).
		s.unpacked[id] = struct{}{}
	} else if err == nil {
		err = sql.ErrNoRows
	}
	return storedRow(s, u, err)
}

func (s *Store) storedConn(id string) (presence.Conn, bool, error) {
	c, err := scanConn(s.stmts.getConn.QueryRowContext(context.Background(), id))
	return storedRow(s, c, err)
}

// storedRow turns a point read's error into found, recording a damaged row (Health).
func storedRow[T any](s *Store, v T, err error) (T, bool, error) {
	switch {
	case err == nil:
		return v, true, nil
	case errors.Is(err, sql.ErrNoRows):
		return v, false, nil
	case errors.Is(err, ErrSnapshotDamaged):
		damaged := fmt.Errorf("%w: %w", ErrDamaged, err)
		s.opts.Logger.Error("the store's file is damaged", "err", err)
		s.damage.Store(&damaged)
		return v, false, damaged
	}
	return v, false, s.noteRead(fmt.Errorf("read the view: %w", err))
}

// activeUsers is the condition of a user row the image holds: online, or in its grace
// period (the view_users_active index holds them).
const activeUsers = `live > 0 OR announced = 1`

// loadSnapshot reads into the image the rows of the view's last snapshot it holds (users
// online or in their grace period, live connections: a start reads those, not every row),
// each checked against its checksum (ErrSnapshotDamaged on a mismatch).
func (s *Store) loadSnapshot(ctx context.Context) error {
	var cp sql.NullInt64
	if err := s.wc.QueryRowContext(ctx, `SELECT MAX(seq) FROM checkpoints WHERE name = ?`, checkpointName).Scan(&cp); err != nil {
		return fmt.Errorf("read checkpoint: %w", err)
	}
	im := s.img
	im.mu.Lock()
	defer im.mu.Unlock()
	if err := scanEach(ctx, s.wc, selectUser+` WHERE `+activeUsers, func(r *sql.Rows) error {
		u, err := scanUser(r)
		if err == nil {
			im.putUser(u)
		}
		return err
	}); err != nil {
		return fmt.Errorf("load snapshot users: %w", err)
	}
	if err := scanEach(ctx, s.wc, selectConn+` WHERE closed_at IS NULL`, func(r *sql.Rows) error {
		c, err := scanConn(r)
		if err == nil {
			im.putConn(c)
		}
		return err
	}); err != nil {
		return fmt.Errorf("load snapshot connections: %w", err)
	}
	im.seq = cp.Int64
	return nil
}

// ErrLogGap is wrapped by Open and Rebuild for a log whose positions past the view's
// checkpoint do not follow one another: a record is missing (a damaged or cut file, a log
// compacted past a snapshot that is gone), and the view it would fold is not the one the
// log recorded. Restore a backup (docs/operations.md).
var ErrLogGap = errors.New("the log has a gap")

// replay folds the log records past the image's position into it, a page at a time,
// checking that their positions follow one another from it (ErrLogGap names the first
// missing one). It publishes nothing: what a record decided went to the outbox in the
// record's own commit. It returns what it folded.
func (s *Store) replay(ctx context.Context) (Projection, error) {
	var total Projection
	graces := map[string]time.Time{}
	from := s.img.seq
	for {
		type record struct {
			seq       int64
			typ, data string
		}
		var damaged error
		page, err := queryAll(ctx, s.wc, "read the log", func(r *sql.Rows) (rec record, err error) {
			var crc sql.NullInt64
			if err := r.Scan(&rec.seq, &rec.typ, &rec.data, &crc); err != nil {
				return rec, err
			}
			if err := s.checkRow("log", rec.seq, rec.typ, []byte(rec.data), crc); err != nil && damaged == nil {
				damaged = err
			}
			return rec, nil
		}, `SELECT seq, type, data, crc FROM log WHERE seq > ? ORDER BY seq LIMIT ?`, s.img.seq, replayPage)
		if err != nil {
			return total, err
		}
		if damaged != nil {
			return total, damaged
		}
		if len(page) == 0 {
			break
		}
		f := newFold(s.img, s.opts.Grace, s)
		for i, rec := range page {
			want := s.img.seq + 1 + int64(i)
			if rec.seq != want {
				return total, fmt.Errorf("%w: position %d is missing (the view's checkpoint is at %d, the next record kept is at %d): restore a backup",
					ErrLogGap, want, from, rec.seq)
			}
			if rec.typ == graceRecordType {
				var g graceDecision
				if err := json.Unmarshal([]byte(rec.data), &g); err != nil {
					return total, fmt.Errorf("decode log record %d: %w", rec.seq, err)
				}
				f.grace(g)
				continue
			}
			var e events.ConnectionEvent
			if err := json.Unmarshal([]byte(rec.data), &e); err != nil {
				return total, fmt.Errorf("decode log record %d: %w", rec.seq, err)
			}
			f.event(e)
		}
		if f.err != nil {
			return total, f.err
		}
		last := page[len(page)-1].seq
		f.apply(last)
		// A long replay snapshots as it goes, so the image holds at most a page of rows
		// beside the active ones.
		if len(s.img.dirty) >= replayPage {
			if err := s.snapshot(ctx); err != nil {
				return total, err
			}
		}
		p := f.projection(0, last)
		total.Events += p.Events
		total.Published += p.Published
		total.Checkpoint = last
		for _, g := range p.Graces {
			graces[g.UserID] = g.Since
		}
		for uid := range graces {
			if u := s.img.users[uid]; u == nil || !u.GracePending() {
				delete(graces, uid)
			}
		}
	}
	if total.Checkpoint == 0 {
		total.Checkpoint = s.img.seq
	}
	for uid, since := range graces {
		total.Graces = append(total.Graces, presence.Grace{UserID: uid, Since: since})
	}
	return total, nil
}

// maybeSnapshot writes the snapshot when it is due: SnapshotInterval after the last one
// with rows changed, once SnapshotEvents records were folded, or at the end (final).
func (s *Store) maybeSnapshot(final bool) {
	if len(s.img.dirty) == 0 && !final {
		return
	}
	now := time.Now() // the schedule's clock, not the domain's
	if !final && s.sinceSnapshot < s.opts.SnapshotEvents && now.Sub(s.lastSnapshot) < s.opts.SnapshotInterval {
		return
	}
	if err := s.snapshot(context.Background()); err != nil {
		// The log holds everything: a missed snapshot only lengthens the next start.
		s.opts.Logger.Error("write the view's snapshot", "err", err)
		return
	}
	s.lastSnapshot = now
}

// snapshot writes the rows changed since the last snapshot and the image's log position,
// in one transaction, between two commits (so the rows are exactly the fold up to it).
func (s *Store) snapshot(ctx context.Context) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	if err := s.end(ctx, s.writeSnapshot(ctx)); err != nil {
		return err
	}
	clear(s.unpacked)
	im := s.img
	im.mu.Lock()
	im.evict(im.dirty)
	im.dirty = map[string]map[string]struct{}{}
	im.mu.Unlock()
	s.sinceSnapshot = 0
	return nil
}

// writeSnapshot writes the changed rows and the checkpoint inside the open transaction.
func (s *Store) writeSnapshot(ctx context.Context) error {
	im := s.img
	for uid, conns := range im.dirty {
		if u := im.users[uid]; u != nil {
			announced := announcedCode(u.Announced)
			last := toNanos(u.LastActivity)
			gap := offlineGap(last, toNanos(u.OfflineSince))
			if _, err := s.stmts.saveUser.ExecContext(ctx, u.ID, u.Live, last, announced, gap,
				userCRC(u.ID, u.Live, last, gap, announced)); err != nil {
				return fmt.Errorf("snapshot user %s: %w", uid, err)
			}
		}
		for cid := range conns {
			c := im.conns[cid]
			if c == nil {
				continue
			}
			opened, closed, reason, seen := toNanos(c.OpenedAt), toNanos(c.ClosedAt), nullString(string(c.Reason)), toNanos(c.LastSeen)
			if _, err := s.stmts.saveConn.ExecContext(ctx, c.ID, c.UserID, opened, closed, reason, seen,
				connCRC(c.ID, c.UserID, opened, closed, reason, seen)); err != nil {
				return fmt.Errorf("snapshot connection %s: %w", cid, err)
			}
		}
	}
	// The users read from their packed entries whose hot rows were just written.
	var back []string
	for uid := range s.unpacked {
		if _, changed := im.dirty[uid]; changed && im.users[uid] != nil {
			back = append(back, uid)
		}
	}
	if err := s.unpack(ctx, back); err != nil {
		return fmt.Errorf("snapshot: unpack returning users: %w", err)
	}
	if _, err := s.wc.ExecContext(ctx, `INSERT INTO checkpoints (name, seq) VALUES (?, ?)
		ON CONFLICT (name) DO UPDATE SET seq = excluded.seq`, checkpointName, im.seq); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	return nil
}

// Rebuild folds the view again, the grace timers' logged decisions included, so the view
// it builds is the one the live runs built: from the whole log while the log is kept from
// its first position (the view and its snapshot dropped first), else from the view's
// checkpointed snapshot and the log kept after it (Projection.From says which). It
// publishes nothing again (the outbox got each decision in its record's commit). It runs on
// the writer, between commits.
func (s *Store) Rebuild(ctx context.Context) (Projection, error) {
	var p Projection
	err := s.writeAlone(ctx, func(ctx context.Context) error {
		var first sql.NullInt64
		if err := s.wc.QueryRowContext(ctx, `SELECT MIN(seq) FROM log`).Scan(&first); err != nil {
			return fmt.Errorf("read the log's first position: %w", err)
		}
		whole := !first.Valid || first.Int64 == 1
		if whole {
			if _, err := s.wc.ExecContext(ctx, dropSnapshot+snapshotSchema); err != nil {
				return fmt.Errorf("reset the snapshot: %w", err)
			}
		}
		fresh := newImage()
		s.img.mu.Lock()
		s.img.users, s.img.conns, s.img.live, s.img.online = fresh.users, fresh.conns, fresh.live, fresh.online
		s.img.seq, s.img.dirty = 0, fresh.dirty
		s.img.mu.Unlock()
		if !whole {
			if err := s.loadSnapshot(ctx); err != nil {
				return err
			}
		}
		from := s.img.seq
		var err error
		if p, err = s.replay(ctx); err != nil {
			return err
		}
		p.From = from
		return s.snapshot(ctx)
	})
	return p, err
}

// A prune deletes in chunks, each a transaction of its own run on the writer between group
// commits (pruneStep), so the hot path waits for one chunk at most. A prune's pace follows
// its backlog: its first chunk holds pruneChunk rows, and the next one twice as many while
// the chunks come full and each took under half of pruneTarget on the writer (up to
// pruneChunkMax), half as many once one took over pruneTarget. After a chunk it rests as
// long as the step took (finding the chunk's rows on a reader, then deleting them on the
// writer), but only while the hot path is busy (write requests were queued when the chunk
// ended): it then takes at most about half of the writer's time and of a CPU, and an idle
// store is compacted at once.
const (
	pruneChunk    = 100
	pruneChunkMax = 8192
	pruneTarget   = 4 * time.Millisecond
	pruneRest     = time.Millisecond
)

// pace is one prune pass's chunk size (the rows its next chunk may delete) and when its
// current step began (when the previous one ended).
type pace struct {
	chunk int
	step  time.Time
}

func newPace() *pace { return &pace{chunk: pruneChunk, step: time.Now()} }

// next sets the size of the chunk after one that deleted n rows of at most p.chunk in took.
func (p *pace) next(n int64, took time.Duration) {
	switch {
	case took > pruneTarget:
		p.chunk = max(p.chunk/2, pruneChunk)
	case n >= int64(p.chunk) && took < pruneTarget/2:
		p.chunk = min(p.chunk*2, pruneChunkMax)
	}
}

// pruneStep runs one chunk of a prune on the writer, between commits, and returns how many
// rows it deleted; then it adjusts p's chunk and, if write requests queued meanwhile, rests
// as long as the step took since the previous one ended (at least pruneRest). What a prune deletes it finds on a reader's
// connection, off the writer. The chunk's commit is not synced to disk by itself: a power
// loss may only bring back rows that the next pass deletes again, and the next synced
// commit syncs it (the WAL keeps whole transactions, in order). A chunk waits for the
// integrity check that runs, if one does: the check reads the whole file in one snapshot,
// which keeps the checkpoints from copying the WAL meanwhile, and a prune's deletes would
// grow the WAL to its bound, whose truncation then stalls the hot path.
func (s *Store) pruneStep(ctx context.Context, p *pace, chunk func(ctx context.Context, limit int) (int64, error)) (int64, error) {
	if c := s.checking.Load(); c != nil {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-*c:
		}
	}
	var n int64
	var took time.Duration
	busy := false
	err := s.writeAlone(ctx, func(ctx context.Context) (err error) {
		start := time.Now()
		if err := s.setSync(ctx, true); err != nil {
			return err
		}
		n, err = chunk(ctx, p.chunk)
		took, busy = time.Since(start), len(s.reqs) > 0
		return err
	})
	if err != nil {
		return n, err
	}
	p.next(n, took)
	defer func() { p.step = time.Now() }()
	if !busy {
		return n, nil
	}
	rest := time.NewTimer(max(time.Since(p.step), pruneRest))
	defer rest.Stop()
	select {
	case <-ctx.Done():
		return n, ctx.Err()
	case <-rest.C:
		return n, nil
	}
}

// deleteStep runs del with args and, last, the chunk's limit, a pruneStep, and returns how
// many rows it deleted and the limit it had.
func (s *Store) deleteStep(ctx context.Context, p *pace, del string, args ...any) (n int64, limit int, err error) {
	limit = p.chunk
	n, err = s.pruneStep(ctx, p, func(ctx context.Context, limit int) (int64, error) {
		return s.deleteIn(ctx, del, append(args, limit)...)
	})
	return n, limit, err
}

// deleteIn runs del with args in a transaction of its own and returns how many rows it
// deleted.
func (s *Store) deleteIn(ctx context.Context, del string, args ...any) (n int64, err error) {
	if err := s.begin(ctx); err != nil {
		return 0, err
	}
	res, err := s.wc.ExecContext(ctx, del, args...)
	if err == nil {
		n, err = res.RowsAffected()
	}
	return n, s.end(ctx, err)
}

// PruneTombstones forgets connections closed before cutoff, in the image and the snapshot
// tables, a chunk per transaction, and returns how many.
func (s *Store) PruneTombstones(ctx context.Context, cutoff time.Time) (int, error) {
	var n int
	err := s.writeAlone(ctx, func(ctx context.Context) (err error) {
		var gone []string
		for id, c := range s.img.conns {
			if !c.ClosedAt.IsZero() && c.ClosedAt.Before(cutoff) {
				gone = append(gone, id)
			}
		}
		if len(gone) == 0 {
			return nil
		}
		if err := s.begin(ctx); err != nil {
			return err
		}
		if err := s.deleteConns(ctx, gone); err != nil {
			return s.end(ctx, err)
		}
		if err := s.end(ctx, nil); err != nil {
			return err
		}
		s.img.mu.Lock()
		for _, id := range gone {
			s.img.forgetConn(id)
		}
		s.img.mu.Unlock()
		n = len(gone)
		return nil
	})
	for p := newPace(); err == nil; {
		deleted, limit, derr := s.deleteStep(ctx, p, `DELETE FROM view_connections WHERE connection_id IN
			(SELECT connection_id FROM view_connections WHERE closed_at < ? LIMIT ?)`, cutoff.UnixNano())
		n, err = n+int(deleted), derr
		if deleted < int64(limit) {
			break
		}
	}
	if err != nil {
		return n, fmt.Errorf("prune tombstones: %w", err)
	}
	return n, nil
}

// CompactLog deletes the log records the view's snapshot holds (at or before its
// checkpoint) that are older than cutoff (their time), a chunk per transaction
// (pruneStep), and returns how many; their pages are reused by the records to come. The
// record at the checkpoint is kept: the log's positions go on after it. Each chunk's
// records are found on the writer, in the transaction that deletes them: a reader's
// snapshot held across the compaction would keep the checkpoints from copying the whole
// WAL, which then could not be written from its start again and would grow to its bound.
func (s *Store) CompactLog(ctx context.Context, cutoff time.Time) (int64, error) {
	var total int64
	for p := newPace(); ; {
		more := false
		n, err := s.pruneStep(ctx, p, func(ctx context.Context, limit int) (n int64, err error) {
			if err := s.begin(ctx); err != nil {
				return 0, err
			}
			var bound int64
			if bound, more, err = s.compactBound(ctx, cutoff, limit); err != nil {
				err = s.noteRead(err)
			} else if bound > 0 {
				var res sql.Result
				if res, err = s.wc.ExecContext(ctx, `DELETE FROM log WHERE seq < ?`, bound); err == nil {
					n, err = res.RowsAffected()
				}
			}
			return n, s.end(ctx, err)
		})
		total += n
		if err != nil {
			return total, fmt.Errorf("compact the log: %w", err)
		}
		if !more {
			return total, nil
		}
	}
}

// compactBound finds, in the writer's transaction, the next chunk of CompactLog: the log
// position before which up to chunk of the oldest records go (0: none), the checkpoint
// being the one committed (it only moves on); more says there may be others.
func (s *Store) compactBound(ctx context.Context, cutoff time.Time, chunk int) (bound int64, more bool, err error) {
	scanned, stopped := 0, false
	err = scanEach(ctx, s.wc, `SELECT seq, data FROM log WHERE seq < (SELECT COALESCE(MAX(seq), 0) FROM checkpoints WHERE name = ?)
		ORDER BY seq LIMIT ?`, func(r *sql.Rows) error {
		var seq int64
		var data string
		if err := r.Scan(&seq, &data); err != nil {
			return err
		}
		scanned++
		if stopped {
			return nil
		}
		var rec struct {
			At time.Time `json:"at"`
		}
		if json.Unmarshal([]byte(data), &rec) != nil || !rec.At.Before(cutoff) {
			stopped = true // the first record kept: the log is kept from there
			return nil
		}
		bound = seq + 1
		return nil
	}, checkpointName, chunk)
	return bound, !stopped && scanned == chunk, err
}

func (s *Store) deleteConns(ctx context.Context, ids []string) error {
	for _, id := range ids {
		if _, err := s.stmts.forgetConn.ExecContext(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

func toNanos(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixNano(), Valid: true}
}

func fromNanos(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(0, n.Int64).UTC()
}

func nullString(s string) sql.NullString { return sql.NullString{String: s, Valid: s != ""} }

// PruneUsers forgets the users offline (announced offline, no live connection) whose last
// activity is before cutoff: their rows leave the snapshot (the image does not hold them)
// and GET /user/online answers them as it answers a user never seen. The rows are found on
// a reader's connection, a page at a time in id order, and deleted on the writer a chunk
// per transaction, each row checked again as it is deleted; then the packed users past the
// cutoff leave their blocks (prunePacked). It returns how many.
func (s *Store) PruneUsers(ctx context.Context, cutoff time.Time) (int64, error) {
	var total int64
	after := ""
	for p := newPace(); ; {
		limit := p.chunk
		ids, err := queryAll(ctx, s.r, "find users to prune", func(r *sql.Rows) (id string, err error) {
			err = r.Scan(&id)
			return id, err
		}, `SELECT user_id FROM view_users WHERE user_id > ? AND live = 0 AND announced = 0 AND last_activity < ?
			ORDER BY user_id LIMIT ?`, after, cutoff.UnixNano(), limit)
		if err != nil {
			return total, fmt.Errorf("prune users: %w", s.noteRead(err))
		}
		if len(ids) == 0 {
			break
		}
		after = ids[len(ids)-1]
		// A user the image holds changed since the last snapshot, which writes its row
		// again (had it gone meanwhile, the snapshot would still write it).
		gone := ids[:0:0]
		s.img.mu.RLock()
		for _, id := range ids {
			if _, held := s.img.users[id]; !held {
				gone = append(gone, id)
			}
		}
		s.img.mu.RUnlock()
		list, err := json.Marshal(gone)
		if err != nil {
			return total, err
		}
		n, err := s.pruneStep(ctx, p, func(ctx context.Context, _ int) (int64, error) {
			return s.deleteIn(ctx, `DELETE FROM view_users WHERE user_id IN (SELECT value FROM json_each(?))
				AND live = 0 AND announced = 0 AND last_activity < ?`, string(list), cutoff.UnixNano())
		})
		total += n
		if err != nil {
			return total, fmt.Errorf("prune users: %w", err)
		}
		if len(ids) < limit {
			break
		}
	}
	n, err := s.prunePacked(ctx, cutoff)
	return total + n, err
}
