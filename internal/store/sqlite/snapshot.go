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
func userCRC(id string, live int, last, since sql.NullInt64, announced string) int64 {
	return int64(crc32.ChecksumIEEE([]byte(fmt.Sprintf("%s\x00%d\x00%v\x00%v\x00%s", id, live, last, since, announced))))
}

func connCRC(id, userID string, opened, closed sql.NullInt64, reason sql.NullString, seen sql.NullInt64) int64 {
	return int64(crc32.ChecksumIEEE([]byte(fmt.Sprintf("%s\x00%s\x00%v\x00%v\x00%v\x00%v", id, userID, opened, closed, reason, seen))))
}

// loadSnapshot reads the view's last snapshot into the image, each row checked against
// its checksum (ErrSnapshotDamaged on a mismatch).
func (s *Store) loadSnapshot(ctx context.Context) error {
	var cp sql.NullInt64
	if err := s.wc.QueryRowContext(ctx, `SELECT MAX(seq) FROM checkpoints WHERE name = ?`, checkpointName).Scan(&cp); err != nil {
		return fmt.Errorf("read checkpoint: %w", err)
	}
	im := s.img
	im.mu.Lock()
	defer im.mu.Unlock()
	if err := scanEach(ctx, s.wc, `SELECT user_id, live, last_activity, announced, offline_since, crc FROM view_users`, func(r *sql.Rows) error {
		var u presence.User
		var last, since sql.NullInt64
		var announced string
		var crc int64
		if err := r.Scan(&u.ID, &u.Live, &last, &announced, &since, &crc); err != nil {
			return err
		}
		if userCRC(u.ID, u.Live, last, since, announced) != crc {
			return fmt.Errorf("%w: the row of user %q", ErrSnapshotDamaged, u.ID)
		}
		u.LastActivity, u.OfflineSince, u.Announced = fromNanos(last), fromNanos(since), presence.Announced(announced)
		im.putUser(u)
		return nil
	}); err != nil {
		return fmt.Errorf("load snapshot users: %w", err)
	}
	if err := scanEach(ctx, s.wc, `SELECT connection_id, user_id, opened_at, closed_at, reason, last_seen, crc FROM view_connections`, func(r *sql.Rows) error {
		var c presence.Conn
		var opened, closed, seen sql.NullInt64
		var reason sql.NullString
		var crc int64
		if err := r.Scan(&c.ID, &c.UserID, &opened, &closed, &reason, &seen, &crc); err != nil {
			return err
		}
		if connCRC(c.ID, c.UserID, opened, closed, reason, seen) != crc {
			return fmt.Errorf("%w: the row of connection %q", ErrSnapshotDamaged, c.ID)
		}
		c.OpenedAt, c.ClosedAt, c.LastSeen = fromNanos(opened), fromNanos(closed), fromNanos(seen)
		c.Reason = events.CloseReason(reason.String)
		im.putConn(c)
		return nil
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
		page, err := queryAll(ctx, s.wc, "read the log", func(r *sql.Rows) (rec record, err error) {
			return rec, r.Scan(&rec.seq, &rec.typ, &rec.data)
		}, `SELECT seq, type, data FROM log WHERE seq > ? ORDER BY seq LIMIT ?`, s.img.seq, replayPage)
		if err != nil {
			return total, err
		}
		if len(page) == 0 {
			break
		}
		f := newFold(s.img, s.opts.Grace)
		for i, rec := range page {
			want := s.img.seq + 1 + int64(i)
			if rec.seq != want {
				return total, fmt.Errorf("%w: position %d is missing (the view's checkpoint is at %d, the next record kept is at %d)",
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
		last := page[len(page)-1].seq
		f.apply(last)
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
	s.img.dirty = map[string]map[string]struct{}{}
	s.sinceSnapshot = 0
	return nil
}

// writeSnapshot writes the changed rows and the checkpoint inside the open transaction.
func (s *Store) writeSnapshot(ctx context.Context) error {
	im := s.img
	for uid, conns := range im.dirty {
		if u := im.users[uid]; u != nil {
			announced := u.Announced
			if announced == "" {
				announced = presence.AnnouncedOffline
			}
			last, since := toNanos(u.LastActivity), toNanos(u.OfflineSince)
			if _, err := s.stmts.saveUser.ExecContext(ctx, u.ID, u.Live, last, string(announced), since,
				userCRC(u.ID, u.Live, last, since, string(announced))); err != nil {
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
	if _, err := s.wc.ExecContext(ctx, `INSERT INTO checkpoints (name, seq) VALUES (?, ?)
		ON CONFLICT (name) DO UPDATE SET seq = excluded.seq`, checkpointName, im.seq); err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	return nil
}

// Rebuild drops the view and its snapshot and folds the whole log again, the grace timers'
// logged decisions included, so the view it builds is the one the live runs built. It
// publishes nothing again (the outbox got each decision in its record's commit). It runs
// on the writer, between commits.
func (s *Store) Rebuild(ctx context.Context) (Projection, error) {
	var p Projection
	err := s.writeAlone(ctx, func(ctx context.Context) error {
		if _, err := s.wc.ExecContext(ctx, dropSnapshot+snapshotSchema); err != nil {
			return fmt.Errorf("reset the snapshot: %w", err)
		}
		fresh := newImage()
		s.img.mu.Lock()
		s.img.users, s.img.conns, s.img.live, s.img.online = fresh.users, fresh.conns, fresh.live, fresh.online
		s.img.seq, s.img.dirty = 0, fresh.dirty
		s.img.mu.Unlock()
		var err error
		if p, err = s.replay(ctx); err != nil {
			return err
		}
		return s.snapshot(ctx)
	})
	return p, err
}

// PruneTombstones forgets connections closed before cutoff, in the image and its
// snapshot, and returns how many.
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
	if err != nil {
		return 0, fmt.Errorf("prune tombstones: %w", err)
	}
	return n, nil
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
